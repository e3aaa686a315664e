"""The agent's side of a CNI request, as tables: what each relayed invocation is decided into, and the
CNI spec's shapes of the answers (the result passed through, the error object)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from bpf.cni_protocol import (
    ERR_DECODE,
    ERR_INCOMPATIBLE_VERSION,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    MAX_REQUEST_BYTES,
    AddPod,
    CniError,
    DeletePod,
    Reply,
    cni_args,
    parse_request,
    pod_ip,
)

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "cni0", "mac": "00:11:22:33:44:55"},
                   {"name": "veth1", "mac": "55:44:33:22:11:11"},
                   {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/cni-1"}],
    "ips": [{"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 2},
            {"address": "fd00::7/64", "interface": 2}],
    "dns": {"nameservers": ["10.96.0.10"]},
}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/cni-1",
       "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
       "CNI_PATH": "/opt/cni/bin"}


def request(command: str = "ADD", env: dict | None = None, config: object = None, **extra) -> bytes:
    if config is None:
        config = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ambient-cni", "prevResult": PREV}
    text = config if isinstance(config, str) else json.dumps(config)
    return json.dumps({"command": command, "env": {**ENV, "CNI_COMMAND": command, **(env or {})},
                       "config": text, **extra}).encode()


def error_of(reply) -> dict:
    assert isinstance(reply, Reply) and reply.status != 0
    error = json.loads(reply.stdout)
    assert set(error) <= {"cniVersion", "code", "msg", "details"} and isinstance(error["msg"], str)
    return error


def test_an_add_names_the_pod_its_netns_and_ip_and_passes_prev_result_through():
    decision = parse_request(request())
    assert decision == AddPod("shop", "web-0", "/var/run/netns/cni-1", "10.244.1.7", "abc123", "1.0.0",
                              decision.result)
    assert decision.result.status == 0 and json.loads(decision.result.stdout) == PREV


def test_the_result_carries_the_configuration_cni_version():
    config = {"cniVersion": "0.4.0", "name": "n", "type": "ambient-cni", "prevResult": {**PREV, "cniVersion": "0.4.0"}}
    decision = parse_request(request(config=config))
    assert isinstance(decision, AddPod)
    assert json.loads(decision.result.stdout) == {**PREV, "cniVersion": "0.4.0"}


def test_a_del_names_the_pod_and_prints_nothing():
    decision = parse_request(request("DEL"))
    assert decision == DeletePod("shop", "web-0", "abc123", "1.0.0", Reply(0, ""))


def test_check_succeeds_with_no_output():
    assert parse_request(request("CHECK")) == Reply(0, "")


@pytest.mark.parametrize("args", ["", "IgnoreUnknown=1", "K8S_POD_NAMESPACE=shop"])
def test_a_sandbox_that_is_not_a_kubernetes_pod_is_passed_through(args):
    assert parse_request(request(env={"CNI_ARGS": args})) == Reply(0, json.dumps(PREV))


def test_an_excluded_namespace_is_passed_through():
    assert parse_request(request(env={"CNI_ARGS": "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1"})) \
        == Reply(0, json.dumps(PREV))
    config = {"cniVersion": "1.0.0", "prevResult": PREV, "exclude_namespaces": ["shop"]}
    assert parse_request(request(config=config)) == Reply(0, json.dumps(PREV))
    assert parse_request(request("DEL", config=config)) == Reply(0, "")


def test_an_add_without_prev_result_has_no_ip_and_answers_a_bare_result():
    decision = parse_request(request(config={"cniVersion": "1.1.0", "name": "n", "type": "ambient-cni"}))
    assert isinstance(decision, AddPod) and decision.ip is None
    assert json.loads(decision.result.stdout) == {"cniVersion": "1.1.0"}


@pytest.mark.parametrize(("data", "code", "words"), [
    pytest.param(b"not json", ERR_DECODE, "not JSON", id="request not JSON"),
    pytest.param(b"[]", ERR_DECODE, "not a JSON object", id="request not an object"),
    pytest.param(request(config="{oops"), ERR_DECODE, "stdin is not JSON", id="stdin not JSON"),
    pytest.param(request(config="[1]"), ERR_DECODE, "not a JSON object", id="stdin not an object"),
    pytest.param(request(config={"name": "n"}), ERR_INVALID_CONFIG, "no cniVersion", id="no cniVersion"),
    pytest.param(request(config={"cniVersion": "0.2.0"}), ERR_INCOMPATIBLE_VERSION, "unsupported cniVersion",
                 id="cniVersion 0.2.0"),
    pytest.param(request("VERSION"), ERR_INVALID_ENV, "unsupported CNI_COMMAND", id="VERSION is the plugin's"),
    pytest.param(request(config={"cniVersion": "1.0.0", "prevResult": []}), ERR_INVALID_CONFIG, "prevResult",
                 id="prevResult not an object"),
    pytest.param(request(env={"CNI_NETNS": "cni-1"}), ERR_INVALID_ENV, "CNI_NETNS", id="relative netns"),
    pytest.param(request(env={"CNI_IFNAME": ""}), ERR_INVALID_ENV, "CNI_IFNAME", id="no ifname"),
    pytest.param(request(env={"CNI_CONTAINERID": ""}), ERR_INVALID_ENV, "CNI_CONTAINERID", id="no container id"),
    pytest.param(request(env={"CNI_ARGS": "K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=w"}), ERR_INVALID_ENV,
                 "K8S_POD_NAMESPACE", id="namespace not a name"),
    pytest.param(request(env={"CNI_ARGS": "garbage"}), ERR_INVALID_ENV, "CNI_ARGS", id="CNI_ARGS not pairs"),
    pytest.param(request(env={"CNI_NETNS": "/" + "x" * 5000}), ERR_INVALID_ENV, "too long", id="env too long"),
    pytest.param(b" " * (MAX_REQUEST_BYTES + 1), ERR_DECODE, "too large", id="request too large"),
])
def test_malformed_requests_get_the_spec_error_object(data, code, words):
    error = error_of(parse_request(data))
    assert error["code"] == code
    assert words in f"{error['msg']}: {error.get('details', '')}"


def test_an_error_carries_the_configuration_version_once_known():
    assert error_of(parse_request(request(env={"CNI_NETNS": "x"})))["cniVersion"] == "1.0.0"


@pytest.mark.parametrize(("result", "ifname", "ip"), [
    pytest.param(PREV, "eth0", "10.244.1.7", id="by interface index"),
    pytest.param(PREV, "eth1", None, id="another interface"),
    pytest.param({"ips": [{"address": "10.0.0.5/32"}]}, "eth0", "10.0.0.5", id="no interfaces: IPAM-only"),
    pytest.param({"interfaces": [{"name": "eth0", "sandbox": "/n"}], "ips": [{"address": "fd00::1/64"}]},
                 "eth0", None, id="IPv6 only"),
    pytest.param({"interfaces": [{"name": "eth1", "sandbox": "/n"}], "ips": [{"address": "10.0.0.5/32"}]},
                 "eth0", None, id="unindexed address of another sandbox interface"),
    pytest.param({"interfaces": [{"name": "eth0", "sandbox": "/n"}],
                  "ips": [{"address": "10.0.0.6/32", "interface": 0}, {"address": "10.0.0.7/32", "interface": 0}]},
                 "eth0", "10.0.0.6", id="first of several"),
])
def test_the_pod_ip_is_the_ipv4_address_of_the_sandbox_interface(result, ifname, ip):
    assert pod_ip(result, ifname) == ip


@pytest.mark.parametrize("result", [
    {"ips": "10.0.0.1"}, {"ips": [{"gateway": "10.0.0.1"}]}, {"ips": [{"address": "banana"}]},
])
def test_a_malformed_prev_result_is_an_invalid_configuration(result):
    with pytest.raises(CniError) as caught:
        pod_ip(result, "eth0")
    assert caught.value.code == ERR_INVALID_CONFIG


def test_cni_args_are_semicolon_separated_pairs():
    assert cni_args("A=1;B=x=y;;") == {"A": "1", "B": "x=y"}


@given(st.binary(max_size=300))
def test_any_bytes_get_a_decision_never_an_exception(data):
    decision = parse_request(data)
    if isinstance(decision, Reply) and decision.status:
        assert isinstance(json.loads(decision.stdout)["code"], int)


def test_deep_nesting_is_a_decode_error_not_a_crash():
    assert error_of(parse_request(b"[" * 100_000))["code"] == ERR_DECODE
    assert error_of(parse_request(request(config="[" * 100_000)))["code"] == ERR_DECODE
