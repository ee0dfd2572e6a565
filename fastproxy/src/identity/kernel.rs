//! Reading the caller record of an accepted connection from the kernel.
//!
//! The record normally sits in the accepted socket's own storage (one map lookup by fd). The
//! sockops program moves it there when the proxy's side of the handshake completes; a worker
//! that accepts in the instant before that finds it in the 4-tuple hand-off table instead, so
//! the lookup falls back to the table, and only then.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use aya::maps::{HashMap, MapData, SkStorage};
use fastproxy_ebpf::{RawCallerRecord, Tuple, FP_RECORD_START_TIME};

use super::CallerRecord;

/// Looks up caller records; shared by every worker (map lookups are syscalls, no lock on the
/// common path).
pub struct CallerLookup {
    callers: SkStorage<MapData, RawCallerRecord>,
    /// The root table first, then everyone else's.
    handoff: Mutex<Vec<HashMap<MapData, Tuple, RawCallerRecord>>>,
}

impl std::fmt::Debug for CallerLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerLookup").finish_non_exhaustive()
    }
}

impl CallerLookup {
    pub fn new(
        callers: SkStorage<MapData, RawCallerRecord>,
        handoff: Vec<HashMap<MapData, Tuple, RawCallerRecord>>,
    ) -> Self {
        CallerLookup {
            callers,
            handoff: Mutex::new(handoff),
        }
    }

    /// The record of the connection accepted as `socket`, whose local (proxy) and peer
    /// (client) addresses are given; `None` when the connection was not redirected.
    pub fn lookup(
        &self,
        socket: &impl AsRawFd,
        local: SocketAddrV4,
        peer: SocketAddrV4,
    ) -> Option<CallerRecord> {
        if let Ok(raw) = self.callers.get(socket, 0) {
            return Some(decode(&raw));
        }
        let key = Tuple {
            client_addr: u32::from_ne_bytes(peer.ip().octets()),
            server_addr: u32::from_ne_bytes(local.ip().octets()),
            client_port: peer.port(),
            server_port: local.port(),
        };
        let mut tables = self
            .handoff
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for table in tables.iter_mut() {
            if let Ok(raw) = table.get(&key, 0) {
                let _ = table.remove(&key);
                return Some(decode(&raw));
            }
        }
        None
    }
}

/// Convert the kernel's record (network byte order fields) into the identity type.
pub fn decode(raw: &RawCallerRecord) -> CallerRecord {
    let original_dst = SocketAddrV4::new(
        Ipv4Addr::from(raw.orig_addr.to_ne_bytes()),
        u16::from_be(raw.orig_port),
    );
    let start = (raw.flags & FP_RECORD_START_TIME != 0).then_some(raw.start_boottime);
    CallerRecord::new(
        raw.tgid,
        raw.pid,
        raw.uid,
        raw.gid,
        start,
        raw.cgroup_id,
        raw.netns_cookie,
        original_dst,
        raw.comm,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_network_order_fields() {
        let mut raw = RawCallerRecord {
            tgid: 10,
            pid: 11,
            uid: 65534,
            gid: 65534,
            orig_addr: u32::from_ne_bytes([168, 63, 129, 16]),
            orig_port: 32526u16.to_be(),
            flags: FP_RECORD_START_TIME,
            start_boottime: 42,
            ..RawCallerRecord::default()
        };
        raw.comm[..4].copy_from_slice(b"curl");
        let rec = decode(&raw);
        assert_eq!(
            rec.original_dst,
            "168.63.129.16:32526".parse().expect("addr")
        );
        assert_eq!((rec.tgid, rec.pid, rec.uid), (10, 11, 65534));
        assert_eq!(rec.start_boottime_ns, Some(42));
        assert_eq!(rec.comm(), "curl");
    }
}
