"""What eBPF capture costs, on this machine (root): enrollment time per pod, and time per connection.

Builds its own lab network (`lab.network`, one node) and measures, each bounded in count and time:

1. Enrollment: for each of --pods pods (default 20) in turn, the wall time of `bpf.agent.enroll_pod`
   (load and verify the program, attach it to the pod's netns, pin link and maps in a bpffs, install
   the policy routing), then of `release_pod` for each; and, to see where the time goes, of two parts
   alone: the program load (`PodCapture.load`) and the routing (`install_routing`). --runs times
   (default 3), a fresh bpffs each run; median, p90 and max over every pod of every run.
2. Connections, between pods of the same node. Server A is not enrolled: a listener on 8080. Server B
   is enrolled (`enroll_pod`) and a stand-in for ztunnel's inbound listener (15006, SO_MARK 0x539,
   made inside B's netns) is in its SOCKMAP, so a connection to B:8080 lands there. Server C has only
   enrollment's policy routing (`install_routing`, no program) and a listener on 8080: it tells the
   program's share of the cost from the routing's. Every listener has the same options and the same
   accept loop (accept, send one byte, close), run in its pod's netns. The client is a loop in C in
   the client pod's netns: socket, connect, read the byte and the server's FIN, close, one connection
   after another, --count of them (default 2000, after 100 untimed). --capture-runs rounds (default
   9) of one batch per path, each round starting with the next path; the figures are medians over
   the rounds, and each path's overhead is its difference from the plain batch of the same round.
   Also (unless --no-outbound) an enrolled client whose connections to A:8080 are captured by its own
   program onto a stand-in outbound listener (15001, IP_TRANSPARENT) in its own netns. That path
   never crosses the bridge nor reaches A, so it differs from the plain one by more than capture.
3. The programs' own run time per invocation, from the kernel's BPF run-time statistics
   (BPF_ENABLE_STATS, on only while the connection batches run; no sysctl is changed).

The client and the servers are pinned to CPU 0: each connection's work is then done on one CPU,
one step after another, and batches of one path mostly agree within a few microseconds (with
--split-cpus the servers run on CPU 1: on this 2-vCPU VM, cross-CPU wake-ups make batches differ by
15 us and more, with stalls of milliseconds). Traffic stays
inside the namespaces this script creates; every netns, bpffs mount and BPF object it makes is
removed at the end, also on failure or SIGTERM. Writes bench/results/capture-<date>.json (every run,
and the medians) and prints a table. Not part of `make test`.
Run: `make bench-capture` (or `sudo .venv/bin/python bench/capture.py --pods 20 --count 2000`).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bpf import bpffs, libbpf
from bpf.agent import PodEnrollment, PodTarget, enroll_pod, release_pod
from bpf.capture import OBJECT_PATH, PROXY_MARK, Decision, PodCapture, Slot
from bpf.enrollment import install_routing, remove_routing
from lab import network
from lab.topology import PodPlan, PodSpec, plan_lab

REPO = Path(__file__).resolve().parents[1]
LAB = "bench-capture"
NAMESPACE = "bench"
IP_TRANSPARENT = 19
BPF_STATS_RUN_TIME = 0
APP_PORT, OUTBOUND_PORT, INBOUND_PORT = 8080, 15001, 15006
WARMUP = 100  # untimed connections at the start of each batch
ENROLLMENT_STEPS = ("enroll", "release", "load_only", "routing_only")
BATCH_TIMEOUT = 60  # seconds for one batch of connections; a dropped SYN would otherwise hang
# Below the client's ~28,000 ephemeral ports: no connection repeats the 4-tuple of one that the
# server still holds in TIME_WAIT, which would take another path through the kernel.
MAX_PER_PATH = 25000

# The two sides of a connection, without Python's per-call cost: `serve FD CPU` accepts on an
# inherited listening socket forever (one byte, then close); `connect IP PORT COUNT WARMUP CPU` makes
# COUNT connections one after another and prints their timing as JSON.
LOOP_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set)) {
		perror("sched_setaffinity");
		exit(2);
	}
}

static long long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return (x > y) - (x < y);
}

static int serve(int fd)
{
	for (;;) {
		int c = accept(fd, NULL, NULL);

		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("accept");
			return 1;
		}
		if (send(c, "x", 1, MSG_NOSIGNAL) != 1)
			perror("send");
		close(c);
	}
}

static int connect_loop(const char *ip, int port, int count, int warmup)
{
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
	long long *took = calloc(count, sizeof(*took)), start = 0;
	char byte[16];
	ssize_t n, got;

	if (!took || inet_pton(AF_INET, ip, &to.sin_addr) != 1) {
		fprintf(stderr, "bad address %s or no memory\n", ip);
		return 2;
	}
	for (int i = -warmup; i < count; i++) {
		long long t0 = now_ns();
		int s;

		if (i == 0)
			start = t0;
		s = socket(AF_INET, SOCK_STREAM, 0);
		if (s < 0 || connect(s, (struct sockaddr *)&to, sizeof(to))) {
			fprintf(stderr, "connection %d to %s:%d: %s\n", i, ip, port, strerror(errno));
			return 1;
		}
		/* The byte, then the server's FIN: the client closes second, so its ports never wait
		   in TIME_WAIT (which would slow down the choice of the next one). */
		got = 0;
		while ((n = recv(s, byte, sizeof(byte), 0)) > 0)
			got += n;
		if (n < 0 || got != 1) {
			fprintf(stderr, "connection %d to %s:%d: %zd bytes (%s)\n", i, ip, port, got,
				n < 0 ? strerror(errno) : "closed");
			return 1;
		}
		close(s);
		if (i >= 0)
			took[i] = now_ns() - t0;
	}
	long long total = now_ns() - start;
	qsort(took, count, sizeof(*took), by_value);
	printf("{\"count\": %d, \"total_ns\": %lld, \"p50_ns\": %lld, \"p90_ns\": %lld, \"p99_ns\": %lld, "
	       "\"max_ns\": %lld}\n", count, total, took[count / 2], took[count * 9 / 10],
	       took[count * 99 / 100], took[count - 1]);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "serve")) {
		pin(atoi(argv[3]));
		return serve(atoi(argv[2]));
	}
	if (argc == 7 && !strcmp(argv[1], "connect")) {
		pin(atoi(argv[6]));
		return connect_loop(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
	}
	fprintf(stderr, "usage: %s serve FD CPU | connect IP PORT COUNT WARMUP CPU\n", argv[0]);
	return 2;
}
"""


class Terminated(SystemExit):
    """SIGTERM: the run stops at the next step, and everything it made is removed on the way out."""


_signals: list[int] = []


def _note_signal(signum, frame) -> None:
    # Not raised from here: an exception raised wherever the signal lands can be swallowed there
    # (pyroute2's asyncio core does), so each step checks instead; a step takes well under a second.
    _signals.append(signum)


def stop_if_terminated() -> None:
    if _signals:
        raise Terminated(128 + _signals[0])


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary_ms(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"median_ms": round(statistics.median(ms), 3), "p90_ms": round(nearest_rank(ms, 0.9), 3),
            "max_ms": round(max(ms), 3)}


def target(pod: PodPlan) -> PodTarget:
    return PodTarget(f"bench-{pod.name}", pod.namespace, pod.name, "default", str(pod.ip))


# -- 1. enrollment


def enrollment_run(pods: list[PodPlan], mount: Path) -> dict:
    """Enroll every pod, then release every pod, timing each call; then two parts of enrolling alone:
    the program load (and verification), and the policy routing."""
    held: dict[str, tuple[PodEnrollment, PodPlan]] = {}
    enroll, release, load, routing = [], [], [], []
    with ExitStack() as cleanup:
        bpffs.ensure_mounted(mount)
        cleanup.callback(bpffs.unmount_under, mount)
        cleanup.callback(release_all, mount, held)  # what is still held if a call below fails
        for pod in pods:
            stop_if_terminated()
            start = time.perf_counter()
            enrollment = enroll_pod(mount, target(pod), pod.netns)
            enroll.append(time.perf_counter() - start)
            held[pod.name] = (enrollment, pod)
        for pod in pods:
            stop_if_terminated()
            enrollment, _ = held.pop(pod.name)
            start = time.perf_counter()
            release_pod(mount, enrollment, pod.netns)
            release.append(time.perf_counter() - start)
        for pod in pods:
            stop_if_terminated()
            start = time.perf_counter()
            capture = PodCapture.load(str(pod.ip))
            load.append(time.perf_counter() - start)
            capture.close()
        for pod in pods:
            stop_if_terminated()
            try:
                start = time.perf_counter()
                install_routing(pod.netns, str(pod.ip))
                routing.append(time.perf_counter() - start)
            finally:
                remove_routing(pod.netns)
    timed = dict(zip(ENROLLMENT_STEPS, (enroll, release, load, routing), strict=True))
    return {**{key: summary_ms(seconds) for key, seconds in timed.items()},
            **{f"{key}_ms": [round(t * 1000, 3) for t in seconds] for key, seconds in timed.items()}}


def release_all(mount: Path, held: dict[str, tuple[PodEnrollment, PodPlan]]) -> None:
    with ExitStack() as each:  # every one is released even if one fails
        for enrollment, pod in held.values():
            each.callback(release_pod, mount, enrollment, pod.netns)
    held.clear()


# -- 2. connections


def build_loop(work: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) for the connection loop")
    source, binary = work / "loop.c", work / "loop"
    source.write_text(LOOP_C)
    subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-o", str(binary), str(source)], check=True)
    return binary


def listener(netns: str, port: int, transparent: bool = False) -> socket.socket:
    """A listening socket made inside ``netns``, with the options of ztunnel's (blocking: its fd goes
    to a server process as is)."""
    sock = network.socket_in_netns(netns)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, PROXY_MARK)
        if transparent:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


@contextmanager
def run_time_stats():
    """BPF run-time statistics on (for every program) while the body runs: BPF_ENABLE_STATS holds
    them on for as long as its fd is open."""
    handle = ctypes.CDLL(libbpf.LIBBPF_NAME, use_errno=True)
    enable = handle.bpf_enable_stats
    enable.restype, enable.argtypes = ctypes.c_int, [ctypes.c_int]
    fd = enable(BPF_STATS_RUN_TIME)
    if fd < 0:
        raise libbpf.BpfError(-fd, f"bpf_enable_stats(BPF_STATS_RUN_TIME): {os.strerror(-fd)}")
    try:
        yield
    finally:
        os.close(fd)


def program_stats(prog_id: int) -> dict:
    shown = json.loads(subprocess.run(["bpftool", "prog", "show", "id", str(prog_id), "-j"], check=True,
                                      capture_output=True, text=True).stdout)
    return {"run_time_ns": shown.get("run_time_ns", 0), "run_cnt": shown.get("run_cnt", 0)}


def batch(binary: Path, client: PodPlan, ip: str, port: int, count: int, cpu: int) -> dict:
    done = network.run_in_netns(client.netns, [str(binary), "connect", ip, str(port), str(count), str(WARMUP),
                                               str(cpu)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = done.communicate(timeout=BATCH_TIMEOUT)
    finally:
        if done.poll() is None:
            done.kill()
            done.wait()
    if done.returncode != 0:
        raise RuntimeError(f"connection loop from {client.name} to {ip}:{port} failed: {err.strip()}")
    result = json.loads(out)
    return {"conn_per_s": round(count / (result["total_ns"] / 1e9), 1),
            "us_per_conn": round(result["total_ns"] / count / 1000, 2),
            **{f"{q}_us": round(result[f"{q}_ns"] / 1000, 2) for q in ("p50", "p90", "p99", "max")}}


def connection_bench(plan, work: Path, binary: Path, count: int, runs: int, outbound: bool,
                     split_cpus: bool) -> dict:
    client, server_a, server_b, server_c = (plan.pod(NAMESPACE, name)
                                            for name in ("client", "server-a", "server-b", "server-c"))
    client_cpu, server_cpu = (0, 1) if split_cpus and (os.cpu_count() or 1) >= 2 else (0, 0)
    mount = work / "bpf-connections"
    enrolled: dict[str, tuple[PodEnrollment, PodPlan]] = {}
    with ExitStack() as cleanup:  # undone in reverse: servers, listeners, enrollments, the bpffs
        bpffs.ensure_mounted(mount)
        cleanup.callback(bpffs.unmount_under, mount)
        cleanup.callback(release_all, mount, enrolled)

        def serve(pod: PodPlan, sock: socket.socket) -> None:
            cleanup.callback(sock.close)
            server = network.run_in_netns(pod.netns, [str(binary), "serve", str(sock.fileno()), str(server_cpu)],
                                          pass_fds=(sock.fileno(),))
            cleanup.callback(server.wait)
            cleanup.callback(server.kill)

        def enroll(name: str, pod: PodPlan, slot: Slot, sock: socket.socket) -> None:
            enrolled[name] = (enroll_pod(mount, target(pod), pod.netns), pod)
            enrolled[name][0].capture.set_listener(slot, sock)

        serve(server_a, listener(server_a.netns, APP_PORT))
        install_routing(server_c.netns, str(server_c.ip))  # enrollment's policy routing, no program
        cleanup.callback(remove_routing, server_c.netns)
        serve(server_c, listener(server_c.netns, APP_PORT))
        inbound = listener(server_b.netns, INBOUND_PORT)
        serve(server_b, inbound)
        enroll("inbound", server_b, Slot.INBOUND, inbound)
        # name: (client pod, destination) of each path; every one of them to port 8080.
        paths = {"plain": (client, str(server_a.ip)), "routing_only": (client, str(server_c.ip)),
                 "inbound_captured": (client, str(server_b.ip))}
        if outbound:
            client_out = plan.pod(NAMESPACE, "client-out")
            outbound_listener = listener(client_out.netns, OUTBOUND_PORT, transparent=True)
            serve(client_out, outbound_listener)
            enroll("outbound", client_out, Slot.OUTBOUND, outbound_listener)
            paths["outbound_captured"] = (client_out, str(server_a.ip))

        prog_ids = {name: e.capture.link.info().prog_id for name, (e, _) in enrolled.items()}
        all_runs: dict[str, list[dict]] = {name: [] for name in paths}
        with run_time_stats():
            before = {name: program_stats(prog_id) for name, prog_id in prog_ids.items()}
            names = list(paths)
            for run in range(runs):  # every path once per round, each round starting one path later
                for name in names[run % len(names):] + names[:run % len(names)]:
                    stop_if_terminated()
                    source, ip = paths[name]
                    all_runs[name].append(batch(binary, source, ip, APP_PORT, count, client_cpu))
            after = {name: program_stats(prog_id) for name, prog_id in prog_ids.items()}
        counters = {name: {d.name.lower(): n for d, n in e.capture.counters().items() if n}
                    for name, (e, _) in enrolled.items()}

    connections = runs * (count + WARMUP)
    for name, decision in (("inbound", Decision.INBOUND), ("outbound", Decision.OUTBOUND)):
        if name in counters and counters[name].get(decision.name.lower(), 0) < connections:
            raise RuntimeError(f"the {name} program steered {counters[name]} connections, not {connections}")
    medians = {name: {key: round(statistics.median(run[key] for run in batches), 2) for key in batches[0]}
               for name, batches in all_runs.items()}
    programs = {}
    for name in prog_ids:
        cnt = after[name]["run_cnt"] - before[name]["run_cnt"]
        ns = after[name]["run_time_ns"] - before[name]["run_time_ns"]
        programs[name] = {"run_cnt": cnt, "run_time_ns": ns, "ns_per_run": round(ns / cnt, 1) if cnt else None}
    overhead = {}  # against the plain batch of the same round, so that drift over the run cancels out
    for name, batches in all_runs.items():
        if name == "plain":
            continue
        mean, p50 = ([b[key] - a[key] for a, b in zip(all_runs["plain"], batches, strict=True)]
                     for key in ("us_per_conn", "p50_us"))
        overhead[name] = {
            "us_per_conn": round(statistics.median(mean), 2),
            "us_per_conn_range": [round(min(mean), 2), round(max(mean), 2)],
            "p50_us": round(statistics.median(p50), 2),
            "rounds_slower": sum(d > 0 for d in mean),
            "percent": round(100 * statistics.median(mean) / medians["plain"]["us_per_conn"], 1),
        }
    return {"placement": "client and servers are pods of the same node (one bridge hop)",
            "cpus": {"client": client_cpu, "servers": server_cpu},
            "medians": medians, "overhead_vs_plain": overhead, "programs": programs,
            "counters": counters, "all_runs": all_runs}


# -- report


def print_report(result: dict) -> None:
    e, c = result["enrollment"], result["connections"]
    p = result["parameters"]
    print(f"\nenrollment, 1 node, {p['pods']} pods one after another, {p['runs']} runs "
          f"(wall time per pod, ms, over all {p['pods'] * p['runs']}):")
    print(f"  {'':14} {'median':>8} {'p90':>8} {'max':>8}")
    for key, label in (("enroll", "enroll_pod"), ("release", "release_pod"), ("load_only", "  load only"),
                       ("routing_only", "  routing only")):
        s = e["all_pods"][key]
        print(f"  {label:14} {s['median_ms']:8.2f} {s['p90_ms']:8.2f} {s['max_ms']:8.2f}")
    rounds = p["capture_runs"]
    print(f"\nnew connections between pods of one node, {p['count']} per batch, {rounds} rounds of one batch "
          f"per path (medians over the rounds; client and servers on CPU {c['cpus']['client']} and "
          f"{c['cpus']['servers']}):")
    print(f"  {'path':18} {'conn/s':>7} {'us/conn':>8} {'p50 us':>7} {'p99 us':>7}   vs plain, same round: "
          f"us/conn (range), p50, rounds slower")
    for name, m in c["medians"].items():
        o = c["overhead_vs_plain"].get(name)
        low, high = o["us_per_conn_range"] if o else (0, 0)
        delta = (f"{o['us_per_conn']:+.2f} ({low:+.2f} to {high:+.2f}), {o['p50_us']:+.2f}, "
                 f"{o['rounds_slower']}/{rounds}") if o else ""
        print(f"  {name:18} {m['conn_per_s']:7.0f} {m['us_per_conn']:8.2f} {m['p50_us']:7.2f} {m['p99_us']:7.2f}   "
              f"{delta}")
    for name, prog in c["programs"].items():
        print(f"  {name} sk_lookup program: {prog['run_cnt']} runs, {prog['ns_per_run']} ns each (BPF run-time stats)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20, help="pods enrolled one after another, per run")
    parser.add_argument("--runs", type=int, default=3, help="enrollment runs")
    parser.add_argument("--count", type=int, default=2000, help="timed connections per batch")
    parser.add_argument("--capture-runs", type=int, default=9, help="rounds of one batch per path")
    parser.add_argument("--no-outbound", dest="outbound", action="store_false",
                        help="skip the captured outbound path")
    parser.add_argument("--split-cpus", action="store_true", help="servers on CPU 1, the client on CPU 0")
    args = parser.parse_args()
    if not (1 <= args.pods <= 200 and 1 <= args.runs <= 20 and 100 <= args.count <= 4000
            and 3 <= args.capture_runs <= 11 and args.capture_runs * (args.count + WARMUP) <= MAX_PER_PATH):
        parser.error(f"bounds: --pods 1-200, --runs 1-20, --count 100-4000, --capture-runs 3-11, and at most "
                     f"{MAX_PER_PATH} connections per path in all")
    if os.geteuid() != 0:
        print("network namespaces and eBPF need root", file=sys.stderr)
        return 1
    if not OBJECT_PATH.is_file() or shutil.which("bpftool") is None:
        print(f"needs {OBJECT_PATH.relative_to(REPO)} (`make bpf`) and bpftool", file=sys.stderr)
        return 1
    if network.lab_netns(LAB):
        print(f"namespaces of lab {LAB!r} exist already (an earlier run was killed?): {network.lab_netns(LAB)}; "
              "remove them with `ip netns del`", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _note_signal)

    specs = [PodSpec(NAMESPACE, f"pod-{i}", 0) for i in range(args.pods)]
    specs += [PodSpec(NAMESPACE, name, 0) for name in ("client", "server-a", "server-b", "server-c", "client-out")]
    plan = plan_lab(LAB, specs, 1)
    work = Path(tempfile.mkdtemp(prefix="ambient-bench-capture-"))
    started = time.monotonic()
    try:
        binary = build_loop(work)
        libbpf.lib()  # loaded once, before the first timed call
        network.create(plan)
        stop_if_terminated()
        pods = [plan.pod(NAMESPACE, f"pod-{i}") for i in range(args.pods)]
        enrollment_runs = [enrollment_run(pods, work / f"bpf-enroll-{run}") for run in range(args.runs)]
        connections = connection_bench(plan, work, binary, args.count, args.capture_runs, args.outbound,
                                       args.split_cpus)
    finally:
        try:
            network.destroy(LAB)
        finally:
            bpffs.unmount_under(work)
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "parameters": {"pods": args.pods, "runs": args.runs, "count": args.count, "warmup": WARMUP,
                       "capture_runs": args.capture_runs, "outbound": args.outbound,
                       "split_cpus": args.split_cpus},
        "enrollment": {
            "all_pods": {key: summary_ms([ms / 1000 for run in enrollment_runs for ms in run[f"{key}_ms"]])
                         for key in ENROLLMENT_STEPS},
            "all_runs": enrollment_runs,
        },
        "connections": connections,
        "seconds": round(time.monotonic() - started, 1),
    }
    out = REPO / "bench" / "results" / f"capture-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"\n{result['seconds']} s in all; written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
