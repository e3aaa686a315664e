"""The mesh's discovery resources (``istio.workload.Address``, ``istio.security.Authorization``).

The generated modules are ``workload_pb2`` and ``authorization_pb2``; ``types`` holds their type
URLs and the ``Any`` helpers. Nothing is imported here, so importing ``mesh.api`` stays cheap.
"""
