"""Setting one label of one document in a user's YAML file, leaving every other byte as it was.

``ambient waypoint apply --enroll-namespace`` labels a Namespace that the user may have declared in
a file of their own, among other documents, with comments and their own layout. Loading and dumping
the YAML would lose all of that, so the edit is made on the text: PyYAML's composer gives each node
its start and end offsets, and the label is written at the right place with the indentation of its
neighbours (a new entry after the last one of ``metadata.labels``, a new ``labels`` mapping at the
end of ``metadata``, or the value of an existing entry replaced). Flow mappings (``{a: b}``) get
``, key: value`` before their closing brace.

The result is checked before it is returned: it must parse (``mesh.parse``) into the same resources
as before but for that one label. Anything this cannot do safely raises ``YamlEditError`` with what
the user should add by hand; the file is then left alone.
"""

from __future__ import annotations

from dataclasses import replace

import yaml

from mesh import resources as r
from mesh.parse import parse_text


class YamlEditError(ValueError):
    """The label cannot be set safely; the message says what to add by hand."""


def _get(mapping: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    for key_node, value_node in mapping.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return key_node, value_node
    return None


def _scalar(node: yaml.Node | None) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _value(mapping: yaml.Node, key: str) -> yaml.Node | None:
    if not isinstance(mapping, yaml.MappingNode):
        return None
    entry = _get(mapping, key)
    return entry[1] if entry is not None else None


def _find_document(text: str, kind: str, name: str) -> yaml.MappingNode:
    """The ``metadata`` mapping of the one document of ``kind`` named ``name``."""
    found = []
    for document in yaml.compose_all(text, Loader=yaml.SafeLoader):
        metadata = _value(document, "metadata")
        if _scalar(_value(document, "kind")) == kind and _scalar(_value(metadata, "name")) == name:
            assert isinstance(metadata, yaml.MappingNode)
            found.append(metadata)
    if len(found) != 1:
        raise YamlEditError(f"{len(found)} {kind} documents are named {name}")
    return found[0]


def _line_end(text: str, index: int) -> int:
    end = text.find("\n", index)
    return len(text) if end < 0 else end


def _insert_entry(text: str, mapping: yaml.MappingNode, entry: str) -> str:
    """``text`` with ``entry`` added as the last entry of ``mapping``: lines for a block mapping (a
    ``key: value``, or a key and its nested block), one line for a flow mapping."""
    if mapping.flow_style:
        close = mapping.end_mark.index - 1
        if text[close] != "}":
            raise YamlEditError("an unusual flow mapping")
        separator = ", " if mapping.value else ""
        return text[:close] + separator + entry + text[close:]
    if not mapping.value:
        raise YamlEditError("an empty block mapping")
    indent = mapping.value[0][0].start_mark.column
    last_value = mapping.value[-1][1]
    # After the last entry's last line (its end mark may sit at the start of the next line).
    at = _line_end(text, max(last_value.end_mark.index - 1, last_value.start_mark.index))
    lines = entry.split("\n")
    block = "\n".join(" " * indent + line for line in lines)
    return text[:at] + "\n" + block + text[at:]


def set_label(text: str, file: str, kind: str, name: str, key: str, value: str) -> str:
    """``text`` with label ``key: value`` on the document of ``kind`` named ``name`` (a cluster-scoped
    kind such as Namespace: the name alone picks it). Raises YamlEditError if that cannot be done
    safely."""
    hint = f"add `{key}: {value}` to metadata.labels of {kind} {name} in {file} by hand"
    try:
        metadata = _find_document(text, kind, name)
        labels = _get(metadata, "labels")
        if labels is None:
            edited = _insert_entry(text, metadata, f"labels:\n  {key}: {value}" if not metadata.flow_style
                                   else f"labels: {{{key}: {value}}}")
        elif isinstance(labels[1], yaml.MappingNode):
            existing = _get(labels[1], key)
            if existing is not None:
                node = existing[1]
                if not isinstance(node, yaml.ScalarNode) or node.start_mark.line != node.end_mark.line:
                    raise YamlEditError(f"label {key} has an unusual value")
                edited = text[:node.start_mark.index] + value + text[node.end_mark.index:]
            elif labels[1].value or labels[1].flow_style:
                edited = _insert_entry(text, labels[1], f"{key}: {value}")
            else:
                raise YamlEditError("metadata.labels is an empty block mapping")
        else:
            raise YamlEditError("metadata.labels is not a mapping")
    except yaml.YAMLError as exc:
        raise YamlEditError(f"{file} is not valid YAML ({exc.__class__.__name__}); {hint}") from None
    except YamlEditError as exc:
        raise YamlEditError(f"cannot edit {file} safely ({exc}); {hint}") from None
    _check(text, edited, file, kind, name, key, value, hint)
    return edited


def _comparable(resource: r.Resource, kind: str, name: str, key: str) -> r.Resource:
    """The resource as it should compare before and after the edit: without its origin's line (lines
    below the edit move), and for the edited document without the label."""
    resource = replace(resource, origin=replace(resource.origin, line=0))
    if isinstance(resource, r.Deployment):  # its generated pods carry the Deployment's line too
        resource = replace(resource, pods=tuple(replace(pod, origin=replace(pod.origin, line=0))
                                                for pod in resource.pods))
    if resource.kind == kind and resource.meta.name == name:
        labels = {k: v for k, v in resource.meta.labels.items() if k != key}
        resource = replace(resource, meta=replace(resource.meta, labels=r.frozen_map(labels)))
    return resource


def _check(before: str, after: str, file: str, kind: str, name: str, key: str, value: str, hint: str) -> None:
    old, new = parse_text(before, file), parse_text(after, file)
    target = [res for res in new.resources if res.kind == kind and res.meta.name == name]
    same = ([_comparable(res, kind, name, key) for res in old.resources]
            == [_comparable(res, kind, name, key) for res in new.resources])
    if not same or len(new.errors) > len(old.errors) or len(target) != 1 or target[0].meta.labels.get(key) != value:
        raise YamlEditError(f"cannot edit {file} safely (the edit would change more than the label); {hint}")
