"""The YAML reader against hostile files: every bound refuses the file with a finding at its line.

A refused file is an AMB0001 finding, never an exception: the control plane and the lab read the
config directory in a loop that must go on (``controlplane.registry.ConfigDirectory``).
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mesh import source
from mesh.parse import parse_text
from mesh.source import Code, Severity, load_documents

ROOT = Path(__file__).resolve().parents[2]
# What the billion-laughs child may use: far below the 7 GB the bomb took before, far above what
# parsing a small file needs (the interpreter with PyYAML maps ~100 MB).
CHILD_ADDRESS_SPACE = 1 << 30
CHILD_TIMEOUT = 60  # seconds; a refused bomb takes well under one, the unbounded reader ran out of memory in 9


def billion_laughs(levels: int = 9) -> str:
    """A Service whose annotations nest ``levels`` lists of nine aliases of the level below: 9**9
    (387 million) strings once expanded, from 600 bytes of YAML."""
    lines = ["apiVersion: v1", "kind: Service", "metadata:", "  name: web", "  namespace: shop", "  annotations:",
             '    a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels + 1):
        lines.append(f"    a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]")
    return "\n".join(lines) + "\nspec: {ports: [{port: 80}]}\n"


def parse_in_a_small_child(text: str) -> subprocess.CompletedProcess:
    """``parse_text(text)`` in a child limited to CHILD_ADDRESS_SPACE, printing its problems as JSON."""
    code = textwrap.dedent("""
        import json, sys
        from mesh.parse import parse_text
        result = parse_text(sys.stdin.read(), "bomb.yaml")
        print(json.dumps([[str(p), p.code] for p in result.problems]))
    """)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))

    return subprocess.run([sys.executable, "-c", code], input=text, capture_output=True, text=True, cwd=ROOT,
                          preexec_fn=limit, timeout=CHILD_TIMEOUT)


def refusal(text: str, file: str = "x.yaml") -> str:
    """The one finding for ``text``, which must be a refused file."""
    result = parse_text(text, file)
    assert result.resources == []
    (problem,) = result.problems
    assert problem.severity is Severity.ERROR and problem.code == Code.YAML
    return str(problem)


def test_a_billion_laughs_is_refused_without_expanding_it():
    text = billion_laughs()
    assert len(text) < 1024
    child = parse_in_a_small_child(text)
    assert child.returncode == 0, child.stderr[-2000:]
    ((message, code),) = json.loads(child.stdout)
    # At the line of the anchor being repeated, under the first annotation that expands too far.
    assert re.fullmatch(rf"bomb\.yaml:7: metadata\.annotations\.a\d\[\d\]: aliases expand to more than "
                        rf"{source.MAX_NODES} nodes; file refused", message) and code == Code.YAML


POD = """apiVersion: v1
kind: Pod
metadata:
  name: web-{i}
  namespace: shop
  labels: {{app: web, version: v1}}
spec:
  serviceAccountName: web
  containers:
  - name: web
    image: nginx
    ports: [{{containerPort: 8080, name: http}}]
"""


def test_a_file_of_ordinary_resources_near_the_size_bound_is_read():
    count = source.MAX_FILE_BYTES * 9 // 10 // len(POD.format(i=10_000))
    text = "---\n".join(POD.format(i=i) for i in range(count))
    assert source.MAX_FILE_BYTES * 8 // 10 < len(text) <= source.MAX_FILE_BYTES
    assert len(load_documents(text, "x.yaml", [])) == count


def test_a_file_of_the_smallest_resources_near_the_size_bound_is_read():
    namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: n%d}\n"
    count = source.MAX_FILE_BYTES * 9 // 10 // len("---\n" + namespace % 10_000)
    assert len(load_documents("---\n".join(namespace % i for i in range(count)), "x.yaml", [])) == count


def test_aliases_that_expand_within_the_bound_are_read():
    (doc,) = load_documents(billion_laughs(levels=2), "x.yaml", [])
    assert len(doc.data["metadata"]["annotations"]["a2"]) == 9
    assert doc.data["metadata"]["annotations"]["a2"][8][8] == ["lol"] * 9


@pytest.mark.parametrize("text, line", [
    pytest.param("[" * 100_000 + "]" * 100_000 + "\n", 1, id="flow-sequences"),
    pytest.param("{a: " * 100_000 + "1" + "}" * 100_000 + "\n", 1, id="flow-mappings"),
    pytest.param("".join(" " * i + "-\n" for i in range(0, 400, 2)), 101, id="block-sequences"),
])
def test_deep_nesting_is_a_finding_not_a_recursion_error(text, line):
    assert refusal(text) == f"x.yaml:{line}: nested deeper than {source.MAX_DEPTH} levels; file refused"


def test_nesting_through_aliases_counts_as_nesting():
    # Each anchor nests only 60 levels as written, but each uses the one before: 180 once expanded.
    deep = "[" * 60 + "%s" + "]" * 60
    text = (f"a: &a {deep % 1}\n"
            f"b: &b {deep % '*a'}\n"
            f"c: {deep % '*b'}\n")
    assert f"nested deeper than {source.MAX_DEPTH} levels once aliases are expanded; file refused" in refusal(text)


def test_a_chain_of_merged_mappings_counts_as_nesting():
    text = "a0: &a0 {x: 1}\n" + "".join(f"a{i}: &a{i} {{<<: *a{i - 1}}}\n" for i in range(1, 150))
    assert f"nested deeper than {source.MAX_DEPTH} levels once aliases are expanded; file refused" in refusal(text)


def test_a_syntax_error_in_a_large_file_is_reported_without_the_slower_retry(monkeypatch):
    monkeypatch.setattr(source, "RETRY_MAX_BYTES", 5)
    assert refusal("a: [1, 2\n").startswith("x.yaml:2: not valid YAML: did not find expected ',' or ']'")


def test_an_alias_inside_its_own_anchor_is_refused():
    assert "once aliases are expanded; file refused" in refusal("a: &a [1, *a]\n")


def test_too_many_nodes_as_written(monkeypatch):
    monkeypatch.setattr(source, "MAX_NODES", 1000)
    assert refusal("[" + "1, " * 1000 + "]\n") == "x.yaml:1: more than 1000 nodes in one file; file refused"
    assert parse_text("[" + "1, " * 990 + "]\n", "x.yaml").problems[0].code != Code.YAML  # read, then parsed


def test_too_many_documents(monkeypatch):
    monkeypatch.setattr(source, "MAX_DOCUMENTS", 100)
    assert refusal("---\n" * 101) == "x.yaml:101: more than 100 documents in one file; file refused"
    assert parse_text("---\n" * 100, "x.yaml").problems == []


def test_a_file_over_the_size_bound_is_refused_unread(monkeypatch):
    monkeypatch.setattr(source, "MAX_FILE_BYTES", 100)
    assert refusal("# " + "x" * 100) == "x.yaml:1: larger than 100 bytes; file refused"


def test_an_integer_too_long_for_python_is_a_finding():
    assert refusal(f"a: 1\nb: {'9' * 5000}\n").startswith("x.yaml:2: b: cannot read the value:")


def test_a_mapping_key_must_be_a_scalar():
    problems: list = []
    (doc,) = load_documents("a: 1\n? [x, y]\n: 2\n", "x.yaml", problems)
    assert doc.data == {"a": 1}
    assert [str(p) for p in problems] == ["x.yaml:2: a mapping key must be a string or a number"]


def test_merge_keys_merge_and_an_explicit_key_overrides_without_a_duplicate():
    problems: list = []
    text = "base: &base {a: 1, b: 2}\nmore: &more {b: 3, c: 4}\nx:\n  <<: [*base, *more]\n  a: 9\n"
    (doc,) = load_documents(text, "x.yaml", problems)
    assert doc.data["x"] == {"a": 9, "b": 2, "c": 4}  # the first merged mapping wins, as YAML says
    assert problems == []
    assert doc.line_of(("x", "a")) == 5 and doc.line_of(("x", "c")) == 2


def test_a_real_duplicate_key_is_still_reported():
    problems: list = []
    load_documents("a: 1\na: 2\n", "x.yaml", problems)
    assert [str(p) for p in problems] == ["x.yaml:2: a: duplicate key"]


def test_syntax_errors_still_name_their_line_and_reason():
    assert refusal("a: [1, 2\n") == ("x.yaml:2: not valid YAML: expected ',' or ']', but got '<stream end>'")


def test_an_undefined_alias_is_a_syntax_finding():
    assert refusal("a: *nowhere\n").startswith("x.yaml:1: not valid YAML: found undefined alias")
