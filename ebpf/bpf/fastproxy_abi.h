/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The one ABI between fastproxy's kernel programs and user space: map keys, map values and
 * constants. The Rust mirror (ebpf/src/lib.rs) asserts the same sizes and offsets; change both
 * together. Addresses and ports marked "net" are in network byte order, "host" in host order.
 */
#ifndef FASTPROXY_ABI_H
#define FASTPROXY_ABI_H

#include <linux/types.h>

#define FP_COMM_LEN 16

/* Capacity of the guarded-endpoint table (ip+port+protocol -> action). */
#define FP_MAX_ENDPOINTS 64

/*
 * Capacity of the 4-tuple hand-off tables. An entry lives from the client's connect until the
 * proxy's side of the connection is established (microseconds on loopback; at most as long as
 * the connection waits in the proxy's accept backlog, 1024 per worker) and is deleted then, or
 * when the client socket closes first. Root's records have a table of their own, so a flood of
 * unprivileged connects can neither evict nor crowd out a root caller's record.
 */
#define FP_HANDOFF_ENTRIES	16384
#define FP_HANDOFF_ROOT_ENTRIES 4096

/* fp_endpoint.action */
#define FP_ACTION_REDIRECT 1

/* fp_endpoint.flags: refuse (EPERM) every caller whose uid is not 0, in the kernel. */
#define FP_ENDPOINT_ROOT_ONLY (1 << 0)

/* fp_caller_record.flags */
#define FP_RECORD_REDIRECTED (1 << 0)
#define FP_RECORD_START_TIME (1 << 1)

/* Key of the guarded-endpoint table. */
struct fp_endpoint_key {
	__u32 addr;  /* IPv4, net */
	__u16 port;  /* net */
	__u16 proto; /* IPPROTO_TCP or IPPROTO_UDP */
};

/* Value of the guarded-endpoint table. */
struct fp_endpoint {
	__u32 action; /* FP_ACTION_* */
	__u32 flags;  /* FP_ENDPOINT_* */
};

/*
 * Who made a redirected connect, recorded by cgroup/connect4 in the caller's context and handed
 * to the proxy's accepted socket by sockops.
 */
struct fp_caller_record {
	__u64 start_boottime; /* the task's start, ns since boot (as /proc/PID/stat field 22) */
	__u64 cgroup_id;      /* cgroup v2 id of the calling task */
	__u64 netns_cookie;   /* network namespace of the calling socket */
	__u32 tgid;	      /* process id */
	__u32 pid;	      /* thread id */
	__u32 uid;	      /* real uid of the calling task */
	__u32 gid;	      /* real gid of the calling task */
	__u32 orig_addr;      /* the destination the caller asked for, net */
	__u16 orig_port;      /* net */
	__u16 flags;	      /* FP_RECORD_* */
	char comm[FP_COMM_LEN];
};

/*
 * Key of the hand-off table: the connection's full 4-tuple as the client sees it. Both sides
 * compute the same key: the client at TCP_CONNECT_CB (local = client), the proxy at
 * PASSIVE_ESTABLISHED_CB (remote = client).
 */
struct fp_tuple {
	__u32 client_addr; /* net */
	__u32 server_addr; /* net */
	__u16 client_port; /* host */
	__u16 server_port; /* host */
};

_Static_assert(sizeof(struct fp_endpoint_key) == 8, "fp_endpoint_key size");
_Static_assert(sizeof(struct fp_endpoint) == 8, "fp_endpoint size");
_Static_assert(sizeof(struct fp_caller_record) == 64, "fp_caller_record size");
_Static_assert(sizeof(struct fp_tuple) == 12, "fp_tuple size");

#endif /* FASTPROXY_ABI_H */
