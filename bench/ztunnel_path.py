"""What ztunnel costs on the wire, on this machine (root): the ambient path against plain TCP.

One lab (`ambient lab up`, 2 nodes, lab `bench-zt` under a private AMBIENT_LAB_ROOT) with two
namespaces, each with a server pod on node-1 and a client pod on node-0:

- `zt-direct`, not in the mesh: plain TCP, client pod -> node-0 -> fabric -> node-1 -> server pod;
- `zt-ambient`, labelled `istio.io/dataplane-mode: ambient`: the same hops, but the client's
  connections are captured (eBPF) onto node-0's ztunnel, carried as HBONE (HTTP/2 CONNECT over mTLS)
  across the fabric to node-1's ztunnel, which connects to the server app.

The server and the load generator are one small C program (`ZTBENCH_C`, compiled with the system
`cc` into the lab's config directory at start, which is the containers' working directory), so
neither is the bottleneck: the server pods run `./ztbench serve` (epoll, one thread) and the client
runs with `ambient exec` in the client pod. Its protocol is its own: the client sends 100 bytes, the
server answers 100 bytes. The client connects to the server pod's IP; in the ambient namespace that
connection is captured transparently. Figures, for each path:

1. Keep-alive requests: --rr-conns (16) connections, each with one request outstanding at a time
   (send 100 B, wait for the 100 B answer, send the next), for --rr-seconds (5) after 0.5 s untimed;
   requests per second, p50/p99 latency of one request.
2. New connections: one request per connection (connect, 100 B each way, the server closes first,
   then the client), --conn-workers (4) threads, --conn-count (5000) connections or --conn-seconds (4),
   whichever ends first, after 50 untimed; connections per second, p50/p99 of one whole connection.
3. Bulk: one TCP connection sends --bulk-mib (512) MiB or for --bulk-seconds (5), whichever ends
   first, to a sink that discards; Gbit/s measured at the receiver (first byte to end of stream).
4. The two ztunnels' CPU (utime+stime from /proc/<pid>/stat, pids from `ambient lab status -o json`)
   during each run, as CPU seconds per 1,000 keep-alive requests (warm-up requests included: all the
   ztunnels carried), per 1,000 new connections and per GiB; their RSS (VmRSS) idle, after `lab up`
   and before any traffic, and after the load, with the peak (VmHWM).

Before the rounds, one untimed warm-up of each figure and path (the first ambient connection waits for
ztunnel's certificates and opens the HBONE pool). Then --rounds (3) rounds; each round runs every
figure on both paths back to back, the direct path first in even rounds and the ambient one first in
odd rounds. Reported: the median over the rounds of each figure, and the ratio ambient/direct. Every
process shares the machine's cores (2 here): client, server, and on the ambient path both ztunnels,
so the ambient figures include the ztunnels taking CPU from the load generator and the server.

Every load is bounded in count and time and stays inside the lab's namespaces; the whole run takes
about 1.5 minutes (under 5). The lab is always taken down, also on failure or SIGTERM (`ambient lab
down`; should that command fail, SIGTERM to the lab's daemon); on a failure, the lab's logs are first
copied to a directory whose path is printed, with the end of each ztunnel's log. Writes
bench/results/ztunnel-<date>.json (machine, parameters, every round's raw figures, the medians, the
ratios) and prints a table. Not part of `make test`.
Run: `make bench-ztunnel` (or `sudo .venv/bin/python bench/ztunnel_path.py --rounds 5`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB = "bench-zt"
PATHS = {"direct": "zt-direct", "ambient": "zt-ambient"}  # path -> Kubernetes namespace
KEEPALIVE_PORT, ONESHOT_PORT, SINK_PORT = 8080, 8081, 8082
RR_WARMUP_S = 0.5  # untimed keep-alive requests at the start of each run
CONN_WARMUP = 50  # untimed new connections at the start of each run
COMMAND_TIMEOUT = 120  # lab up, status, down
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOG_TAIL_LINES = 40

# `serve`: listeners on 8080 (keep-alive: every 100 bytes received are answered with 100 bytes),
# 8081 (one-shot: 100 bytes answered with 100 bytes, then the server closes) and 8082 (sink: counts
# bytes from the first to the end of the stream, then answers "<bytes> <ns>\n" and closes); epoll,
# one thread. `rr`, `conn` and `bulk` are the clients of the three; each prints one JSON object, or
# a message on stderr and exits 1 on the first error (refused, reset, short answer, 10 s stall).
ZTBENCH_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG 100
#define STALL_NS 10000000000LL
#define CHUNK (256 * 1024)

enum kind { L_RR, L_ONE, L_SINK, C_RR, C_ONE, C_SINK };

struct conn {
	int fd, kind;
	size_t pending;
	long long bytes, first_ns;
};

static long long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void __attribute__((noreturn)) fail(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, strerror(errno));
	exit(1);
}

static int by_value(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return (x > y) - (x < y);
}

static void nodelay(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void timeouts(int fd, int seconds)
{
	struct timeval tv = { .tv_sec = seconds };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* -- server */

static void watch(int ep, int fd, int kind)
{
	struct conn *c = calloc(1, sizeof(*c));
	struct epoll_event ev = { .events = EPOLLIN };

	if (!c)
		fail("calloc");
	c->fd = fd;
	c->kind = kind;
	ev.data.ptr = c;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
		fail("epoll_ctl");
}

static void drop(struct conn *c)
{
	close(c->fd); /* also leaves the epoll set */
	free(c);
}

static int listen_on(int port)
{
	struct sockaddr_in at = { .sin_family = AF_INET, .sin_port = htons(port) };
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(fd, (struct sockaddr *)&at, sizeof(at)) || listen(fd, 4096))
		fail("listen");
	return fd;
}

/* Reads until EAGAIN; answers, counts or drops. */
static void serve_conn(struct conn *c, char *buf, const char *reply)
{
	for (;;) {
		ssize_t n = read(c->fd, buf, c->kind == C_SINK ? (1 << 20) : 4096);

		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n <= 0) {
			if (n == 0 && c->kind == C_SINK) {
				char line[64];
				int len = snprintf(line, sizeof(line), "%lld %lld\n", c->bytes,
						   c->bytes ? now_ns() - c->first_ns : 0);

				send(c->fd, line, len, MSG_NOSIGNAL);
			}
			drop(c);
			return;
		}
		if (c->kind == C_SINK) {
			if (!c->bytes)
				c->first_ns = now_ns();
			c->bytes += n;
			continue;
		}
		for (c->pending += n; c->pending >= MSG; c->pending -= MSG) {
			if (send(c->fd, reply, MSG, MSG_NOSIGNAL) != MSG) {
				drop(c);
				return;
			}
			if (c->kind == C_ONE) {
				drop(c);
				return;
			}
		}
	}
}

static void __attribute__((noreturn)) serve(void)
{
	int ep = epoll_create1(0), ports[] = { 8080, 8081, 8082 };
	char *buf = malloc(1 << 20), reply[MSG];
	struct epoll_event events[64];

	if (ep < 0 || !buf)
		fail("epoll_create1");
	memset(reply, 'r', sizeof(reply));
	for (int i = 0; i < 3; i++)
		watch(ep, listen_on(ports[i]), L_RR + i);
	for (;;) {
		int n = epoll_wait(ep, events, 64, -1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			fail("epoll_wait");
		for (int i = 0; i < n; i++) {
			struct conn *c = events[i].data.ptr;

			if (c->kind > L_SINK) {
				serve_conn(c, buf, reply);
				continue;
			}
			for (;;) {
				int fd = accept4(c->fd, NULL, NULL, SOCK_NONBLOCK);

				if (fd < 0) {
					if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
						perror("accept4");
					break;
				}
				if (c->kind != L_SINK)
					nodelay(fd);
				watch(ep, fd, c->kind + 3);
			}
		}
	}
}

/* -- clients */

static struct sockaddr_in target(const char *ip, int port)
{
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };

	if (inet_pton(AF_INET, ip, &to.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", ip);
		exit(2);
	}
	return to;
}

static int dial(const struct sockaddr_in *to, char *err, size_t errlen)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);

	if (s < 0 || connect(s, (const struct sockaddr *)to, sizeof(*to))) {
		snprintf(err, errlen, "connect: %s", strerror(errno));
		if (s >= 0)
			close(s);
		return -1;
	}
	timeouts(s, 10);
	return s;
}

static void quantiles(uint32_t *lat, long n, const char *prefix)
{
	qsort(lat, n, sizeof(*lat), by_value);
	printf("\"%sp50_us\": %.1f, \"%sp90_us\": %.1f, \"%sp99_us\": %.1f, \"%smax_us\": %.1f", prefix,
	       n ? lat[n / 2] / 1e3 : 0.0, prefix, n ? lat[n * 9 / 10] / 1e3 : 0.0, prefix,
	       n ? lat[n * 99 / 100] / 1e3 : 0.0, prefix, n ? lat[n - 1] / 1e3 : 0.0);
}

static uint32_t clamp32(long long ns)
{
	return ns > 0xffffffffLL ? 0xffffffffu : (uint32_t)ns;
}

struct rrconn {
	int fd;
	size_t got;
	long long sent_ns, done;
};

/* conns keep-alive connections, one request outstanding on each, for warmup_ms then seconds. */
static int rr(const char *ip, int port, int conns, double seconds, int warmup_ms, long max)
{
	struct sockaddr_in to = target(ip, port);
	struct rrconn *cs = calloc(conns, sizeof(*cs));
	uint32_t *lat = malloc(max * sizeof(*lat));
	struct epoll_event events[64];
	char req[MSG], buf[4096], err[128];
	long measured = 0, all = 0;
	int ep = epoll_create1(0), outstanding = conns;
	long long start, warm_end, end, last = 0, progress;

	if (!cs || !lat || ep < 0)
		fail("setup");
	memset(req, 'q', sizeof(req));
	for (int i = 0; i < conns; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = i };

		cs[i].fd = dial(&to, err, sizeof(err));
		if (cs[i].fd < 0) {
			fprintf(stderr, "connection %d to %s:%d: %s\n", i, ip, port, err);
			return 1;
		}
		nodelay(cs[i].fd);
		fcntl(cs[i].fd, F_SETFL, O_NONBLOCK);
		if (epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev))
			fail("epoll_ctl");
	}
	start = progress = now_ns();
	warm_end = start + warmup_ms * 1000000LL;
	end = warm_end + (long long)(seconds * 1e9);
	for (int i = 0; i < conns; i++) {
		cs[i].sent_ns = now_ns();
		if (send(cs[i].fd, req, MSG, MSG_NOSIGNAL) != MSG)
			fail("send");
	}
	while (outstanding > 0) {
		int n = epoll_wait(ep, events, 64, 1000);
		long long t = now_ns();

		if (n < 0 && errno != EINTR)
			fail("epoll_wait");
		if (n <= 0 && t - progress > STALL_NS) {
			fprintf(stderr, "no answer on %d connection(s) for %.0f s, after %ld requests\n", outstanding,
				STALL_NS / 1e9, all);
			return 1;
		}
		for (int i = 0; i < n; i++) {
			struct rrconn *c = &cs[events[i].data.u32];
			ssize_t r;

			while ((r = read(c->fd, buf, MSG - c->got)) > 0) {
				c->got += r;
				if (c->got < MSG)
					continue;
				t = now_ns();
				c->got = 0;
				c->done++;
				all++;
				progress = t;
				if (c->sent_ns >= warm_end && c->sent_ns < end) {
					lat[measured++] = clamp32(t - c->sent_ns);
					last = t;
				}
				if (t >= end || measured >= max) {
					outstanding--;
					break;
				}
				c->sent_ns = t;
				if (send(c->fd, req, MSG, MSG_NOSIGNAL) != MSG)
					fail("send");
			}
			if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
				fprintf(stderr, "connection %ld to %s:%d after %lld answers: %s\n",
					(long)(c - cs), ip, port, c->done, r == 0 ? "closed by the peer" : strerror(errno));
				return 1;
			}
		}
	}
	for (int i = 0; i < conns; i++)
		close(cs[i].fd);
	double elapsed = measured ? (last - warm_end) / 1e9 : 0;
	printf("{\"requests\": %ld, \"seconds\": %.3f, \"rps\": %.1f, \"all_requests\": %ld, \"connections\": %d, ",
	       measured, elapsed, elapsed > 0 ? measured / elapsed : 0.0, all, conns);
	quantiles(lat, measured, "");
	printf("}\n");
	return 0;
}

struct conn_job {
	struct sockaddr_in to;
	long count, next, done;
	long long deadline;
	uint32_t *lat;
	int stop;
	char err[192];
	pthread_mutex_t lock;
};

/* One request on a new connection: connect, 100 B out, 100 B and the server's FIN in, close. */
static int one_shot(const struct sockaddr_in *to, char *err, size_t errlen)
{
	char req[MSG], buf[MSG + 1];
	size_t got = 0;
	ssize_t n;
	int s = dial(to, err, errlen);

	if (s < 0)
		return -1;
	nodelay(s);
	memset(req, 'q', sizeof(req));
	if (send(s, req, MSG, MSG_NOSIGNAL) != MSG) {
		snprintf(err, errlen, "send: %s", strerror(errno));
		close(s);
		return -1;
	}
	while ((n = recv(s, buf, sizeof(buf), 0)) > 0)
		got += n;
	if (n < 0 || got != MSG) {
		snprintf(err, errlen, "%zu bytes of the answer, then %s", got, n < 0 ? strerror(errno) : "closed");
		close(s);
		return -1;
	}
	close(s);
	return 0;
}

static void *conn_worker(void *arg)
{
	struct conn_job *job = arg;
	char err[128];

	for (;;) {
		long i;
		long long t0 = now_ns();

		if (t0 >= job->deadline || __atomic_load_n(&job->stop, __ATOMIC_RELAXED))
			break;
		i = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
		if (i >= job->count)
			break;
		if (one_shot(&job->to, err, sizeof(err))) {
			pthread_mutex_lock(&job->lock);
			if (!job->stop)
				snprintf(job->err, sizeof(job->err), "connection %ld: %s", i, err);
			job->stop = 1;
			pthread_mutex_unlock(&job->lock);
			break;
		}
		job->lat[i] = clamp32(now_ns() - t0);
		__atomic_fetch_add(&job->done, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static int conn(const char *ip, int port, long count, double seconds, int workers, int warmup)
{
	static struct conn_job job;
	pthread_t threads[64];
	char err[128];
	long long start;

	job.to = target(ip, port);
	job.count = count;
	job.lat = malloc(count * sizeof(*job.lat));
	pthread_mutex_init(&job.lock, NULL);
	if (!job.lat || workers < 1 || workers > 64)
		fail("setup");
	for (int i = 0; i < warmup; i++)
		if (one_shot(&job.to, err, sizeof(err))) {
			fprintf(stderr, "warm-up connection %d to %s:%d: %s\n", i, ip, port, err);
			return 1;
		}
	start = now_ns();
	job.deadline = start + (long long)(seconds * 1e9);
	for (int i = 0; i < workers; i++)
		if (pthread_create(&threads[i], NULL, conn_worker, &job))
			fail("pthread_create");
	for (int i = 0; i < workers; i++)
		pthread_join(threads[i], NULL);
	double elapsed = (now_ns() - start) / 1e9;
	if (job.stop) {
		fprintf(stderr, "to %s:%d after %ld connections: %s\n", ip, port, job.done, job.err);
		return 1;
	}
	printf("{\"connections\": %ld, \"seconds\": %.3f, \"conn_per_s\": %.1f, \"all_connections\": %ld, "
	       "\"workers\": %d, ", job.done, elapsed, job.done / elapsed, job.done + warmup, workers);
	quantiles(job.lat, job.done, "");
	printf("}\n");
	return 0;
}

/* One connection sends max_bytes or for seconds, then half-closes and reads the sink's count. */
static int bulk(const char *ip, int port, long long max_bytes, double seconds)
{
	struct sockaddr_in to = target(ip, port);
	char *buf = malloc(CHUNK), err[128], report[128];
	long long sent = 0, got_bytes = -1, got_ns = -1, start, send_end;
	size_t have = 0;
	ssize_t n;
	int s = dial(&to, err, sizeof(err));

	if (s < 0) {
		fprintf(stderr, "bulk to %s:%d: %s\n", ip, port, err);
		return 1;
	}
	if (!buf)
		fail("malloc");
	memset(buf, 'b', CHUNK);
	start = now_ns();
	while (sent < max_bytes && now_ns() - start < (long long)(seconds * 1e9)) {
		long long left = max_bytes - sent;

		n = send(s, buf, left < CHUNK ? left : CHUNK, MSG_NOSIGNAL);
		if (n <= 0) {
			fprintf(stderr, "bulk to %s:%d after %lld bytes: %s\n", ip, port, sent,
				n < 0 ? strerror(errno) : "send returned 0");
			return 1;
		}
		sent += n;
	}
	send_end = now_ns();
	shutdown(s, SHUT_WR);
	timeouts(s, 30);
	while (have < sizeof(report) - 1 && (n = recv(s, report + have, sizeof(report) - 1 - have, 0)) > 0)
		have += n;
	report[have] = 0;
	if (sscanf(report, "%lld %lld", &got_bytes, &got_ns) != 2 || got_bytes != sent || got_ns <= 0) {
		fprintf(stderr, "bulk to %s:%d: sent %lld bytes, the sink answered \"%s\" (%s)\n", ip, port, sent,
			report, have ? "count differs" : (n < 0 ? strerror(errno) : "no answer"));
		return 1;
	}
	close(s);
	printf("{\"bytes\": %lld, \"receiver_seconds\": %.3f, \"gbit_s\": %.3f, \"sender_seconds\": %.3f, "
	       "\"sender_gbit_s\": %.3f, \"total_seconds\": %.3f}\n", got_bytes, got_ns / 1e9, got_bytes * 8.0 / got_ns,
	       (send_end - start) / 1e9, sent * 8.0 / (send_end - start), (now_ns() - start) / 1e9);
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc == 2 && !strcmp(argv[1], "serve"))
		serve();
	if (argc == 8 && !strcmp(argv[1], "rr"))
		return rr(argv[2], atoi(argv[3]), atoi(argv[4]), atof(argv[5]), atoi(argv[6]), atol(argv[7]));
	if (argc == 8 && !strcmp(argv[1], "conn"))
		return conn(argv[2], atoi(argv[3]), atol(argv[4]), atof(argv[5]), atoi(argv[6]), atoi(argv[7]));
	if (argc == 6 && !strcmp(argv[1], "bulk"))
		return bulk(argv[2], atoi(argv[3]), atoll(argv[4]), atof(argv[5]));
	fprintf(stderr, "usage: %s serve | rr IP PORT CONNS SECONDS WARMUP_MS MAX_REQUESTS | "
		"conn IP PORT COUNT SECONDS WORKERS WARMUP | bulk IP PORT MAX_BYTES SECONDS\n", argv[0]);
	return 2;
}
"""


class BenchFailure(RuntimeError):
    """A client run failed (refused, reset, short answer, stall) or the lab misbehaved."""


def manifests() -> str:
    docs = []
    for path, namespace in PATHS.items():
        labels = ", labels: {istio.io/dataplane-mode: ambient}" if path == "ambient" else ""
        docs.append(f"""apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}{labels}}}
""")
        docs.append(f"""apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {namespace}, labels: {{app: server}}}}
spec:
  nodeName: node-1
  containers:
  - name: server
    command: [./ztbench, serve]
    ports:
    - {{name: keepalive, containerPort: {KEEPALIVE_PORT}}}
    - {{name: oneshot, containerPort: {ONESHOT_PORT}}}
    - {{name: sink, containerPort: {SINK_PORT}}}
    readinessProbe:
      tcpSocket: {{port: keepalive}}
      periodSeconds: 1
""")
        docs.append(f"""apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {namespace}}}
spec:
  nodeName: node-0
  containers: [{{name: client, command: [sleep, infinity]}}]
""")
    return "---\n".join(docs)


def build(work: Path, config: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) for the server and load generator")
    source, binary = work / "ztbench.c", config / "ztbench"
    source.write_text(ZTBENCH_C)
    subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


def ambient(env: dict, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
    done = subprocess.run([sys.executable, "-m", "mesh", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if done.returncode != 0:
        raise BenchFailure(f"ambient {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def ztunnel_pids(status: dict) -> dict[str, int]:
    pids = {}
    for node in status["nodes"]:
        for component in node["components"]:
            if component["name"].startswith("ztunnel-"):
                pids[component["name"]] = component["pid"]
    if sorted(pids) != ["ztunnel-node-0", "ztunnel-node-1"] or not all(pids.values()):
        raise BenchFailure(f"expected the ztunnels of node-0 and node-1 with their pids, got {pids}")
    for name, pid in pids.items():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"ztunnel" not in cmdline:
            raise BenchFailure(f"pid {pid} of {name} is not a ztunnel: {cmdline}")
    return pids


def cpu_seconds(pid: int) -> float:
    # utime and stime, fields 14 and 15 of /proc/<pid>/stat (all the process's threads), after "(comm)".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mib(pid: int) -> dict:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mib": values["VmRSS"], "peak_rss_mib": values["VmHWM"]}


class Bench:
    def __init__(self, env: dict, binary: Path, servers: dict[str, str], pids: dict[str, int], args) -> None:
        self.env, self.binary, self.servers, self.pids, self.args = env, binary, servers, pids, args

    def client(self, path: str, *command: str, timeout: float) -> dict:
        pod = f"{PATHS[path]}/client"
        argv = [sys.executable, "-m", "mesh", "exec", "--name", LAB, pod, "--", str(self.binary), *command]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchFailure(f"{path}: `ztbench {' '.join(command)}` in {pod} did not end within {timeout:g} s") \
                from None
        if done.returncode != 0:
            raise BenchFailure(f"{path}: `ztbench {' '.join(command)}` in {pod} exited {done.returncode}: "
                               f"{done.stderr.strip()}")
        return json.loads(done.stdout)

    def measure(self, path: str, figure: str) -> dict:
        """One run of one figure on one path, with the ztunnels' CPU seconds during it."""
        a, ip = self.args, self.servers[path]
        if figure == "rr":
            command = ("rr", ip, str(KEEPALIVE_PORT), str(a.rr_conns), str(a.rr_seconds),
                       str(int(RR_WARMUP_S * 1000)), "3000000")
            timeout = a.rr_seconds + RR_WARMUP_S + 40
        elif figure == "conn":
            command = ("conn", ip, str(ONESHOT_PORT), str(a.conn_count), str(a.conn_seconds), str(a.conn_workers),
                       str(CONN_WARMUP))
            timeout = a.conn_seconds + 40
        else:
            command = ("bulk", ip, str(SINK_PORT), str(a.bulk_mib * 1024 * 1024), str(a.bulk_seconds))
            timeout = a.bulk_seconds + 40
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        result = self.client(path, *command, timeout=timeout)
        cpu = {name: round(cpu_seconds(pid) - before[name], 2) for name, pid in self.pids.items()}
        total = sum(cpu.values())
        result["ztunnel_cpu_s"] = {**cpu, "total": round(total, 2)}
        if figure == "rr":
            result["ztunnel_cpu_s_per_1k_requests"] = round(1000 * total / result["all_requests"], 4)
        elif figure == "conn":
            result["ztunnel_cpu_s_per_1k_connections"] = round(1000 * total / result["all_connections"], 4)
        else:
            result["ztunnel_cpu_s_per_gib"] = round(total / (result["bytes"] / 2**30), 3)
        return result


FIGURES = ("rr", "conn", "bulk")
# (label, figure, key, format): the rows of the table, medians over the rounds.
ROWS = (
    ("keep-alive req/s", "rr", "rps", "{:.0f}"),
    ("keep-alive p50 latency (us)", "rr", "p50_us", "{:.0f}"),
    ("keep-alive p99 latency (us)", "rr", "p99_us", "{:.0f}"),
    ("new connections/s", "conn", "conn_per_s", "{:.0f}"),
    ("new connection p50 (us)", "conn", "p50_us", "{:.0f}"),
    ("new connection p99 (us)", "conn", "p99_us", "{:.0f}"),
    ("bulk, 1 stream (Gbit/s)", "bulk", "gbit_s", "{:.2f}"),
    ("ztunnel CPU s / 1k requests", "rr", "ztunnel_cpu_s_per_1k_requests", "{:.3f}"),
    ("ztunnel CPU s / 1k connections", "conn", "ztunnel_cpu_s_per_1k_connections", "{:.3f}"),
    ("ztunnel CPU s / GiB", "bulk", "ztunnel_cpu_s_per_gib", "{:.2f}"),
)


def medians(rounds: list[dict]) -> dict:
    out = {}
    for path in PATHS:
        out[path] = {}
        for figure in FIGURES:
            runs = [r[path][figure] for r in rounds]
            keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
            out[path][figure] = {k: round(statistics.median(run[k] for run in runs), 4) for k in keys}
    return out


def ratios(med: dict) -> dict:
    """ambient/direct of each row but the ztunnels' CPU (none on the direct path: its figure is idle noise)."""
    out = {}
    for _, figure, key, _ in ROWS:
        if key.startswith("ztunnel_cpu"):
            continue
        direct, amb = med["direct"][figure][key], med["ambient"][figure][key]
        out[f"{figure}.{key}"] = round(amb / direct, 4) if direct else None
    return out


def print_table(result: dict) -> None:
    p, med, rat = result["parameters"], result["medians"], result["ratios_ambient_over_direct"]
    print(f"\nztunnel path, 2 nodes (client pod on node-0, server pod on node-1), median of {p['rounds']} rounds; "
          f"keep-alive: {p['rr_conns']} connections x {p['rr_seconds']:g} s, 100 B each way; new connections: "
          f"{p['conn_workers']} workers, up to {p['conn_count']} or {p['conn_seconds']:g} s; bulk: 1 stream, "
          f"{p['bulk_mib']} MiB or {p['bulk_seconds']:g} s")
    print(f"  {'figure':32} {'direct':>10} {'ambient':>10} {'ambient/direct':>15}")
    for label, figure, key, fmt in ROWS:
        d, a, r = med["direct"][figure][key], med["ambient"][figure][key], rat.get(f"{figure}.{key}")
        print(f"  {label:32} {fmt.format(d):>10} {fmt.format(a):>10} {'-' if r is None else f'{r:.3f}':>15}")
    mem = result["ztunnel_memory"]
    for name in sorted(mem["idle"]):
        print(f"  {name} RSS (MiB): idle {mem['idle'][name]['rss_mib']:.1f}, after the load "
              f"{mem['after_load'][name]['rss_mib']:.1f}, peak {mem['after_load'][name]['peak_rss_mib']:.1f}")


def save_logs(state: Path) -> Path | None:
    """Copy the lab's logs before `lab down` removes them; print the end of each ztunnel's log."""
    logs = state / LAB / "logs"
    if not logs.is_dir():
        return None
    kept = Path(tempfile.mkdtemp(prefix="ambient-bench-ztunnel-logs-"))
    shutil.copytree(logs, kept, dirs_exist_ok=True)
    for log in sorted(kept.glob("ztunnel-node-*.log")):
        lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        print(f"--- the end of {log.name}:", *lines, sep="\n", file=sys.stderr)
    return kept


def alive(pid: int) -> bool:
    """Running, not a zombie (PID 1 here may never reap the lab's daemon, which is not our child)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def take_down(env: dict, state: Path) -> bool:
    """`ambient lab down`; if that command fails, SIGTERM to the lab's daemon (the pid in its lab.json,
    checked as `lab down` checks it), which stops its processes and removes its network. True when the
    lab is gone."""
    try:
        ambient(env, "lab", "down", "--name", LAB)
        return True
    except (BenchFailure, subprocess.TimeoutExpired) as exc:
        print(f"`ambient lab down` failed: {exc}", file=sys.stderr)
    try:
        pid = json.loads((state / LAB / "lab.json").read_text())["pid"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError):
        pid, cmdline = None, []
    if pid and b"lab" in cmdline and LAB.encode() in cmdline:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)  # not our child: no wait(); bounded by the deadline
    left = [name for name in (os.listdir("/var/run/netns") if os.path.isdir("/var/run/netns") else [])
            if name.startswith(f"amb-{LAB}.")]
    gone = not (pid and alive(pid)) and not left
    print(f"the lab's daemon {'stopped' if gone else 'did not stop'} on SIGTERM; namespaces left: {left or 'none'}",
          file=sys.stderr)
    return gone


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # through the finally blocks: the lab goes down


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every figure on both paths")
    parser.add_argument("--rr-conns", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--rr-seconds", type=float, default=5.0, help="timed seconds of each keep-alive run")
    parser.add_argument("--conn-count", type=int, default=5000, help="new connections per run, at most")
    parser.add_argument("--conn-seconds", type=float, default=4.0, help="seconds of each new-connection run, at most")
    parser.add_argument("--conn-workers", type=int, default=4, help="threads opening connections")
    parser.add_argument("--bulk-mib", type=int, default=512, help="MiB of each bulk run, at most")
    parser.add_argument("--bulk-seconds", type=float, default=5.0, help="seconds of each bulk run, at most")
    args = parser.parse_args()
    # At the bounds, the rounds and the warm-up stay under 5 minutes with lab up and down. The server
    # closes each new connection first, so the client's ports never wait in TIME_WAIT.
    if not (3 <= args.rounds <= 5 and 1 <= args.rr_conns <= 64 and 1 <= args.rr_seconds <= 5
            and 100 <= args.conn_count <= 5000 and 1 <= args.conn_seconds <= 4 and 1 <= args.conn_workers <= 16
            and 16 <= args.bulk_mib <= 1024 and 1 <= args.bulk_seconds <= 5):
        parser.error("bounds: --rounds 3-5, --rr-conns 1-64, --rr-seconds 1-5, --conn-count 100-5000, "
                     "--conn-seconds 1-4, --conn-workers 1-16, --bulk-mib 16-1024, --bulk-seconds 1-5")
    if os.geteuid() != 0:
        print("the lab needs root", file=sys.stderr)
        return 1
    if not (REPO / "bpf" / "capture.bpf.o").is_file():
        print("needs bpf/capture.bpf.o (`make bpf`)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _terminate)

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ambient-bench-ztunnel-"))
    config, state = work / "config", work / "state"
    config.mkdir()
    env = {**os.environ, "AMBIENT_LAB_ROOT": str(state)}
    lab_started = False
    try:
        binary = build(work, config)
        (config / "pods.yaml").write_text(manifests())
        lab_started = True  # from here on `lab down`, even if `up` fails half-way
        start = time.perf_counter()
        ambient(env, "lab", "up", str(config), "--name", LAB, "--nodes", "2", "--timeout", "90", timeout=150)
        lab_up_s = time.perf_counter() - start
        status = json.loads(ambient(env, "lab", "status", "--name", LAB, "-o", "json"))
        pods = {(p["namespace"], p["name"]): p for p in status["pods"]}
        servers = {}
        for path, namespace in PATHS.items():
            server, client = pods[(namespace, "server")], pods[(namespace, "client")]
            if (server["node"], client["node"]) != ("node-1", "node-0") or not server["all_ready"]:
                raise BenchFailure(f"{namespace}: server {server['node']} ready={server['all_ready']}, "
                                   f"client {client['node']}")
            servers[path] = server["ip"]
        pids = ztunnel_pids(status)
        idle = {name: memory_mib(pid) for name, pid in pids.items()}
        bench = Bench(env, binary, servers, pids, args)

        warmup = {path: {figure: bench.measure(path, figure) for figure in FIGURES} for path in PATHS}
        print(f"lab up in {lab_up_s:.1f} s; warm-up done ({time.monotonic() - started:.0f} s)", flush=True)
        rounds = []
        for n in range(args.rounds):
            order = list(PATHS) if n % 2 == 0 else list(PATHS)[::-1]
            one = {path: {} for path in PATHS}
            for figure in FIGURES:
                for path in order:
                    one[path][figure] = bench.measure(path, figure)
            rounds.append(one)
            print(f"round {n + 1}/{args.rounds}: " + "; ".join(
                f"{path} {one[path]['rr']['rps']:.0f} req/s, {one[path]['conn']['conn_per_s']:.0f} conn/s, "
                f"{one[path]['bulk']['gbit_s']:.2f} Gbit/s" for path in PATHS), flush=True)
        after = {name: memory_mib(pid) for name, pid in pids.items()}
        final = json.loads(ambient(env, "lab", "status", "--name", LAB, "-o", "json"))
        if ztunnel_pids(final) != pids:
            raise BenchFailure(f"a ztunnel restarted during the run: pids {pids} then {ztunnel_pids(final)}")
    except BaseException as exc:
        if lab_started:
            kept = save_logs(state)
            if kept:
                print(f"{type(exc).__name__}: {exc}\nthe lab's logs are kept in {kept}", file=sys.stderr)
        raise
    finally:
        if not lab_started or take_down(env, state):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"the lab may still be running: `AMBIENT_LAB_ROOT={state} ambient lab down --name {LAB}`, "
                  f"then remove {work}", file=sys.stderr)

    med = medians(rounds)
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "parameters": {"rounds": args.rounds, "rr_conns": args.rr_conns, "rr_seconds": args.rr_seconds,
                       "rr_warmup_s": RR_WARMUP_S, "conn_count": args.conn_count, "conn_seconds": args.conn_seconds,
                       "conn_workers": args.conn_workers, "conn_warmup": CONN_WARMUP, "bulk_mib": args.bulk_mib,
                       "bulk_seconds": args.bulk_seconds, "message_bytes": 100},
        "topology": {"nodes": 2, "client": "node-0", "server": "node-1", "server_ips": servers,
                     "namespaces": PATHS, "lab_up_s": round(lab_up_s, 1)},
        "medians": med,
        "ratios_ambient_over_direct": ratios(med),
        "ztunnel_memory": {"idle": idle, "after_load": after},
        "warmup": warmup,
        "all_runs": rounds,  # every round: {path: {figure: raw figures}}
        "seconds": round(time.monotonic() - started, 1),
    }
    out = REPO / "bench" / "results" / f"ztunnel-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\n{result['seconds']} s in all; written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
