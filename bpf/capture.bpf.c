// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Traffic capture for one enrolled pod (DESIGN.md section 5): an sk_lookup program attached to the
 * pod's network namespace. For each new TCP connection that reaches a local socket lookup in the pod,
 * it picks one of ztunnel's three listeners, held in the `listeners` SOCKMAP:
 *
 *   from the pod, not to the pod itself      -> outbound   (slot 0, 15001)
 *   to the pod IP, on the HBONE port         -> HBONE      (slot 2, 15008)
 *   to the pod IP, any other port            -> inbound    (slot 1, 15006)
 *
 * Untouched (the normal socket lookup goes on): anything not TCP over IPv4, loopback addresses, the
 * pod talking to itself, a 4-tuple in the `bypass` map (ztunnel's own connection to the app, made with
 * the client's source IP), and every connection while `config.enabled` is 0.
 *
 * Fail closed: when the chosen listener is not in the map (ztunnel down or restarting), the
 * connection is dropped unless `config.fail_open` is set; it never reaches the app uncaptured.
 * Every decision is counted in the per-CPU `counters` array.
 *
 * Outbound packets only reach sk_lookup because the node agent routes the pod's TCP to a local route
 * (table 100: local 0.0.0.0/0 dev lo), while ztunnel's own sockets carry SO_MARK 0x539 and take the
 * main table.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef AF_INET
#define AF_INET 2
#endif

enum listener_slot {
	SLOT_OUTBOUND = 0,
	SLOT_INBOUND = 1,
	SLOT_HBONE = 2,
	SLOT_COUNT = 3,
};

/* Indexes of `counters`; mesh/bpf exposes the same names. */
enum decision {
	DECISION_OUTBOUND = 0,
	DECISION_INBOUND = 1,
	DECISION_HBONE = 2,
	DECISION_PASS_NOT_TCP4 = 3,
	DECISION_PASS_LOOPBACK = 4,
	DECISION_PASS_SELF = 5,
	DECISION_PASS_BYPASS = 6,
	DECISION_PASS_DISABLED = 7,
	DECISION_PASS_OTHER = 8,
	DECISION_DROP_NO_LISTENER = 9,
	DECISION_PASS_NO_LISTENER = 10,
	DECISION_COUNT = 11,
};

struct pod_config {
	__u32 pod_ip;     /* network byte order */
	__u16 hbone_port; /* host byte order */
	__u8 enabled;
	__u8 fail_open;
};

struct bypass_key {
	__u32 remote_ip; /* network byte order, as in bpf_sk_lookup */
	__u32 local_ip;
	__u16 remote_port; /* host byte order */
	__u16 local_port;  /* host byte order */
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, SLOT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pod_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct bypass_key);
	__type(value, __u8);
} bypass SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DECISION_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int count(__u32 decision, int verdict)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &decision);

	if (value)
		*value += 1; /* per-CPU: no atomics needed */
	return verdict;
}

static __always_inline int is_loopback(__u32 ip_be)
{
	return (bpf_ntohl(ip_be) >> 24) == 127;
}

static __always_inline int steer(struct bpf_sk_lookup *ctx, const struct pod_config *cfg, __u32 slot,
				 __u32 decision)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&listeners, &slot);
	long err;

	if (!sk) {
		if (cfg->fail_open)
			return count(DECISION_PASS_NO_LISTENER, SK_PASS);
		return count(DECISION_DROP_NO_LISTENER, SK_DROP);
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		if (cfg->fail_open)
			return count(DECISION_PASS_NO_LISTENER, SK_PASS);
		return count(DECISION_DROP_NO_LISTENER, SK_DROP);
	}
	return count(decision, SK_PASS);
}

SEC("sk_lookup")
int capture(struct bpf_sk_lookup *ctx)
{
	__u32 zero = 0;
	struct pod_config *cfg;
	struct bypass_key key = {};

	if (ctx->family != AF_INET || ctx->protocol != IPPROTO_TCP)
		return count(DECISION_PASS_NOT_TCP4, SK_PASS);
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->enabled)
		return count(DECISION_PASS_DISABLED, SK_PASS);
	if (is_loopback(ctx->local_ip4) || is_loopback(ctx->remote_ip4))
		return count(DECISION_PASS_LOOPBACK, SK_PASS);

	if (ctx->remote_ip4 == cfg->pod_ip) {
		if (ctx->local_ip4 == cfg->pod_ip)
			return count(DECISION_PASS_SELF, SK_PASS);
		return steer(ctx, cfg, SLOT_OUTBOUND, DECISION_OUTBOUND);
	}
	if (ctx->local_ip4 != cfg->pod_ip)
		return count(DECISION_PASS_OTHER, SK_PASS);

	key.remote_ip = ctx->remote_ip4;
	key.local_ip = ctx->local_ip4;
	key.remote_port = bpf_ntohs(ctx->remote_port);
	key.local_port = (__u16)ctx->local_port;
	if (bpf_map_lookup_elem(&bypass, &key))
		return count(DECISION_PASS_BYPASS, SK_PASS);
	if (ctx->local_port == cfg->hbone_port)
		return steer(ctx, cfg, SLOT_HBONE, DECISION_HBONE);
	return steer(ctx, cfg, SLOT_INBOUND, DECISION_INBOUND);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
