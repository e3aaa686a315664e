"""Where a container's environment comes from: ``env[].valueFrom`` (the downward API's ``fieldRef``, a
ConfigMap's ``configMapKeyRef``) and ``envFrom`` (``configMapRef``), and the ConfigMap kind itself.

Only the references are read here, checked as the API server checks them; they are resolved when a
container starts (``lab.env``), against the pod as placed and the ConfigMaps of that moment. Secrets and
resource limits are not given to containers: such entries warn and leave the variable unset.
"""

from __future__ import annotations

import re

from mesh import resources as r
from mesh.identity import InvalidSpiffeId, validate_k8s_name
from mesh.source import Field


def _config_map_name(f: Field) -> str | None:
    value = f.str(required=True)
    if value is None:
        return None
    try:
        return validate_k8s_name("ConfigMap name", value)
    except InvalidSpiffeId as exc:
        f.report(str(exc))
        return None


# A ConfigMap's key, as Kubernetes checks it (IsConfigMapKey): at most 253 of these characters.
_CONFIG_MAP_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")


def config_map(top: Field, meta: r.Meta, origin: r.Origin) -> r.ConfigMap | None:
    """A ConfigMap's ``data``; ``binaryData`` is kept out (no environment variable can hold it)."""
    if top["spec"].present:
        top["spec"].report("a ConfigMap has no spec: its keys go under data")
    if top["binaryData"].present:
        top["binaryData"].warn("binaryData is not read by the lab (pods read data only)")
    data = top["data"].str_map() if top["data"].present else {}
    for key in data:
        if not _CONFIG_MAP_KEY.fullmatch(key):
            top["data"].report(f"{key!r} is not a ConfigMap key (letters, digits, '-', '_' and '.', at most 253)")
    top["immutable"].bool(default=False)
    return r.ConfigMap(meta, origin, r.frozen_map(data))


_SUBSCRIPTED = re.compile(r"(metadata\.(?:labels|annotations))\['([^']*)'\]")


def _field_path(f: Field) -> str | None:
    """A downward-API fieldPath the lab fills in, as Kubernetes writes it (``metadata.labels['app']``)."""
    path = f.str(required=True)
    if path is None:
        return None
    match = _SUBSCRIPTED.fullmatch(path)
    if path in r.FIELD_PATHS or (match and match.group(2)):
        return path
    known = ", ".join((*r.FIELD_PATHS, *(f"{m}['<key>']" for m in r.FIELD_PATH_MAPS)))
    f.report(f"{path!r} is not a field the lab can give a container (it gives {known})")
    return None


def env_ref(f: Field, name: str) -> r.EnvRef | None:
    """An env entry's valueFrom: fieldRef or configMapKeyRef; a Secret or a resource limit is not given
    (warned, the variable left unset)."""
    if not f.mapping({"fieldRef", "configMapKeyRef", "secretKeyRef", "resourceFieldRef"}):
        return None
    given = [k for k in ("fieldRef", "configMapKeyRef", "secretKeyRef", "resourceFieldRef") if f[k].present]
    if len(given) != 1:
        f.report("needs exactly one of fieldRef, configMapKeyRef, secretKeyRef, resourceFieldRef"
                 + (f" (has {' and '.join(given)})" if given else ""))
        return None
    source = f[given[0]]
    if given[0] in ("secretKeyRef", "resourceFieldRef"):
        source.warn(f"{given[0]} is not supported by the lab; the variable is left unset")
        return None
    if given[0] == "fieldRef":
        if not source.mapping({"fieldPath", "apiVersion"}, required=True):
            return None
        source["apiVersion"].str(default="v1", choices=("v1",))
        path = _field_path(source["fieldPath"])
        return r.EnvRef(name, field_path=path) if path else None
    if not source.mapping({"name", "key", "optional"}, required=True):
        return None
    config_map, key = _config_map_name(source["name"]), source["key"].str(required=True)
    if key is not None and not _CONFIG_MAP_KEY.fullmatch(key):
        source["key"].report(f"{key!r} is not a ConfigMap key (letters, digits, '-', '_' and '.')")
        return None
    optional = source["optional"].bool(default=False)
    return r.EnvRef(name, config_map=config_map, key=key, optional=optional) if config_map and key else None


def env_from(f: Field) -> r.EnvFrom | None:
    if not f.mapping({"configMapRef", "secretRef", "prefix"}):
        return None
    if f["secretRef"].present:
        f["secretRef"].warn("secretRef is not supported by the lab; its variables are left unset")
        return None
    source = f["configMapRef"]
    if not source.mapping({"name", "optional"}, required=True):
        return None
    config_map = _config_map_name(source["name"])
    prefix = f["prefix"].str(default="")
    return r.EnvFrom(config_map, prefix, source["optional"].bool(default=False)) if config_map else None
