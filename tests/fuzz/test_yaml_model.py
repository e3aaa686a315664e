"""Fuzz the YAML model: ``mesh.parse.parse_text``, what ``ambient validate`` and the control plane's
registry run on every manifest file they read.

The promises (``mesh.parse`` and ``mesh.source``): every problem is reported as a finding (a
``Problem`` naming file, line and field), a document with any error yields no resource, and a
file that is not YAML, or past a bound (MAX_FILE_BYTES, MAX_DOCUMENTS, MAX_DEPTH, MAX_NODES), is one
finding. So for any text: findings and resources, never an exception.

Inputs: Kubernetes-shaped objects of every kind the mesh reads (and others) with values of every
YAML type where a field expects one, dumped as YAML; text made of YAML's own punctuation; and the
Istio sample fixtures (tests/fixtures/istio/) mutated line by line and character by character.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from hypothesis import example, given, strategies as st

from mesh import resources as r
from mesh.parse import API_VERSIONS, REPLACED_KINDS, parse_text
from mesh.source import Code, Problem, Severity
from tests.fuzz import fuzz_settings

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures" / "istio").glob("*.yaml"))
FIXTURE_TEXTS = [path.read_text() for path in FIXTURES]

# Every kind the mesh parses, with each apiVersion it accepts; the Istio kinds it skips; unknown ones.
KINDS = ([(kind, version) for kind, versions in API_VERSIONS.items() for version in versions]
         + [(kind, f"{group}/v1") for group, kind in REPLACED_KINDS] + [("Frobnicator", "example.com/v1")])

# Values of every YAML type, and ones that look like what fields hold (names, ports, CIDRs, durations).
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
           | st.sampled_from(["", "ns", "default", "a" * 300, "80", "http", "10.0.0.0/8", "1.2.3.4", "::1/129",
                              "1h2m", "10ms", "ambient", "none", "istio-waypoint", "ALLOW", "DENY", "CUSTOM",
                              "STRICT", "TCP", "UDP", "In", "Exists", "spiffe://cluster.local/ns/a/sa/b",
                              "cluster.local/ns/a/sa/b", "*", "GET", "/path", "true", "null", "-1", "65536"])
           | st.text(max_size=10))
FIELD_NAMES = st.sampled_from([
    "name", "namespace", "labels", "annotations", "selector", "matchLabels", "matchExpressions", "key",
    "operator", "values", "ports", "port", "targetPort", "protocol", "containerPort", "containers", "image",
    "replicas", "template", "metadata", "spec", "clusterIP", "type", "gatewayClassName", "listeners",
    "allowedRoutes", "namespaces", "from", "parentRefs", "rules", "matches", "path", "headers", "backendRefs",
    "filters", "timeouts", "request", "retry", "action", "to", "when", "operation", "source", "principals",
    "notPrincipals", "ipBlocks", "notPorts", "methods", "targetRefs", "targetRef", "mtls", "mode",
    "portLevelMtls", "url", "phase", "readinessProbe", "tcpSocket", "httpGet", "initialDelaySeconds",
    "istio.io/dataplane-mode", "istio.io/use-waypoint", "istio.io/waypoint-for", "controllerName",
]) | st.text(min_size=1, max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(FIELD_NAMES, inner,
                                                                                           max_size=4),
                      max_leaves=25)


@st.composite
def objects(draw: st.DrawFn) -> dict[str, object]:
    kind, api_version = draw(st.sampled_from(KINDS))
    metadata = {"name": draw(st.sampled_from(["a", "waypoint", "ns", "", "Bad_Name"]) | scalars),
                "namespace": draw(st.sampled_from(["ns", "default", "istio-system"]) | scalars)}
    if draw(st.booleans()):
        metadata["labels"] = draw(st.dictionaries(FIELD_NAMES, scalars, max_size=3))
    document: dict[str, object] = {"apiVersion": api_version, "kind": kind, "metadata": metadata}
    if draw(st.integers(0, 4)):
        document["spec"] = draw(st.dictionaries(FIELD_NAMES, values, max_size=5))
    for key in draw(st.lists(st.sampled_from(["apiVersion", "kind", "metadata", "spec"]), max_size=1)):
        document[key] = draw(values)  # a field of the wrong type
    return document


dumped = st.lists(objects(), min_size=1, max_size=4).map(
    lambda documents: yaml.safe_dump_all(documents, sort_keys=False))
# Text of YAML's own punctuation and a few tokens, joined: what breaks a parser more than letters do.
punctuation = st.lists(st.sampled_from(list(":-?,[]{}#&*!|>'\"%@` \t\n") + ["<<", "---", "...", "a", "1", "kind",
                                                                           "spec", "  ", "\n  "]),
                       max_size=40).map("".join)


@st.composite
def mutated_fixtures(draw: st.DrawFn) -> str:
    """An Istio sample, with a few lines dropped, repeated, swapped, re-indented or spliced, or characters
    changed."""
    lines = draw(st.sampled_from(FIXTURE_TEXTS)).split("\n")
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines) - 1))
        mutation = draw(st.sampled_from(["drop", "repeat", "swap", "indent", "dedent", "splice", "chars", "value"]))
        if mutation == "drop":
            del lines[at:at + draw(st.integers(1, 5))]
        elif mutation == "repeat":
            lines[at:at] = lines[at:at + draw(st.integers(1, 5))]
        elif mutation == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif mutation == "indent":
            lines[at] = "  " + lines[at]
        elif mutation == "dedent":
            lines[at] = lines[at][2:]
        elif mutation == "splice":
            lines.insert(at, draw(punctuation))
        elif mutation == "chars":
            line = lines[at]
            cut = draw(st.integers(0, len(line)))
            lines[at] = line[:cut] + draw(st.text(max_size=3)) + line[cut + draw(st.integers(0, 3)):]
        elif ":" in lines[at]:
            key = lines[at].split(":", 1)[0]
            lines[at] = f"{key}: {yaml.safe_dump(draw(values), default_flow_style=True).strip()}"
        if not lines:
            lines = [""]
    return "\n".join(lines)


# What YAML counts as a line break (YAML 1.1, which PyYAML reads): a line is also ended by CR, NEL,
# and the Unicode line and paragraph separators, so findings' line numbers count them too.
LINE_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def check(text: str) -> None:
    result = parse_text(text, "fuzz.yaml")  # the promise: findings, never an exception
    lines = len(LINE_BREAKS.split(text))
    for problem in result.problems:
        assert isinstance(problem, Problem) and problem.file == "fuzz.yaml"
        assert isinstance(problem.severity, Severity) and problem.message and problem.code
        assert 1 <= problem.line <= lines + 1, f"line {problem.line} of a {lines}-line file"
    for resource in result.resources:
        assert isinstance(resource.origin, r.Origin)


@fuzz_settings(300)
@given(text=dumped)
def test_kubernetes_shaped_yaml_is_findings_never_an_exception(text: str) -> None:
    check(text)


@fuzz_settings(300)
@given(text=punctuation | st.text(max_size=60))
@example(text="a: &x [*x]")  # an alias inside its own anchor
@example(text="- &a [&b [*a]]\n")
@example(text="? [a]\n: b\n")  # a key that is a list
@example(text="<<: 1\n")
@example(text="!!python/object:os.system x\n")
@example(text="\r\x850")  # found by make fuzz: line 3 of a text without "\n" (CR and NEL end lines)
def test_yaml_punctuation_is_findings_never_an_exception(text: str) -> None:
    check(text)


@fuzz_settings(150)
@given(text=mutated_fixtures())
def test_mutated_istio_samples_are_findings_never_an_exception(text: str) -> None:
    check(text)


@fuzz_settings(50)
@given(text=st.text(max_size=20).map(lambda text: "kind: Pod\x1f" + text))
@example(text="\x1f")  # found by the punctuation target: parse_text("\x1f") raised yaml.reader.ReaderError
@example(text="\x08  # a comment")  # found by the mutated fixtures
def test_a_control_character_is_a_finding(text: str) -> None:
    result = parse_text(text, "fuzz.yaml")
    assert [problem.code for problem in result.errors] == [Code.YAML]


def test_the_fixtures_are_there() -> None:
    """The mutation target needs its seeds: the Istio samples parse without an error as they are."""
    assert len(FIXTURE_TEXTS) >= 5
    for path, text in zip(FIXTURES, FIXTURE_TEXTS, strict=True):
        assert not parse_text(text, path.name).errors, path.name
