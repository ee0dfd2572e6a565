//! fastproxy's kernel programs and the Rust mirror of their ABI (`bpf/fastproxy_abi.h`).
//!
//! The C header is the source of truth; every type here is `#[repr(C)]` with compile-time
//! size and offset asserts, so a change on one side that is not made on the other fails the
//! build instead of corrupting a map. Without the `aya` feature (which adds `aya::Pod` impls)
//! this crate has no dependencies; the loader lives in `fastproxy::redirect`.

use core::mem::{offset_of, size_of};

/// Names of the programs, maps and globals in the object.
pub mod names {
    pub const CONNECT4: &str = "fp_connect4";
    pub const CONNECT6: &str = "fp_connect6";
    pub const SENDMSG4: &str = "fp_sendmsg4";
    pub const SENDMSG6: &str = "fp_sendmsg6";
    pub const SOCKOPS: &str = "fp_sockops";
    pub const ENDPOINTS: &str = "fp_endpoints";
    pub const CALLERS: &str = "fp_callers";
    pub const HANDOFF: &str = "fp_handoff";
    pub const HANDOFF_ROOT: &str = "fp_handoff_root";
    /// The cgroup programs, in attach order.
    pub const CGROUP_SOCK_ADDR: [&str; 4] = [CONNECT4, CONNECT6, SENDMSG4, SENDMSG6];
    /// Every map, all pinned by name.
    pub const MAPS: [&str; 4] = [ENDPOINTS, CALLERS, HANDOFF, HANDOFF_ROOT];
    pub const PROXY_ADDR: &str = "fp_proxy_addr";
    pub const PROXY_PORT: &str = "fp_proxy_port";
    pub const SELF_MARK: &str = "fp_self_mark";
    pub const PROXY_NETNS_COOKIE: &str = "fp_proxy_netns_cookie";
    pub const FOREIGN_NETNS_PASS: &str = "fp_foreign_netns_pass";
}

pub const FP_COMM_LEN: usize = 16;
pub const FP_MAX_ENDPOINTS: u32 = 64;
pub const FP_HANDOFF_ENTRIES: u32 = 16384;
pub const FP_HANDOFF_ROOT_ENTRIES: u32 = 4096;
pub const FP_ACTION_REDIRECT: u32 = 1;
pub const FP_ENDPOINT_ROOT_ONLY: u32 = 1 << 0;
pub const FP_RECORD_REDIRECTED: u16 = 1 << 0;
pub const FP_RECORD_START_TIME: u16 = 1 << 1;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;

/// `struct fp_endpoint_key`: a guarded destination. `addr` and `port` in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u16,
}

/// `struct fp_endpoint`: what the kernel does with a connect to a guarded destination.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointAction {
    pub action: u32,
    pub flags: u32,
}

/// `struct fp_caller_record`: who made a redirected connect.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawCallerRecord {
    pub start_boottime: u64,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Network byte order.
    pub orig_addr: u32,
    /// Network byte order.
    pub orig_port: u16,
    pub flags: u16,
    pub comm: [u8; FP_COMM_LEN],
}

/// `struct fp_tuple`: a connection's 4-tuple as the client sees it (addresses in network byte
/// order, ports in host byte order).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tuple {
    pub client_addr: u32,
    pub server_addr: u32,
    pub client_port: u16,
    pub server_port: u16,
}

const _: () = {
    assert!(size_of::<EndpointKey>() == 8);
    assert!(offset_of!(EndpointKey, port) == 4);
    assert!(offset_of!(EndpointKey, proto) == 6);
    assert!(size_of::<EndpointAction>() == 8);
    assert!(offset_of!(EndpointAction, flags) == 4);
    assert!(size_of::<RawCallerRecord>() == 64);
    assert!(offset_of!(RawCallerRecord, cgroup_id) == 8);
    assert!(offset_of!(RawCallerRecord, netns_cookie) == 16);
    assert!(offset_of!(RawCallerRecord, tgid) == 24);
    assert!(offset_of!(RawCallerRecord, pid) == 28);
    assert!(offset_of!(RawCallerRecord, uid) == 32);
    assert!(offset_of!(RawCallerRecord, gid) == 36);
    assert!(offset_of!(RawCallerRecord, orig_addr) == 40);
    assert!(offset_of!(RawCallerRecord, orig_port) == 44);
    assert!(offset_of!(RawCallerRecord, flags) == 46);
    assert!(offset_of!(RawCallerRecord, comm) == 48);
    assert!(size_of::<Tuple>() == 12);
    assert!(offset_of!(Tuple, server_addr) == 4);
    assert!(offset_of!(Tuple, client_port) == 8);
    assert!(offset_of!(Tuple, server_port) == 10);
};

// SAFETY: each type is #[repr(C)], Copy, made only of integers and byte arrays, and has no
// padding (the size asserts above sum the fields), so every byte pattern is a valid value.
#[cfg(feature = "aya")]
unsafe impl aya::Pod for EndpointKey {}
// SAFETY: as above.
#[cfg(feature = "aya")]
unsafe impl aya::Pod for EndpointAction {}
// SAFETY: as above.
#[cfg(feature = "aya")]
unsafe impl aya::Pod for RawCallerRecord {}
// SAFETY: as above.
#[cfg(feature = "aya")]
unsafe impl aya::Pod for Tuple {}

#[repr(C, align(32))]
struct Aligned<T: ?Sized>(T);

/// ELF parsers want the object aligned; `include_bytes!` alone gives no alignment.
static OBJECT_ALIGNED: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/fastproxy.bpf.o"
)));

/// The compiled kernel object (BPF ELF with BTF).
pub fn object() -> &'static [u8] {
    &OBJECT_ALIGNED.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header's `_Static_assert`s and the Rust asserts agree only if they name the same
    /// numbers; this keeps the constants in step too.
    #[test]
    fn header_constants_match_the_mirror() {
        let header = include_str!("../bpf/fastproxy_abi.h");
        let expect = [
            ("FP_COMM_LEN", FP_COMM_LEN as u64),
            ("FP_MAX_ENDPOINTS", u64::from(FP_MAX_ENDPOINTS)),
            ("FP_HANDOFF_ENTRIES", u64::from(FP_HANDOFF_ENTRIES)),
            (
                "FP_HANDOFF_ROOT_ENTRIES",
                u64::from(FP_HANDOFF_ROOT_ENTRIES),
            ),
            ("FP_ACTION_REDIRECT", u64::from(FP_ACTION_REDIRECT)),
        ];
        for (name, value) in expect {
            let text = header
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|t| t.len() >= 3 && t[0] == "#define" && t[1] == name)
                .map(|t| t[2])
                .unwrap_or_else(|| panic!("{name} missing from the header"));
            assert_eq!(text.parse::<u64>().ok(), Some(value), "{name}");
        }
        for size in [
            "sizeof(struct fp_endpoint_key) == 8",
            "sizeof(struct fp_endpoint) == 8",
            "sizeof(struct fp_caller_record) == 64",
            "sizeof(struct fp_tuple) == 12",
        ] {
            assert!(header.contains(size), "header lost: {size}");
        }
    }

    #[test]
    fn object_is_a_bpf_elf_with_both_programs() {
        let obj = object();
        assert_eq!(&obj[..4], b"\x7fELF");
        assert_eq!(obj.as_ptr() as usize % 32, 0);
        for name in [
            names::CONNECT4,
            names::SOCKOPS,
            names::CALLERS,
            names::HANDOFF,
        ] {
            assert!(
                obj.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name} missing"
            );
        }
    }
}
