"""Reading Kubernetes-format YAML with the line of every field, and reporting problems against it.

PyYAML's composer gives nodes with their positions; ``load_documents`` turns each document into
plain Python values plus a table ``path -> line`` (a path is a tuple of keys and list indexes), so
that a problem found anywhere later can name the file, the line, the resource and the field path:

    policy.yaml:12: AuthorizationPolicy shop/deny: spec.rules[0].to[0].operation.ports[0]: 'http' is not a port number

``Field`` is a cursor into one document used by the parsers: it reads typed values and reports a
problem at its own path when a value is missing or of the wrong type, so parsers stay declarative.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import yaml

PathKey = tuple[str | int, ...]


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


class Code:
    """Stable codes of findings, like ``istioctl analyze``'s IST0xxx (README.md, ``ambient validate``,
    has the table). A code names a kind of finding; its message says the particulars. Never renumber."""

    YAML = "AMB0001"  # not YAML, or the file cannot be read
    INVALID = "AMB0002"  # a field is missing, mistyped or out of range: the resource is not used
    UNKNOWN_FIELD = "AMB0003"  # a field the mesh does not know, ignored
    UNSUPPORTED = "AMB0004"  # a valid setting the mesh does not act on, ignored
    UNUSED_KIND = "AMB0005"  # a kind the mesh does not use, skipped
    REPLACED_KIND = "AMB0006"  # an Istio kind ambient mode does without, skipped; says what to use instead
    GATEWAY_NOT_RUN = "AMB0007"  # a Gateway of a class other than istio-waypoint (e.g. ingress), not run
    ACTION_NOT_ENFORCED = "AMB0008"  # an AuthorizationPolicy action ztunnel does not enforce (CUSTOM, AUDIT)
    INGRESS_ONLY = "AMB0009"  # a setting only Istio's ingress gateways act on (no ingress gateway runs here)
    NOT_FOUND = "AMB0101"  # a reference to a resource that does not exist (waypoint, parentRef, targetRef)
    MATCHES_NOTHING = "AMB0102"  # a selector that matches no pod
    L7_AT_L4 = "AMB0103"  # L7 fields in a policy ztunnel enforces at L4
    UNKNOWN_RULE_FIELD = "AMB0104"  # a rule field the mesh does not understand
    DATAPLANE_MODE = "AMB0105"  # an istio.io/dataplane-mode value that is neither ambient nor none
    TARGET_PORT = "AMB0106"  # a Service targetPort name that no selected pod's container declares
    WAYPOINT_NOT_ADMITTED = "AMB0107"  # use-waypoint names a waypoint whose allowedRoutes refuse the namespace
    WAYPOINT_TRAFFIC_TYPE = "AMB0108"  # use-waypoint names a waypoint not for this kind of traffic (waypoint-for)
    ROUTE_UNRESOLVED = "AMB0109"  # an HTTPRoute/GRPCRoute parent or backend that does not resolve (its status)
    WAYPOINT_UNUSED = "AMB0110"  # a waypoint Gateway that no namespace, Service or pod uses
    WASM_NO_WAYPOINT = "AMB0111"  # a WasmPlugin no waypoint runs: no targetRefs (selector: sidecars), CLIENT match
    WASM_SERVICE_NO_WAYPOINT = "AMB0112"  # a WasmPlugin targets a Service that uses no waypoint

    @staticmethod
    def default(severity: Severity) -> str:
        return Code.INVALID if severity is Severity.ERROR else Code.UNSUPPORTED


@dataclass(frozen=True)
class Problem:
    severity: Severity
    file: str
    line: int
    resource: str  # "Kind namespace/name", or "" before the resource is known
    field: str  # "spec.rules[0]...", or ""
    message: str
    code: str = ""  # a ``Code``; by default INVALID for an error, UNSUPPORTED for a warning

    def __post_init__(self) -> None:
        if not self.code:
            object.__setattr__(self, "code", Code.default(self.severity))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: "
        if self.resource:
            where += f"{self.resource}: "
        if self.field:
            where += f"{self.field}: "
        tag = "warning: " if self.severity is Severity.WARNING else ""
        return f"{where}{tag}{self.message}"


def format_path(path: PathKey) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text


@dataclass
class Document:
    file: str
    index: int  # position among the file's documents
    data: Any
    lines: dict[PathKey, int]

    def line_of(self, path: PathKey) -> int:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)


class YamlError(Exception):
    """A file that is not YAML at all; carries the Problem to report."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


# What one file may make the reader spend. A file past any of these is refused whole, as one AMB0001
# finding at the line where the bound was passed; the registry keeps that file's last good resources.
MAX_FILE_BYTES = 2 * 1024 * 1024
"""Kubernetes refuses a single object over 1.5 MiB (etcd's request limit); a file of this mesh's
resources that size holds thousands. Read with libyaml and converted at ~2 MB/s on this machine,
the largest file costs one to two seconds."""
MAX_DOCUMENTS = 50_000
"""Documents (``---``) in one file. The smallest resource, a Namespace, takes ~50 bytes: a
MAX_FILE_BYTES file of them is ~40,000 documents, each a ``Document`` and a table of lines."""
MAX_DEPTH = 100
"""Nesting of mappings and lists, once aliases are expanded. Kubernetes objects nest ~15 levels,
CRD schemas ~40; this keeps the recursive conversion far below Python's recursion limit (1000)."""
MAX_NODES = 500_000
"""Nodes in one file, counted twice: as written (what the composer builds), and as visited once
aliases are expanded (what the conversion builds: an alias is visited again at each use, so a
600-byte "billion laughs" counts its 387 million strings and stops here). Manifests have ~140
nodes a KiB (bench/mesh_fixture.py), so a MAX_FILE_BYTES file ~290,000; 500,000 take ~100 MB."""
RETRY_MAX_BYTES = 256 * 1024
"""A file that libyaml cannot parse is parsed again by the pure-Python parser, for its clearer
message, only up to this size: that parser is ~4 times slower."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"  # a `=` key, which PyYAML reads as the string "="
_NO_KEY = object()


class _Refused(Exception):
    """A bound above was passed: the file is refused as it is (no retry with the slower parser)."""

    def __init__(self, line: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.field = field


def _node(loader: Any, event: Any, anchors: dict[str, yaml.Node]) -> yaml.Node:
    """The node an event starts, as PyYAML's composer makes it (same tags, marks and anchors)."""
    kind = event.__class__
    if kind is yaml.AliasEvent:
        if event.anchor not in anchors:
            raise yaml.composer.ComposerError(None, None, f"found undefined alias {event.anchor!r}",
                                              event.start_mark)
        return anchors[event.anchor]
    tag = event.tag
    node: yaml.Node
    if kind is yaml.ScalarEvent:
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
    else:
        node_kind = yaml.SequenceNode if kind is yaml.SequenceStartEvent else yaml.MappingNode
        if tag is None or tag == "!":
            tag = loader.resolve(node_kind, None, event.implicit)
        node = node_kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
    if event.anchor is not None:
        if event.anchor in anchors:
            raise yaml.composer.ComposerError(f"found duplicate anchor {event.anchor!r}; first occurrence",
                                              anchors[event.anchor].start_mark, "second occurrence",
                                              event.start_mark)
        anchors[event.anchor] = node  # before its contents, as PyYAML does: `&a [*a]` refers to itself
    return node


def _compose(loader: Any) -> Iterator[yaml.Node]:
    """The root node of each document, built from the parser's events without recursion, with the
    bounds checked as the events arrive (PyYAML's composer recurses once per level, unbounded)."""
    get_event, resolve = loader.get_event, loader.resolve
    get_event()  # StreamStartEvent
    documents = nodes = 0
    while not loader.check_event(yaml.StreamEndEvent):
        start = get_event()  # DocumentStartEvent
        documents += 1
        if documents > MAX_DOCUMENTS:
            raise _Refused(start.start_mark.line + 1, f"more than {MAX_DOCUMENTS} documents in one file")
        anchors: dict[str, yaml.Node] = {}
        # The collections open around the next node, outermost first, and the key of each mapping
        # among them that waits for its value.
        open_nodes: list[yaml.CollectionNode] = []
        keys: list[Any] = []
        root: yaml.Node | None = None
        while root is None or open_nodes:
            event = get_event()
            kind = event.__class__
            if kind is yaml.SequenceEndEvent or kind is yaml.MappingEndEvent:
                open_nodes.pop().end_mark = event.end_mark
                keys.pop()
                continue
            nodes += 1
            if nodes > MAX_NODES:
                raise _Refused(event.start_mark.line + 1, f"more than {MAX_NODES} nodes in one file")
            if kind is yaml.ScalarEvent and event.anchor is None:  # most nodes: the short way
                tag = event.tag
                if tag is None or tag == "!":
                    tag = resolve(yaml.ScalarNode, event.value, event.implicit)
                node: yaml.Node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark,
                                                  style=event.style)
            else:
                node = _node(loader, event, anchors)
            if not open_nodes:
                root = node
            elif open_nodes[-1].__class__ is yaml.SequenceNode:
                open_nodes[-1].value.append(node)
            elif keys[-1] is _NO_KEY:
                keys[-1] = node
            else:
                open_nodes[-1].value.append((keys[-1], node))
                keys[-1] = _NO_KEY
            if kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
                assert isinstance(node, yaml.CollectionNode)
                open_nodes.append(node)
                keys.append(_NO_KEY)
                if len(open_nodes) > MAX_DEPTH:
                    raise _Refused(event.start_mark.line + 1, f"nested deeper than {MAX_DEPTH} levels")
        get_event()  # DocumentEndEvent
        yield root


class _Converter:
    """Plain Python values and the line of every path, from one file's nodes. Every node visited
    counts towards MAX_NODES, an alias at each use: the count is the size of what is built."""

    def __init__(self, loader: Any, file: str, problems: list[Problem]) -> None:
        self.loader = loader
        self.file = file
        self.problems = problems
        self.visits = 0

    def convert(self, node: yaml.Node, path: PathKey, lines: dict[PathKey, int], depth: int = 0) -> Any:
        """``depth`` counts the mappings merged in (<<) as levels too: a chain of them recurses."""
        self.visits += 1
        line = node.start_mark.line + 1
        if self.visits > MAX_NODES:
            raise _Refused(line, f"aliases expand to more than {MAX_NODES} nodes", format_path(path[:4]))
        if depth > MAX_DEPTH:
            raise _Refused(line, f"nested deeper than {MAX_DEPTH} levels once aliases are expanded")
        result: Any
        if isinstance(node, yaml.MappingNode):
            result = self._mapping(node, path, lines, depth)
        elif isinstance(node, yaml.SequenceNode):
            result = [self.convert(item, path + (i,), lines, depth + 1) for i, item in enumerate(node.value)]
        else:
            try:
                result = self.loader.construct_object(node, deep=True)
            except ValueError as exc:  # an integer of more than 4300 digits
                raise _Refused(line, f"cannot read the value: {exc}", format_path(path)) from None
        lines[path] = line  # after the merged mappings, converted at this path, recorded theirs
        return result

    def _mapping(self, node: yaml.MappingNode, path: PathKey, lines: dict[PathKey, int], depth: int) -> dict:
        merged: dict = {}  # YAML merge keys (<<): the first mapping that has a key gives its value
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"expected a mapping or list of mappings for merging, but found {source.id}",
                            source.start_mark)
                    for key, value in self.convert(source, path, lines, depth + 1).items():
                        merged.setdefault(key, value)
        result: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.ScalarNode):  # its text could expand like any value
                self.problems.append(Problem(Severity.ERROR, self.file, key_node.start_mark.line + 1, "",
                                             format_path(path), "a mapping key must be a string or a number",
                                             Code.YAML))
                continue
            key = key_node.value if key_node.tag == _VALUE_TAG else self.convert(key_node, path, {}, depth + 1)
            if isinstance(key, bool):  # YAML 1.1: `on:`/`yes:` keys are booleans; JSON says "true"
                key = str(key).lower()
            elif not isinstance(key, str):
                key = str(key)  # Kubernetes keys are strings; `80: x` means "80"
            if key in result:
                self.problems.append(Problem(Severity.ERROR, self.file, key_node.start_mark.line + 1, "",
                                             format_path(path + (key,)), "duplicate key"))
            result[key] = self.convert(value_node, path + (key,), lines, depth + 1)
        return {**merged, **result}


def oversized(file: str) -> Problem:
    """The finding for a file over MAX_FILE_BYTES, which a reader should not even read whole."""
    return Problem(Severity.ERROR, file, 1, "", "", f"larger than {MAX_FILE_BYTES} bytes; file refused", Code.YAML)


def load_documents(text: str, file: str, problems: list[Problem]) -> list[Document]:
    """Every non-empty document of a YAML stream. Raises ``YamlError`` for a syntax error, and for
    a file past a bound above (MAX_FILE_BYTES, MAX_DOCUMENTS, MAX_DEPTH, MAX_NODES).

    Parsed with libyaml when PyYAML has it (several times faster on large manifests, same nodes
    and marks); a file that fails is parsed again by the pure-Python parser, whose messages say
    more ("expected ',' or '}', but got '<stream end>'")."""
    if len(text) > MAX_FILE_BYTES:  # characters: never fewer than the bytes they came from
        raise YamlError(oversized(file))
    fast = getattr(yaml, "CSafeLoader", None)
    try:
        if fast is not None:
            try:
                return _load_documents(fast, text, file, problems)
            except YamlError:
                if len(text) > RETRY_MAX_BYTES:
                    raise
        return _load_documents(yaml.SafeLoader, text, file, problems)
    except _Refused as exc:  # not retried: the other parser would only spend as much again
        raise YamlError(Problem(Severity.ERROR, file, exc.line, "", exc.field, f"{exc.message}; file refused",
                                Code.YAML)) from None


def _load_documents(loader_class, text: str, file: str, problems: list[Problem]) -> list[Document]:
    documents: list[Document] = []
    reported = len(problems)
    loader = None
    try:
        # In the try: the pure-Python loader's reader checks the whole text for characters YAML
        # forbids (control characters) as it is made, and raises a YAML error then.
        loader = loader_class(text)
        converter = _Converter(loader, file, problems)
        for index, node in enumerate(_compose(loader)):
            lines: dict[PathKey, int] = {}
            data = converter.convert(node, (), lines)
            if data is not None:
                documents.append(Document(file, index, data, lines))
    except yaml.YAMLError as exc:
        del problems[reported:]  # the retry reports them again
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        reason = getattr(exc, "problem", None) or str(exc)
        raise YamlError(Problem(Severity.ERROR, file, line, "", "", f"not valid YAML: {reason}", Code.YAML)) from None
    except _Refused:
        del problems[reported:]
        raise
    finally:
        if loader is not None:
            loader.dispose()
    return documents


def yaml_files(paths: list[Path]) -> Iterator[Path]:
    """The .yaml/.yml files named, and those under named directories, in a stable order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            yield path


@dataclass
class Field:
    """A cursor at ``path`` in ``doc``; reads typed values and reports problems at its path."""

    doc: Document
    path: PathKey
    value: Any
    problems: list[Problem]
    resource: list[str] = field(default_factory=lambda: [""])  # shared, filled in once known

    def __getitem__(self, key: str | int) -> Field:
        if isinstance(self.value, dict):
            value = self.value.get(key)
        elif isinstance(self.value, list) and isinstance(key, int) and 0 <= key < len(self.value):
            value = self.value[key]
        else:
            value = None
        return Field(self.doc, self.path + (key,), value, self.problems, self.resource)

    @property
    def present(self) -> bool:
        return self.value is not None

    def report(self, message: str, severity: Severity = Severity.ERROR, *, code: builtins.str = "") -> None:
        self.problems.append(Problem(severity, self.doc.file, self.doc.line_of(self.path), self.resource[0],
                                     format_path(self.path), message, code))

    def warn(self, message: str) -> None:
        self.report(message, Severity.WARNING)

    def _typed(self, kind: type | tuple[type, ...], name: str, required: bool) -> Any:
        if self.value is None:
            if required:
                self.report("is required")
            return None
        if not isinstance(self.value, kind) or (kind is int and isinstance(self.value, bool)):
            self.report(f"expected {name}, got {_describe(self.value)}")
            return None
        return self.value

    def mapping(self, known: set[str] | frozenset[str], *, required: bool = False,
                unknown: list[builtins.str] | None = None) -> bool:
        """True if a mapping is here; warns about each unknown field of it, or, given ``unknown``,
        appends their names to it instead (for a caller whose meaning depends on them)."""
        if self._typed(dict, "a mapping", required) is None:
            return False
        for key in self.value:
            if key not in known:
                if unknown is None:
                    self[key].report("unknown field, ignored", Severity.WARNING, code=Code.UNKNOWN_FIELD)
                else:
                    unknown.append(builtins.str(key))
        return True

    # Inside the class, `str` and `bool` name these methods once defined: annotations say builtins.
    @overload
    def str(self, *, required: bool = False, default: builtins.str,
            choices: tuple[builtins.str, ...] = ()) -> builtins.str: ...

    @overload
    def str(self, *, required: bool = False, default: None = None,
            choices: tuple[builtins.str, ...] = ()) -> builtins.str | None: ...

    def str(self, *, required: bool = False, default: builtins.str | None = None,
            choices: tuple[builtins.str, ...] = ()) -> builtins.str | None:
        value = self._typed(str, "a string", required)
        if value is not None and choices and value not in choices:
            # Reported as an error, so the resource is dropped; the default keeps callers simple.
            self.report(f"{value!r} is not one of {', '.join(choices)}")
            return default
        return default if value is None else value

    def int(self, *, required: builtins.bool = False, default: int | None = None, low: int | None = None,
            high: int | None = None) -> int | None:
        value = self._typed(int, "an integer", required)
        if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
            self.report(f"{value} is out of range {low}..{high}")
            return None
        return default if value is None else value

    def bool(self, *, default: builtins.bool = False) -> builtins.bool:
        value = self._typed(bool, "true or false", False)
        return default if value is None else value

    def entries(self) -> list[tuple[builtins.str, Field]]:
        """The (key, value) pairs of a mapping whose keys are data, not field names."""
        if self._typed(dict, "a mapping", False) is None:
            return []
        return [(key, self[key]) for key in self.value]

    def items(self, *, required: builtins.bool = False) -> list[Field]:
        if self._typed(list, "a list", required) is None:
            return []
        return [self[i] for i in range(len(self.value))]

    def __iter__(self):
        # __getitem__ would make a Field iterable forever (missing indexes give empty Fields).
        raise TypeError("use .items() to iterate a list field")

    def str_list(self) -> tuple[builtins.str, ...]:
        return tuple(v for item in self.items() if (v := item.str(required=True)) is not None)

    def str_map(self) -> dict[builtins.str, builtins.str]:
        if self._typed(dict, "a mapping of strings", False) is None:
            return {}
        result = {}
        for key, value in self.value.items():
            if isinstance(value, str):
                result[key] = value
            elif isinstance(value, (bool, int, float)):  # Kubernetes rejects these too
                shown = str(value).lower() if isinstance(value, bool) else value
                self[key].report(f"expected a string, got {_describe(value)}; quote it: \"{shown}\"")
            else:
                self[key].report(f"expected a string, got {_describe(value)}")
        return result


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
