//! Who is calling: the caller record the kernel wrote at connect time.
//!
//! The record is taken in the caller's own context (cgroup/connect4), so it cannot be forged by
//! the caller and needs no /proc read; richer identity (exe path, user name, groups) is added
//! lazily by later layers only when a rule or the log needs it.

use std::net::{Ipv4Addr, SocketAddrV4};

#[cfg(feature = "runtime")]
pub mod enrich;
#[cfg(feature = "runtime")]
pub mod kernel;

/// The caller of one redirected connection, as the kernel recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerRecord {
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// Real uid of the calling task. "Is root" is decided on this, never on the gid.
    pub uid: u32,
    pub gid: u32,
    /// The task's start, ns since boot; `None` when the kernel could not say.
    pub start_boottime_ns: Option<u64>,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    /// The destination the caller asked for, before the redirect.
    pub original_dst: SocketAddrV4,
    comm: [u8; 16],
}

impl CallerRecord {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tgid: u32,
        pid: u32,
        uid: u32,
        gid: u32,
        start_boottime_ns: Option<u64>,
        cgroup_id: u64,
        netns_cookie: u64,
        original_dst: SocketAddrV4,
        comm: [u8; 16],
    ) -> Self {
        CallerRecord {
            tgid,
            pid,
            uid,
            gid,
            start_boottime_ns,
            cgroup_id,
            netns_cookie,
            original_dst,
            comm,
        }
    }

    /// A record for tests and tools: the given uid and destination, everything else zero.
    pub fn for_uid(uid: u32, original_dst: SocketAddrV4) -> Self {
        CallerRecord::new(uid, uid, uid, uid, None, 0, 0, original_dst, [0; 16])
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// The task's command name (up to 15 bytes, as the kernel keeps it).
    pub fn comm(&self) -> &str {
        let len = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        std::str::from_utf8(&self.comm[..len]).unwrap_or("?")
    }
}

impl Default for CallerRecord {
    fn default() -> Self {
        CallerRecord::for_uid(u32::MAX, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_decided_by_uid_only() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(168, 63, 129, 16), 80);
        let mut r = CallerRecord::for_uid(0, dst);
        r.gid = 1000;
        assert!(r.is_root());
        let mut r = CallerRecord::for_uid(1000, dst);
        r.gid = 0;
        assert!(!r.is_root());
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let r = CallerRecord::new(
            1,
            1,
            0,
            0,
            None,
            0,
            0,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            comm,
        );
        assert_eq!(r.comm(), "curl");
    }
}
