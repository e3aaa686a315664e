"""String, path, header and address matching shared by the waypoint's L7 policy and its routes.

Everything here is compiled once, when discovery changes, into small frozen objects whose ``matches``
does only set look-ups, ``startswith``/``endswith`` and precompiled regexes per request.

- ``IstioStrings``: Istio's string syntax in AuthorizationPolicy fields ("*" alone, "prefix*",
  "*suffix", exact), with the meaning of "*" that istiod gives each field (``star``: any value, or
  any non-empty value). Path fields also take Istio's path templates (``{*}`` one segment, ``{**}``
  one or more segments), compiled to a regex.
- ``IpBlocks``: IPs and CIDRs (v4 and v6), parsed with ``ipaddress`` once; an entry that does not
  parse matches nothing (it never widens a rule).
- ``normalize_target``: the path normalisation Istio applies by default (``pathNormalization:
  BASE``, Envoy's ``normalize_path``) before policy and routing see a path, and before it is sent on.
- ``PathMatch`` / ``ValueMatch``: Gateway API matches (Exact, PathPrefix by whole segments, full-match
  RegularExpression) for routes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from mesh.api import waypoint_pb2 as wp

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# ---------------------------------------------------------------- Istio strings


@dataclass(frozen=True, slots=True)
class IstioStrings:
    """The entries of one AuthorizationPolicy string field; ``matches(v)``: does any entry match ``v``?

    ``any_value``: a "*" entry matches every value, ``any_nonempty``: a "*" entry matches every
    non-empty value (istiod turns "*" into ``presentMatch`` for hosts, methods and headers, and into
    the regex ``.+`` for principals and paths)."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    templates: tuple[re.Pattern[str], ...] = ()
    any_value: bool = False
    any_nonempty: bool = False
    fold_case: bool = False

    def matches(self, value: str) -> bool:
        if self.fold_case:
            value = value.lower()
        if self.any_value or (self.any_nonempty and value):
            return True
        return (value in self.exact or value.startswith(self.prefixes) or value.endswith(self.suffixes)
                or any(t.fullmatch(value) for t in self.templates))


# Istio's path-template operators (AuthorizationPolicy paths): "{*}" one path segment, "{**}" one or more.
_TEMPLATE_OPERATOR = re.compile(r"\{\*\*?\}")
_ONE_SEGMENT = r"[^/]+"
_SEGMENTS = r"[^/]+(?:/[^/]+)*"


def _template(pattern: str) -> re.Pattern[str]:
    parts = _TEMPLATE_OPERATOR.split(pattern)
    operators = _TEMPLATE_OPERATOR.findall(pattern)
    regex = re.escape(parts[0])
    for operator, literal in zip(operators, parts[1:], strict=True):
        regex += (_SEGMENTS if operator == "{**}" else _ONE_SEGMENT) + re.escape(literal)
    return re.compile(regex)


def istio_strings(entries: Iterable[str], *, star_matches_empty: bool, fold_case: bool = False,
                  templates: bool = False) -> IstioStrings | None:
    """Compile an Istio string field; None when the field has no entries (it is not a condition)."""
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    compiled_templates: list[re.Pattern[str]] = []
    star = False
    declared = False
    for entry in entries:
        declared = True
        if fold_case:
            entry = entry.lower()
        if entry == "*":
            star = True
        elif templates and _TEMPLATE_OPERATOR.search(entry):
            compiled_templates.append(_template(entry))
        elif entry.endswith("*"):
            prefixes.append(entry[:-1])
        elif entry.startswith("*"):
            suffixes.append(entry[1:])
        else:
            exact.add(entry)
    if not declared:
        return None
    return IstioStrings(frozenset(exact), tuple(prefixes), tuple(suffixes), tuple(compiled_templates),
                        any_value=star and star_matches_empty, any_nonempty=star and not star_matches_empty,
                        fold_case=fold_case)


# ---------------------------------------------------------------- addresses


def parse_ip(text: str) -> IPAddress | None:
    """The address ``text`` names (an IPv4-mapped IPv6 address as IPv4), or None if it is not one."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class IpBlocks:
    networks: tuple[IPNetwork, ...]

    def matches(self, ip: IPAddress | None) -> bool:
        if ip is None:
            return False
        return any(ip.version == n.version and ip in n for n in self.networks)


def ip_blocks(entries: Iterable[str]) -> IpBlocks | None:
    """Compile IPs and CIDRs; None for no entries. Host bits in a CIDR are allowed (as Istio)."""
    entries = list(entries)
    if not entries:
        return None
    networks: list[IPNetwork] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue  # unreadable: matches nothing (a field made only of these never holds)
    return IpBlocks(tuple(networks))


# ---------------------------------------------------------------- path normalisation (Istio BASE)

# Percent-encoded characters Envoy's normalize_path decodes (RFC 3986 unreserved: ALPHA DIGIT - . _ ~);
# Istio's "Authorization Policy Normalization" table. %2F and %5C stay encoded (that is
# DECODE_AND_MERGE_SLASHES, not the default).
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_NUL = re.compile(r"%00")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path: "/a/./b/../c" → "/a/c"; never climbs above "/"."""
    if "." not in path:
        return path
    output: list[str] = []
    segments = path.split("/")[1:]  # path starts with "/"
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)


def normalize_path(path: str) -> str | None:
    """A request path (no query) as Istio's default normalisation leaves it, or None when the request
    must be refused with 400 (an encoded NUL, which Envoy always rejects).

    In order: decode the percent-encoded unreserved characters (once: no double decoding), turn
    backslashes into slashes, remove dot segments. Slashes are not merged (that is MERGE_SLASHES)."""
    if "%" in path:
        if _NUL.search(path):
            return None
        path = _PERCENT.sub(_decode_unreserved, path)
    path = path.replace("\\", "/")
    if path.startswith("/"):
        path = remove_dot_segments(path)
    return path


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target; the query without its "?" ("" when there is none)."""
    path, _, query = target.partition("?")
    return path, query


def normalize_target(target: str) -> str | None:
    """``normalize_path`` on the path part of a request target, the query kept as sent."""
    path, sep, query = target.partition("?")
    normal = normalize_path(path)
    if normal is None:
        return None
    return normal + sep + query


def query_first_values(query: str) -> dict[str, str]:
    """Each query parameter's first value, names and values percent-decoded ("+" kept)."""
    values: dict[str, str] = {}
    if not query:
        return values
    for pair in query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        values.setdefault(unquote(name), unquote(value))
    return values


def join_header(values: Sequence[str]) -> str:
    """A repeated header as one value, joined with "," as Envoy does before matching it."""
    return values[0] if len(values) == 1 else ",".join(values)


# ---------------------------------------------------------------- Gateway API matches

# Regex constructs RE2 (Gateway API's syntax) refuses and Python accepts: a pattern using one would be
# rejected by every conformant implementation, so it matches nothing here rather than being run with
# backtracking semantics no user expects.
_NOT_RE2 = re.compile(r"\(\?(?:=|!|<=|<!|P=)|\\[1-9]")


class UnsupportedRegex(ValueError):
    """A RegularExpression match that does not compile or uses what RE2 does not have."""


def compile_regex(pattern: str) -> re.Pattern[str]:
    if _NOT_RE2.search(pattern):
        raise UnsupportedRegex(f"regex {pattern!r} uses lookaround or backreferences, which RE2 does not have")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UnsupportedRegex(f"regex {pattern!r} does not compile: {e}") from None


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header or query value match: exact, or a full-match regex (``pattern``)."""

    exact: str | None
    pattern: re.Pattern[str] | None

    def matches(self, value: str) -> bool:
        if self.pattern is not None:
            return self.pattern.fullmatch(value) is not None
        return value == self.exact


NEVER = ValueMatch(None, re.compile(r"(?!)"))  # an unreadable match: holds for no value


def value_match(match: wp.StringMatch) -> ValueMatch:
    """Compile a header/query StringMatch; raises UnsupportedRegex (the caller records the problem)."""
    kind = match.WhichOneof("kind")
    if kind == "regex":
        return ValueMatch(None, compile_regex(match.regex))
    if kind == "exact":
        return ValueMatch(match.exact, None)
    if kind == "prefix":  # not a Gateway API header match type; kept meaningful anyway
        return ValueMatch(None, re.compile(re.escape(match.prefix) + ".*", re.DOTALL))
    return ValueMatch("", None)  # no kind: an empty exact value (proto3's default)


EXACT, PREFIX, REGEX = 3, 2, 1  # Istio's ranks of path match types: Exact > PathPrefix > RegularExpression


@dataclass(frozen=True, slots=True)
class PathMatch:
    """A Gateway API path match. ``kind``: EXACT, PREFIX or REGEX; ``value`` the path or pattern text
    (for PREFIX without trailing slashes: "/" becomes "", which every path matches)."""

    kind: int
    value: str
    length: int  # the precedence length: characters of the path or pattern as written
    pattern: re.Pattern[str] | None = None

    def matches(self, path: str) -> bool:
        if self.kind == EXACT:
            return path == self.value
        if self.kind == PREFIX:
            # Whole segments: "/foo" matches "/foo", "/foo/", "/foo/bar", never "/foobar".
            prefix = self.value
            return not prefix or path == prefix or path.startswith(prefix + "/")
        assert self.pattern is not None
        return self.pattern.fullmatch(path) is not None


ANY_PATH = PathMatch(PREFIX, "", 1)  # Gateway API's default match: PathPrefix "/"


def path_match(match: wp.StringMatch | None) -> PathMatch:
    if match is None:
        return ANY_PATH
    kind = match.WhichOneof("kind")
    if kind == "exact":
        return PathMatch(EXACT, match.exact, len(match.exact))
    if kind == "prefix":
        return PathMatch(PREFIX, match.prefix.rstrip("/"), len(match.prefix))
    if kind == "regex":
        return PathMatch(REGEX, match.regex, len(match.regex), compile_regex(match.regex))
    return ANY_PATH


__all__ = [
    "ANY_PATH", "EXACT", "IPAddress", "IpBlocks", "IstioStrings", "NEVER", "PREFIX", "PathMatch", "REGEX",
    "UnsupportedRegex", "ValueMatch", "compile_regex", "ip_blocks", "istio_strings", "join_header",
    "normalize_path", "normalize_target", "parse_ip", "path_match", "query_first_values",
    "remove_dot_segments", "split_target", "value_match",
]
