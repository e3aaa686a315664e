"""Discovery's server side: versioned snapshots with deltas (``snapshot``), the sans-IO per-stream
protocol (``protocol``: subscriptions, nonces, ACK/NACK) and the grpcio handler (``server``). The
client every component uses is ``mesh.xds``."""
