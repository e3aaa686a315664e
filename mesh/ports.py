"""Ports of the wire contract (DESIGN.md) that more than one component needs, defined once.

Kept free of imports, so that ztunnel and the eBPF loader can use them without loading the resource
model or the control plane's modules.
"""

HBONE_PORT = 15008  # inbound HBONE (mTLS, HTTP/2 CONNECT) on every ambient pod, and a waypoint's `mesh` listener
OUTBOUND_PORT = 15001  # ztunnel's listener for what an ambient pod sends (captured by eBPF)
INBOUND_PLAINTEXT_PORT = 15006  # ztunnel's listener for plaintext to an ambient pod
# ztunnel's DNS proxy on the pod's loopback (UDP and TCP); the node agent redirects the pod's port 53 to it.
DNS_PROXY_PORT = 15053
# ztunnel's own listeners in every ambient pod's netns (ztunnel.sockets opens them): never a
# destination. A connection "to" one of them would be dialled back into ztunnel's own listener (a
# forwarding loop), so it is refused.
ZTUNNEL_POD_PORTS = frozenset({OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT})
