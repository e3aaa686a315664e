"""Ports of the wire contract (DESIGN.md) that more than one component needs, defined once.

Kept free of imports, so that ztunnel and the eBPF loader can use them without loading the resource
model or the control plane's modules.
"""

HBONE_PORT = 15008  # inbound HBONE (mTLS, HTTP/2 CONNECT) on every ambient pod, and a waypoint's `mesh` listener
