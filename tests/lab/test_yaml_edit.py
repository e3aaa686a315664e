"""One label set in a user's YAML, every other byte kept (``lab.yaml_edit``)."""

from __future__ import annotations

import pytest

from lab.yaml_edit import YamlEditError, set_label

KEY, VALUE = "istio.io/use-waypoint", "waypoint"
LINE = f"{KEY}: {VALUE}"


DEPLOYMENT = """---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, command: [sleep, infinity]}]
"""


def edit(text: str) -> str:
    return set_label(text, "ns.yaml", "Namespace", "shop", KEY, VALUE)


@pytest.mark.parametrize("before, after", [
    # A new entry after the last label, with its comment kept.
    ("kind: Namespace\napiVersion: v1\nmetadata:\n  name: shop\n  labels:\n    a: b  # why\n# end\n",
     f"kind: Namespace\napiVersion: v1\nmetadata:\n  name: shop\n  labels:\n    a: b  # why\n    {LINE}\n# end\n"),
    # No labels yet: a labels mapping at the end of metadata, at metadata's own indentation.
    ("apiVersion: v1\nkind: Namespace\nmetadata:\n    name: shop\n---\napiVersion: v1\nkind: Namespace\n"
     "metadata:\n  name: other\n",
     f"apiVersion: v1\nkind: Namespace\nmetadata:\n    name: shop\n    labels:\n      {LINE}\n---\napiVersion: v1\n"
     "kind: Namespace\nmetadata:\n  name: other\n"),
    # The label is there: only its value changes.
    (f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    {KEY}: old  # x\n",
     f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    {LINE}  # x\n"),
    # Flow mappings: before the closing brace.
    ("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {a: b}}\n",
     f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{a: b, {LINE}}}}}\n"),
    ("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
     f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{{LINE}}}}}\n"),
    ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {}\n",
     f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {{{LINE}}}\n"),
    # A Deployment below the edit: its lines move, and so do those of the pods it generates.
    ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n" + DEPLOYMENT,
     f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    {LINE}\n" + DEPLOYMENT),
])
def test_the_label_is_written_and_nothing_else_changes(before, after):
    assert edit(before) == after


@pytest.mark.parametrize("text, why", [
    ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: !!null\n", "not a mapping"),
    ("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Namespace\n"
     "metadata: {name: shop}\n", "2 Namespace documents are named shop"),
    ("apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n", "0 Namespace documents"),
    ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    a: [b\n", "not valid YAML"),
    (f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    {KEY}: |\n      x\n      y\n",
     "unusual value"),
])
def test_what_cannot_be_edited_safely_is_refused_with_what_to_add_by_hand(text, why):
    with pytest.raises(YamlEditError, match=why) as caught:
        edit(text)
    assert f"add `{LINE}` to metadata.labels of Namespace shop in ns.yaml by hand" in str(caught.value)
