from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class L7Policy(_message.Message):
    __slots__ = ("name", "namespace", "action", "gateways", "services", "rules", "dry_run")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ALLOW: _ClassVar[L7Policy.Action]
        DENY: _ClassVar[L7Policy.Action]
        AUDIT: _ClassVar[L7Policy.Action]
        CUSTOM: _ClassVar[L7Policy.Action]
    ALLOW: L7Policy.Action
    DENY: L7Policy.Action
    AUDIT: L7Policy.Action
    CUSTOM: L7Policy.Action
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    action: L7Policy.Action
    gateways: _containers.RepeatedScalarFieldContainer[str]
    services: _containers.RepeatedScalarFieldContainer[str]
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    dry_run: bool
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., action: _Optional[_Union[L7Policy.Action, str]] = ..., gateways: _Optional[_Iterable[str]] = ..., services: _Optional[_Iterable[str]] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class Rule(_message.Message):
    __slots__ = ("to", "when")
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    to: _containers.RepeatedCompositeFieldContainer[Operation]
    when: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, to: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., when: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., **kwargs) -> None: ...

class Source(_message.Message):
    __slots__ = ("principals", "not_principals", "request_principals", "not_request_principals", "namespaces", "not_namespaces", "ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks", "service_accounts", "not_service_accounts", "trust_domains", "not_trust_domains")
    PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    NOT_PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    NOT_REQUEST_PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    NOT_NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    IP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NOT_IP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_IP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NOT_REMOTE_IP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    NOT_SERVICE_ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    TRUST_DOMAINS_FIELD_NUMBER: _ClassVar[int]
    NOT_TRUST_DOMAINS_FIELD_NUMBER: _ClassVar[int]
    principals: _containers.RepeatedScalarFieldContainer[str]
    not_principals: _containers.RepeatedScalarFieldContainer[str]
    request_principals: _containers.RepeatedScalarFieldContainer[str]
    not_request_principals: _containers.RepeatedScalarFieldContainer[str]
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    not_namespaces: _containers.RepeatedScalarFieldContainer[str]
    ip_blocks: _containers.RepeatedScalarFieldContainer[str]
    not_ip_blocks: _containers.RepeatedScalarFieldContainer[str]
    remote_ip_blocks: _containers.RepeatedScalarFieldContainer[str]
    not_remote_ip_blocks: _containers.RepeatedScalarFieldContainer[str]
    service_accounts: _containers.RepeatedScalarFieldContainer[str]
    not_service_accounts: _containers.RepeatedScalarFieldContainer[str]
    trust_domains: _containers.RepeatedScalarFieldContainer[str]
    not_trust_domains: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, principals: _Optional[_Iterable[str]] = ..., not_principals: _Optional[_Iterable[str]] = ..., request_principals: _Optional[_Iterable[str]] = ..., not_request_principals: _Optional[_Iterable[str]] = ..., namespaces: _Optional[_Iterable[str]] = ..., not_namespaces: _Optional[_Iterable[str]] = ..., ip_blocks: _Optional[_Iterable[str]] = ..., not_ip_blocks: _Optional[_Iterable[str]] = ..., remote_ip_blocks: _Optional[_Iterable[str]] = ..., not_remote_ip_blocks: _Optional[_Iterable[str]] = ..., service_accounts: _Optional[_Iterable[str]] = ..., not_service_accounts: _Optional[_Iterable[str]] = ..., trust_domains: _Optional[_Iterable[str]] = ..., not_trust_domains: _Optional[_Iterable[str]] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("hosts", "not_hosts", "ports", "not_ports", "methods", "not_methods", "paths", "not_paths")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    NOT_HOSTS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    NOT_PORTS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    NOT_METHODS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    NOT_PATHS_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    not_hosts: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedScalarFieldContainer[int]
    not_ports: _containers.RepeatedScalarFieldContainer[int]
    methods: _containers.RepeatedScalarFieldContainer[str]
    not_methods: _containers.RepeatedScalarFieldContainer[str]
    paths: _containers.RepeatedScalarFieldContainer[str]
    not_paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, hosts: _Optional[_Iterable[str]] = ..., not_hosts: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[int]] = ..., not_ports: _Optional[_Iterable[int]] = ..., methods: _Optional[_Iterable[str]] = ..., not_methods: _Optional[_Iterable[str]] = ..., paths: _Optional[_Iterable[str]] = ..., not_paths: _Optional[_Iterable[str]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("key", "values", "not_values")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    NOT_VALUES_FIELD_NUMBER: _ClassVar[int]
    key: str
    values: _containers.RepeatedScalarFieldContainer[str]
    not_values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ..., not_values: _Optional[_Iterable[str]] = ...) -> None: ...

class StringMatch(_message.Message):
    __slots__ = ("exact", "prefix", "regex")
    EXACT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    exact: str
    prefix: str
    regex: str
    def __init__(self, exact: _Optional[str] = ..., prefix: _Optional[str] = ..., regex: _Optional[str] = ...) -> None: ...

class HeaderMatch(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: StringMatch
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[StringMatch, _Mapping]] = ...) -> None: ...

class QueryMatch(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: StringMatch
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[StringMatch, _Mapping]] = ...) -> None: ...

class RouteMatch(_message.Message):
    __slots__ = ("path", "headers", "query_params", "method")
    PATH_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    QUERY_PARAMS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    path: StringMatch
    headers: _containers.RepeatedCompositeFieldContainer[HeaderMatch]
    query_params: _containers.RepeatedCompositeFieldContainer[QueryMatch]
    method: str
    def __init__(self, path: _Optional[_Union[StringMatch, _Mapping]] = ..., headers: _Optional[_Iterable[_Union[HeaderMatch, _Mapping]]] = ..., query_params: _Optional[_Iterable[_Union[QueryMatch, _Mapping]]] = ..., method: _Optional[str] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class HeaderModifier(_message.Message):
    __slots__ = ("set", "add", "remove")
    SET_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    set: _containers.RepeatedCompositeFieldContainer[Header]
    add: _containers.RepeatedCompositeFieldContainer[Header]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, set: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., add: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class Redirect(_message.Message):
    __slots__ = ("scheme", "hostname", "replace_full_path", "replace_prefix_match", "port", "status_code")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FULL_PATH_FIELD_NUMBER: _ClassVar[int]
    REPLACE_PREFIX_MATCH_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    scheme: str
    hostname: str
    replace_full_path: str
    replace_prefix_match: str
    port: int
    status_code: int
    def __init__(self, scheme: _Optional[str] = ..., hostname: _Optional[str] = ..., replace_full_path: _Optional[str] = ..., replace_prefix_match: _Optional[str] = ..., port: _Optional[int] = ..., status_code: _Optional[int] = ...) -> None: ...

class Rewrite(_message.Message):
    __slots__ = ("hostname", "replace_full_path", "replace_prefix_match")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FULL_PATH_FIELD_NUMBER: _ClassVar[int]
    REPLACE_PREFIX_MATCH_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    replace_full_path: str
    replace_prefix_match: str
    def __init__(self, hostname: _Optional[str] = ..., replace_full_path: _Optional[str] = ..., replace_prefix_match: _Optional[str] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("service", "port", "weight", "error")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    service: str
    port: int
    weight: int
    error: str
    def __init__(self, service: _Optional[str] = ..., port: _Optional[int] = ..., weight: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class Mirror(_message.Message):
    __slots__ = ("service", "port", "percent")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    service: str
    port: int
    percent: int
    def __init__(self, service: _Optional[str] = ..., port: _Optional[int] = ..., percent: _Optional[int] = ...) -> None: ...

class Retry(_message.Message):
    __slots__ = ("attempts", "codes", "backoff_seconds")
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_SECONDS_FIELD_NUMBER: _ClassVar[int]
    attempts: int
    codes: _containers.RepeatedScalarFieldContainer[int]
    backoff_seconds: float
    def __init__(self, attempts: _Optional[int] = ..., codes: _Optional[_Iterable[int]] = ..., backoff_seconds: _Optional[float] = ...) -> None: ...

class RouteRule(_message.Message):
    __slots__ = ("name", "matches", "backends", "request_headers", "response_headers", "redirect", "rewrite", "mirrors", "timeout_seconds", "backend_timeout_seconds", "retry")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    REWRITE_FIELD_NUMBER: _ClassVar[int]
    MIRRORS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    name: str
    matches: _containers.RepeatedCompositeFieldContainer[RouteMatch]
    backends: _containers.RepeatedCompositeFieldContainer[Backend]
    request_headers: HeaderModifier
    response_headers: HeaderModifier
    redirect: Redirect
    rewrite: Rewrite
    mirrors: _containers.RepeatedCompositeFieldContainer[Mirror]
    timeout_seconds: float
    backend_timeout_seconds: float
    retry: Retry
    def __init__(self, name: _Optional[str] = ..., matches: _Optional[_Iterable[_Union[RouteMatch, _Mapping]]] = ..., backends: _Optional[_Iterable[_Union[Backend, _Mapping]]] = ..., request_headers: _Optional[_Union[HeaderModifier, _Mapping]] = ..., response_headers: _Optional[_Union[HeaderModifier, _Mapping]] = ..., redirect: _Optional[_Union[Redirect, _Mapping]] = ..., rewrite: _Optional[_Union[Rewrite, _Mapping]] = ..., mirrors: _Optional[_Iterable[_Union[Mirror, _Mapping]]] = ..., timeout_seconds: _Optional[float] = ..., backend_timeout_seconds: _Optional[float] = ..., retry: _Optional[_Union[Retry, _Mapping]] = ...) -> None: ...

class ParentRef(_message.Message):
    __slots__ = ("service", "port")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    service: str
    port: int
    def __init__(self, service: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("name", "namespace", "kind", "parents", "hostnames", "rules", "problems", "created")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAMES_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    kind: str
    parents: _containers.RepeatedCompositeFieldContainer[ParentRef]
    hostnames: _containers.RepeatedScalarFieldContainer[str]
    rules: _containers.RepeatedCompositeFieldContainer[RouteRule]
    problems: _containers.RepeatedScalarFieldContainer[str]
    created: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., kind: _Optional[str] = ..., parents: _Optional[_Iterable[_Union[ParentRef, _Mapping]]] = ..., hostnames: _Optional[_Iterable[str]] = ..., rules: _Optional[_Iterable[_Union[RouteRule, _Mapping]]] = ..., problems: _Optional[_Iterable[str]] = ..., created: _Optional[str] = ...) -> None: ...

class WasmPlugin(_message.Message):
    __slots__ = ("name", "namespace", "url", "sha256", "plugin_name", "phase", "priority", "plugin_config", "fail_open", "vm_env", "vm_host_env", "gateways", "services", "ports")
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNSPECIFIED_PHASE: _ClassVar[WasmPlugin.Phase]
        AUTHN: _ClassVar[WasmPlugin.Phase]
        AUTHZ: _ClassVar[WasmPlugin.Phase]
        STATS: _ClassVar[WasmPlugin.Phase]
    UNSPECIFIED_PHASE: WasmPlugin.Phase
    AUTHN: WasmPlugin.Phase
    AUTHZ: WasmPlugin.Phase
    STATS: WasmPlugin.Phase
    class VmEnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_NAME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    FAIL_OPEN_FIELD_NUMBER: _ClassVar[int]
    VM_ENV_FIELD_NUMBER: _ClassVar[int]
    VM_HOST_ENV_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    url: str
    sha256: str
    plugin_name: str
    phase: WasmPlugin.Phase
    priority: int
    plugin_config: bytes
    fail_open: bool
    vm_env: _containers.ScalarMap[str, str]
    vm_host_env: _containers.RepeatedScalarFieldContainer[str]
    gateways: _containers.RepeatedScalarFieldContainer[str]
    services: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., url: _Optional[str] = ..., sha256: _Optional[str] = ..., plugin_name: _Optional[str] = ..., phase: _Optional[_Union[WasmPlugin.Phase, str]] = ..., priority: _Optional[int] = ..., plugin_config: _Optional[bytes] = ..., fail_open: _Optional[bool] = ..., vm_env: _Optional[_Mapping[str, str]] = ..., vm_host_env: _Optional[_Iterable[str]] = ..., gateways: _Optional[_Iterable[str]] = ..., services: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[int]] = ...) -> None: ...
