"""Field readers shared by the parsers of several kinds (``mesh.parse``, ``mesh.parse_routes``): a port
number, a label selector, and a Gateway API object reference."""

from __future__ import annotations

from mesh import resources as r
from mesh.source import Field


def port_field(f: Field, *, required: bool = True, value: object = None) -> int | None:
    """A port given as a number or, as Istio's policy fields have it, a numeric string.
    ``value`` overrides the field's value (for ports that are mapping keys)."""
    value = f.value if value is None else value
    shown = value
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, str) or isinstance(value, bool):
        f.report(f"{shown!r} is not a port number")
        return None
    if value is None:
        if required:
            f.report("is required")
        return None
    if not isinstance(value, int):
        f.report(f"expected a port number, got {value!r}")
        return None
    if not 1 <= value <= 65535:
        f.report(f"{value} is not a port number (1-65535)")
        return None
    return value


def object_ref(f: Field, *, default_kind: str = "", default_group: str = "", with_port: bool = False
                ) -> r.ObjectRef | None:
    """A Gateway API reference; without ``default_kind`` the kind must be given."""
    known = {"group", "kind", "name", "namespace", "sectionName"} | ({"port"} if with_port else set())
    if not f.mapping(known):
        return None
    name = f["name"].str(required=True)
    kind = f["kind"].str(required=not default_kind, default=default_kind)
    port = port_field(f["port"], required=False) if with_port else None
    if name is None or kind is None:
        return None
    return r.ObjectRef(kind, name, f["group"].str(default=default_group) or "", f["namespace"].str(default="") or "",
                       port, f["sectionName"].str(default="") or "")


def labels_selector(f: Field) -> dict[str, str] | None:
    """``selector: {matchLabels: {...}}`` (Istio policies, Deployments); None when absent."""
    if not f.present:
        return None
    if not f.mapping({"matchLabels", "matchExpressions"}):
        return None
    if f["matchExpressions"].present:
        f["matchExpressions"].report("matchExpressions are not supported; use matchLabels")
    return f["matchLabels"].str_map()
