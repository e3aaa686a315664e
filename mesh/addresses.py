"""Socket addresses as text: one way to write ``host:port``, with IPv6 hosts in brackets (RFC 3986),
for HBONE authorities, access logs, metrics labels and messages alike."""

from __future__ import annotations


def format_address(host: str, port: int) -> str:
    """``10.0.0.1:80``, ``[fd00::1]:80``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
