"""HBONE: the mesh's mTLS tunnel (DESIGN.md section 6), shared by ztunnel and the waypoint.

Layers, bottom up, each usable on its own:
- ``tcp_stream`` and ``tls_stream``: trio streams driven straight on a socket (TLS through a memory BIO);
- ``tls``: TLS 1.3 / ALPN h2 contexts for a workload's certificate and the SPIFFE checks of a peer;
- ``hpack_codec`` and ``http2``: a sans-IO HTTP/2 connection for HBONE's subset of the protocol;
- ``connect``: the CONNECT layer on it, sans-IO (validation, 200/400/401/503, half-close);
- ``driver``: its trio drivers, client and server, each CONNECT stream a trio stream;
- ``pool``: client connections shared per (source, expected identities, address);
- ``relay``: the both-way copy between two streams, with half-close.

It imports only ``mesh``; ztunnel and the waypoint import it, never the other way round.
"""
