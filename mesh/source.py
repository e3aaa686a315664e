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


def _convert(loader: yaml.SafeLoader, node: yaml.Node, path: PathKey, lines: dict, problems: list, file: str):
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
        result: dict = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, bool):  # YAML 1.1: `on:`/`yes:` keys are booleans; JSON says "true"
                key = str(key).lower()
            elif not isinstance(key, str):
                key = str(key)  # Kubernetes keys are strings; `80: x` means "80"
            if key in result:
                problems.append(Problem(Severity.ERROR, file, key_node.start_mark.line + 1, "",
                                        format_path(path + (key,)), "duplicate key"))
            result[key] = _convert(loader, value_node, path + (key,), lines, problems, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, path + (i,), lines, problems, file) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_documents(text: str, file: str, problems: list[Problem]) -> list[Document]:
    """Every non-empty document of a YAML stream. Raises ``YamlError`` for a syntax error.

    Parsed with libyaml when PyYAML has it (several times faster on large manifests, same nodes
    and marks); a file that fails is parsed again by the pure-Python parser, whose messages say
    more ("expected ',' or '}', but got '<stream end>'")."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return _load_documents(fast, text, file, problems)
        except YamlError:
            pass
    return _load_documents(yaml.SafeLoader, text, file, problems)


def _load_documents(loader_class, text: str, file: str, problems: list[Problem]) -> list[Document]:
    loader = loader_class(text)
    documents: list[Document] = []
    reported = len(problems)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                lines: dict[PathKey, int] = {}
                data = _convert(loader, node, (), lines, problems, file)
                if data is not None:
                    documents.append(Document(file, index, data, lines))
            index += 1
    except yaml.YAMLError as exc:
        del problems[reported:]  # the retry reports them again
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        reason = getattr(exc, "problem", None) or str(exc)
        raise YamlError(Problem(Severity.ERROR, file, line, "", "", f"not valid YAML: {reason}", Code.YAML)) from None
    finally:
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
