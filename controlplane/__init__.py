"""The control plane (DESIGN.md sections 3 and 4): the resources a user applies, the dataplane view
computed from them, and discovery serving it, beside the CA, on one TLS port.

``registry`` (the current resources and pod status), ``validate`` (cross-reference checks and
``ambient validate``), ``view`` (the dataplane view, a pure function), ``authz`` (AuthorizationPolicy
and PeerAuthentication to L4 Authorization), ``xds`` (the delta-xDS server side) and ``server``
(``ambient controlplane``, the composition). It imports ``ca`` and ``mesh``; no proxy imports it.
"""
