"""Finding pods' netns from /proc: the matching as tables, then (root) a real scan of network namespaces
the test makes, each with a process inside (`ip netns exec <ns> sleep`), and the table that holds them."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from bpf.proc_netns import NetnsCandidate, PodNetnsTable, match_pods, open_netns, reopen, scan_proc
from mesh.netns import netns_path

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces")


def candidate(inode: int, *ips: str) -> NetnsCandidate:
    return NetnsCandidate(inode, 1000 + inode, frozenset(ips))


@pytest.mark.parametrize(("candidates", "wanted", "found"), [
    pytest.param([candidate(1, "10.0.0.1"), candidate(2, "10.0.0.2")], {"a": "10.0.0.2"}, {"a": 2}, id="by IP"),
    pytest.param([candidate(1, "10.0.0.1")], {"a": "10.0.0.9"}, {}, id="not running"),
    pytest.param([candidate(1, "10.0.0.1"), candidate(2, "10.0.0.1")], {"a": "10.0.0.1"}, {},
                 id="ambiguous: an old netns still holds the IP"),
    pytest.param([candidate(1, "10.0.0.1", "10.0.0.2")], {"a": "10.0.0.1", "b": "10.0.0.2"}, {"a": 1, "b": 1},
                 id="two pods, one netns (two IPs of one sandbox)"),
    pytest.param([], {"a": "10.0.0.1"}, {}, id="nothing scanned"),
])
def test_match_pods(candidates, wanted, found):
    assert {key: c.inode for key, c in match_pods(candidates, wanted).items()} == found


@pytest.fixture
def pod_netns():
    """Two namespaces of the test's own, each with an address and a `sleep` inside; removed after."""
    made: list[tuple[str, subprocess.Popen | None]] = []

    def make(ip: str) -> tuple[str, subprocess.Popen]:
        name = f"amb-proctest{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append((name, None))
        # A veth pair, both ends inside: this kernel has no dummy module.
        subprocess.run(["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0"], check=True)
        sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"])
        made[-1] = (name, sleeper)
        return name, sleeper

    yield make
    for name, sleeper in made:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)


def inode(name: str) -> int:
    return os.stat(netns_path(name)).st_ino


def wait_in_netns(pid: int, name: str) -> None:
    """`ip netns exec` enters the netns, then execs sleep: wait until the pid is in it (no sleeping)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == inode(name):
                return
        except FileNotFoundError:
            pass
        os.sched_yield()
    pytest.fail(f"pid {pid} never entered netns {name}")


@root
def test_the_scan_finds_each_netns_once_with_its_addresses_and_a_pid_in_it(pod_netns):
    (first, one), (second, two) = pod_netns("10.254.7.2"), pod_netns("10.254.7.3")
    wait_in_netns(one.pid, first)
    wait_in_netns(two.pid, second)
    extra = subprocess.Popen(["ip", "netns", "exec", first, "sleep", "60"])  # a second process, same netns
    try:
        wait_in_netns(extra.pid, first)
        candidates = scan_proc()
    finally:
        extra.kill()
        extra.wait()
    inodes = [c.inode for c in candidates]
    assert len(inodes) == len(set(inodes))  # deduplicated by inode
    ours = {c.inode: c for c in candidates if c.inode in (inode(first), inode(second))}
    assert ours[inode(first)].addresses == {"10.254.7.2"}
    assert ours[inode(second)].addresses == {"10.254.7.3"}
    assert ours[inode(second)].pid == two.pid
    assert os.stat("/proc/self/ns/net").st_ino not in ours  # (and the host's own is skipped)
    found = match_pods(candidates, {"shop_web": "10.254.7.3", "shop_gone": "10.254.7.99"})
    assert set(found) == {"shop_web"} and found["shop_web"].inode == inode(second)


@root
def test_the_table_holds_a_found_netns_by_fd_so_its_path_outlives_the_process(pod_netns):
    name, sleeper = pod_netns("10.254.8.2")
    wait_in_netns(sleeper.pid, name)
    [found] = [c for c in scan_proc() if c.inode == inode(name)]
    fd = reopen(found)
    assert fd is not None
    table = PodNetnsTable()
    table.adopt("shop_web", fd)
    sleeper.kill()
    sleeper.wait()
    path = table.path("shop_web")
    assert path is not None and os.stat(path).st_ino == found.inode
    assert reopen(found) is None  # its pid is gone: /proc no longer leads there
    table.forget("shop_web")
    assert table.path("shop_web") is None and "shop_web" not in table


@root
def test_the_table_opens_a_cni_netns_path_and_refuses_what_is_not_a_netns(pod_netns, tmp_path):
    name, _ = pod_netns("10.254.9.2")
    table = PodNetnsTable()
    try:
        assert table.open("shop_web", netns_path(name)) == inode(name)
        assert os.stat(table.path("shop_web")).st_ino == inode(name)
        assert table.open("shop_web", netns_path(name)) == inode(name)  # replaced, not leaked
        assert table.keys() == {"shop_web"}
    finally:
        table.close()
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a namespace"):
        open_netns(str(tmp_path / "file"))
    with pytest.raises(ValueError, match="not a network namespace"):
        open_netns("/proc/self/ns/uts")
    with pytest.raises(FileNotFoundError):
        open_netns(str(tmp_path / "missing"))
