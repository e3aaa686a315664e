"""The mesh's certificate authority: SPIFFE identities for workloads, served over gRPC."""
