// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * fastproxy's kernel side: redirect connects aimed at a guarded endpoint to the proxy, and tell
 * the proxy who made them.
 *
 * cgroup/connect4 runs in the caller's context, so it sees the real task: it rewrites the
 * destination to the proxy and stores the caller record in the client socket's storage.
 * sockops publishes that record under the connection's full 4-tuple once the client's source
 * port is known (TCP_CONNECT_CB), and moves it into the accepted socket's own storage when the
 * proxy's side is established (PASSIVE_ESTABLISHED_CB), so the proxy reads it by fd in O(1).
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fastproxy_abi.h"

#define SOCK_STREAM 1
#define SOCK_DGRAM  2

/* Verdicts of cgroup/connect4. */
#define VERDICT_REJECT	0 /* the connect fails with EPERM */
#define VERDICT_PROCEED 1

/* Only the field we read; CO-RE relocates it against the running kernel's BTF. */
struct task_struct {
	__u64 start_boottime;
} __attribute__((preserve_access_index));

/* Set by the loader before load. */
const volatile __u32 fp_proxy_addr = 0; /* net */
const volatile __u16 fp_proxy_port = 0; /* host */
const volatile __u32 fp_self_mark = 0;	/* SO_MARK of the proxy's own sockets */
/* Network namespace of the proxy (0: unknown, no check). */
const volatile __u64 fp_proxy_netns_cookie = 0;
/* 1: a socket in another network namespace passes to the endpoint unguarded (unsafe). */
const volatile __u32 fp_foreign_netns_pass = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_MAX_ENDPOINTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct fp_endpoint_key);
	__type(value, struct fp_endpoint);
} fp_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, int);
	__type(value, struct fp_caller_record);
} fp_callers SEC(".maps");

/* Plain hash maps, not LRU: an entry is never evicted to make room for another caller's. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_HANDOFF_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct fp_tuple);
	__type(value, struct fp_caller_record);
} fp_handoff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_HANDOFF_ROOT_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct fp_tuple);
	__type(value, struct fp_caller_record);
} fp_handoff_root SEC(".maps");

static __always_inline void *handoff_map(__u32 uid)
{
	return uid == 0 ? (void *)&fp_handoff_root : (void *)&fp_handoff;
}

static __always_inline void fill_caller(struct fp_caller_record *rec, struct bpf_sock_addr *ctx,
					__u32 orig_addr, __u16 orig_port)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	rec->tgid = pid_tgid >> 32;
	rec->pid = (__u32)pid_tgid;
	rec->uid = (__u32)uid_gid;
	rec->gid = uid_gid >> 32;
	rec->cgroup_id = bpf_get_current_cgroup_id();
	rec->netns_cookie = bpf_get_netns_cookie(ctx);
	rec->orig_addr = orig_addr;
	rec->orig_port = orig_port;
	rec->flags = FP_RECORD_REDIRECTED;
	rec->start_boottime = 0;
	if (task) {
		rec->start_boottime = task->start_boottime;
		rec->flags |= FP_RECORD_START_TIME;
	}
	bpf_get_current_comm(rec->comm, sizeof(rec->comm));
}

static __always_inline struct fp_endpoint *guarded(__u32 addr, __u16 port)
{
	struct fp_endpoint_key key = {};
	struct fp_endpoint *ep;

	key.addr = addr;
	key.port = port;
	key.proto = IPPROTO_TCP;
	ep = bpf_map_lookup_elem(&fp_endpoints, &key);
	if (!ep || ep->action != FP_ACTION_REDIRECT)
		return 0;
	return ep;
}

/*
 * A TCP connect to a guarded endpoint: record the caller in the socket's storage. Returns
 * VERDICT_PROCEED when the connect may go on (to be redirected by the caller, or untouched
 * for the proxy's own sockets), VERDICT_REJECT otherwise. *redirect tells which.
 */
static __always_inline int claim_connect(struct bpf_sock_addr *ctx, struct fp_endpoint *ep,
					 __u32 dst_addr, __u16 dst_port, int *redirect)
{
	struct fp_caller_record *rec;
	struct bpf_sock *sk = ctx->sk;

	*redirect = 0;
	if (!sk)
		return VERDICT_REJECT;
	/* The proxy's own upstream sockets carry its mark; only CAP_NET_ADMIN can set one. */
	if (fp_self_mark != 0 && sk->mark == fp_self_mark)
		return VERDICT_PROCEED;
	/*
	 * A socket in another network namespace (a container) would be redirected to its own
	 * loopback, where no proxy listens: refuse it clearly instead of letting it hang.
	 */
	if (fp_proxy_netns_cookie != 0 && bpf_get_netns_cookie(ctx) != fp_proxy_netns_cookie)
		return fp_foreign_netns_pass ? VERDICT_PROCEED : VERDICT_REJECT;
	/*
	 * The kernel fast path: when no rule could ever let this caller through (a root-only
	 * endpoint in enforce mode), refuse here instead of in the proxy.
	 */
	if ((ep->flags & FP_ENDPOINT_ROOT_ONLY) && (__u32)bpf_get_current_uid_gid() != 0)
		return VERDICT_REJECT;

	/* Fail closed: a connect we cannot attribute never reaches the endpoint. */
	rec = bpf_sk_storage_get(&fp_callers, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!rec)
		return VERDICT_REJECT;
	fill_caller(rec, ctx, dst_addr, dst_port);
	*redirect = 1;
	return VERDICT_PROCEED;
}

SEC("cgroup/connect4")
int fp_connect4(struct bpf_sock_addr *ctx)
{
	__u32 type = ctx->type;
	__u32 dst_addr = ctx->user_ip4;
	__u16 dst_port = (__u16)ctx->user_port;
	struct fp_endpoint *ep = guarded(dst_addr, dst_port);
	int redirect, verdict;

	if (!ep)
		return VERDICT_PROCEED;
	/* Connected UDP (and anything else that is not a stream) to a guarded port: refused. */
	if (type != SOCK_STREAM)
		return VERDICT_REJECT;
	verdict = claim_connect(ctx, ep, dst_addr, dst_port, &redirect);
	if (redirect) {
		ctx->user_ip4 = fp_proxy_addr;
		ctx->user_port = bpf_htons(fp_proxy_port);
	}
	return verdict;
}

/* The IPv4 address inside an IPv4-mapped IPv6 address (::ffff:a.b.c.d), or 0. */
static __always_inline __u32 mapped_v4(struct bpf_sock_addr *ctx)
{
	__u32 w0 = ctx->user_ip6[0];
	__u32 w1 = ctx->user_ip6[1];
	__u32 w2 = ctx->user_ip6[2];
	__u32 w3 = ctx->user_ip6[3];

	if (w0 != 0 || w1 != 0 || w2 != bpf_htonl(0x0000ffff))
		return 0;
	return w3;
}

SEC("cgroup/connect6")
int fp_connect6(struct bpf_sock_addr *ctx)
{
	__u32 type = ctx->type;
	__u32 dst_addr = mapped_v4(ctx);
	__u16 dst_port = (__u16)ctx->user_port;
	struct fp_endpoint *ep;
	int redirect, verdict;

	if (!dst_addr)
		return VERDICT_PROCEED;
	ep = guarded(dst_addr, dst_port);
	if (!ep)
		return VERDICT_PROCEED;
	if (type != SOCK_STREAM)
		return VERDICT_REJECT;
	verdict = claim_connect(ctx, ep, dst_addr, dst_port, &redirect);
	if (redirect) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = fp_proxy_addr;
		ctx->user_port = bpf_htons(fp_proxy_port);
	}
	return verdict;
}

/* Unconnected UDP sends to a guarded ip:port are refused (Azure DNS on :53 is not guarded). */
SEC("cgroup/sendmsg4")
int fp_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u32 dst_addr = ctx->user_ip4;
	__u16 dst_port = (__u16)ctx->user_port;

	return guarded(dst_addr, dst_port) ? VERDICT_REJECT : VERDICT_PROCEED;
}

SEC("cgroup/sendmsg6")
int fp_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u32 dst_addr = mapped_v4(ctx);
	__u16 dst_port = (__u16)ctx->user_port;

	if (!dst_addr)
		return VERDICT_PROCEED;
	return guarded(dst_addr, dst_port) ? VERDICT_REJECT : VERDICT_PROCEED;
}

/*
 * Client side: the caller record of a redirected socket, with the connection's 4-tuple as
 * the client sees it (local = client) written to `key`; NULL for any other socket.
 */
static __always_inline struct fp_caller_record *client_record(struct bpf_sock_ops *skops,
							      struct fp_tuple *key)
{
	struct fp_caller_record *rec;
	struct bpf_sock *sk = skops->sk;
	__u32 local_ip = skops->local_ip4;
	__u32 remote_ip = skops->remote_ip4;
	__u32 local_port = skops->local_port;
	__u32 remote_port = skops->remote_port;

	if (!sk)
		return 0;
	rec = bpf_sk_storage_get(&fp_callers, sk, 0, 0);
	if (!rec || !(rec->flags & FP_RECORD_REDIRECTED))
		return 0;
	key->client_addr = local_ip;
	key->client_port = (__u16)local_port;
	key->server_addr = remote_ip;
	key->server_port = bpf_ntohs((__u16)(remote_port >> 16));
	return rec;
}

/* Client side: the source port is now bound, so the 4-tuple is complete. */
static __always_inline void publish_record(struct bpf_sock_ops *skops)
{
	struct fp_tuple key = {};
	struct fp_caller_record *rec = client_record(skops, &key);

	if (!rec)
		return;
	/*
	 * BPF_NOEXIST: a live entry for this 4-tuple is never overwritten. If the table is full the
	 * connection arrives without a record and is refused (421): fail closed, never swapped.
	 */
	if (bpf_map_update_elem(handoff_map(rec->uid), &key, rec, BPF_NOEXIST) == 0)
		bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* Client side: a connection that closes before the proxy adopted its record drops it. */
static __always_inline void forget_record(struct bpf_sock_ops *skops)
{
	struct fp_caller_record *rec;
	struct fp_tuple key = {};
	__u32 new_state = skops->args[1];

	if (new_state != BPF_TCP_CLOSE)
		return;
	rec = client_record(skops, &key);
	if (rec)
		bpf_map_delete_elem(handoff_map(rec->uid), &key);
}

/* Proxy side: move the record into the accepted socket's own storage. */
static __always_inline void adopt_record(struct bpf_sock_ops *skops)
{
	struct fp_caller_record *rec, *own;
	struct fp_tuple key = {};
	void *map;
	struct bpf_sock *sk = skops->sk;
	__u32 local_ip = skops->local_ip4;
	__u32 remote_ip = skops->remote_ip4;
	__u32 local_port = skops->local_port;
	__u32 remote_port = skops->remote_port;

	/* Only the proxy's own accepted connections carry a record; skip the lookups for every
	 * other server in the cgroup. */
	if (!sk || local_ip != fp_proxy_addr || local_port != fp_proxy_port)
		return;
	key.client_addr = remote_ip;
	key.client_port = bpf_ntohs((__u16)(remote_port >> 16));
	key.server_addr = local_ip;
	key.server_port = (__u16)local_port;
	map = &fp_handoff_root;
	rec = bpf_map_lookup_elem(map, &key);
	if (!rec) {
		map = &fp_handoff;
		rec = bpf_map_lookup_elem(map, &key);
	}
	if (!rec)
		return;
	own = bpf_sk_storage_get(&fp_callers, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (own)
		__builtin_memcpy(own, rec, sizeof(*own));
	bpf_map_delete_elem(map, &key);
}

SEC("sockops")
int fp_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;

	if (op == BPF_SOCK_OPS_TCP_CONNECT_CB)
		publish_record(skops);
	else if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		adopt_record(skops);
	else if (op == BPF_SOCK_OPS_STATE_CB)
		forget_record(skops);
	return 1;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
