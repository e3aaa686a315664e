"""The mesh's discovery resources (``istio.workload.Address``, ``istio.security.Authorization``)
and the node agent's messages to ztunnel (``istio.workload.zds``).

The generated modules are ``workload_pb2``, ``authorization_pb2`` and ``zds_pb2``; ``types`` holds
the discovery type URLs and the ``Any`` helpers. Nothing is imported here, so importing ``mesh.api`` stays cheap.
"""
