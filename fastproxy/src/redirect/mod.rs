//! Loads fastproxy's kernel programs and attaches them to a cgroup (v2).
//!
//! Attaching at the cgroup-v2 root covers every socket on the machine; tests and the demo
//! attach to a child cgroup instead. The links live as long as the returned `Redirect`.
//! Minimum kernel: 5.10 (BPF links for cgroups, sk storage from sock_addr and sockops programs,
//! `bpf_get_current_task_btf`); developed and tested on 6.18.

use std::fs::File;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, SkStorage};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use fastproxy_ebpf::{
    names, EndpointAction, EndpointKey, RawCallerRecord, Tuple, FP_ACTION_REDIRECT, IPPROTO_TCP,
};
use thiserror::Error;

use crate::identity::kernel::CallerLookup;
use crate::upstream::EndpointTable;

/// What the kernel side needs to know.
#[derive(Debug, Clone)]
pub struct RedirectSettings {
    /// Where redirected connects go.
    pub proxy: SocketAddrV4,
    /// The proxy's own sockets carry this mark and are never redirected.
    pub mark: u32,
    pub endpoints: EndpointTable,
    /// Cgroup v2 directory to attach to; `None`: the cgroup-v2 root.
    pub cgroup: Option<PathBuf>,
    /// Let sockets of other network namespaces reach the endpoints unguarded (unsafe; the
    /// default refuses them with EPERM).
    pub foreign_netns_pass: bool,
}

#[derive(Debug, Error)]
pub enum RedirectError {
    #[error("no cgroup2 file system is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("cannot open cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the proxy's network namespace cookie (needs Linux 5.14)")]
    NetnsCookie(#[source] std::io::Error),
    #[error("loading the kernel programs")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("kernel program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("kernel map {name}: {reason}")]
    Map { name: &'static str, reason: String },
}

/// The loaded and attached programs; dropping it detaches them.
pub struct Redirect {
    _ebpf: Ebpf,
    cgroup: PathBuf,
}

impl std::fmt::Debug for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirect")
            .field("cgroup", &self.cgroup)
            .finish_non_exhaustive()
    }
}

impl Redirect {
    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
}

/// Load the programs, fill the endpoint table, attach, and hand back the caller lookup.
pub fn attach(settings: &RedirectSettings) -> Result<(Redirect, CallerLookup), RedirectError> {
    let cgroup = match &settings.cgroup {
        Some(dir) => dir.clone(),
        None => cgroup2_root()?,
    };
    let cgroup_file = File::open(&cgroup).map_err(|source| RedirectError::Cgroup {
        path: cgroup.clone(),
        source,
    })?;

    let proxy_addr = u32::from_ne_bytes(settings.proxy.ip().octets());
    let proxy_port = settings.proxy.port();
    let netns_cookie = crate::sys::netns_cookie().map_err(RedirectError::NetnsCookie)?;
    let foreign_pass = u32::from(settings.foreign_netns_pass);
    let mut ebpf = EbpfLoader::new()
        .override_global(names::PROXY_ADDR, &proxy_addr, true)
        .override_global(names::PROXY_PORT, &proxy_port, true)
        .override_global(names::SELF_MARK, &settings.mark, true)
        .override_global(names::PROXY_NETNS_COOKIE, &netns_cookie, true)
        .override_global(names::FOREIGN_NETNS_PASS, &foreign_pass, true)
        .load(fastproxy_ebpf::object())
        .map_err(|e| RedirectError::Load(Box::new(e)))?;

    {
        let map = ebpf
            .map_mut(names::ENDPOINTS)
            .ok_or_else(|| missing(names::ENDPOINTS))?;
        let mut endpoints: HashMap<_, EndpointKey, EndpointAction> =
            HashMap::try_from(map).map_err(|e| map_err(names::ENDPOINTS, e))?;
        for e in settings.endpoints.iter() {
            let key = EndpointKey {
                addr: u32::from_ne_bytes(e.addr.ip().octets()),
                port: e.addr.port().to_be(),
                proto: IPPROTO_TCP,
            };
            let action = EndpointAction {
                action: FP_ACTION_REDIRECT,
                flags: 0,
            };
            endpoints
                .insert(key, action, 0)
                .map_err(|e| map_err(names::ENDPOINTS, e))?;
        }
    }

    let program_err = |name: &'static str| {
        move |e: aya::programs::ProgramError| RedirectError::Program {
            name,
            source: Box::new(e),
        }
    };
    for name in [
        names::CONNECT4,
        names::CONNECT6,
        names::SENDMSG4,
        names::SENDMSG6,
    ] {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| missing(name))?
            .try_into()
            .map_err(program_err(name))?;
        program.load().map_err(program_err(name))?;
        program
            .attach(&cgroup_file, CgroupAttachMode::Single)
            .map_err(program_err(name))?;
    }
    let sockops: &mut SockOps = ebpf
        .program_mut(names::SOCKOPS)
        .ok_or_else(|| missing(names::SOCKOPS))?
        .try_into()
        .map_err(program_err(names::SOCKOPS))?;
    sockops.load().map_err(program_err(names::SOCKOPS))?;
    sockops
        .attach(&cgroup_file, CgroupAttachMode::Single)
        .map_err(program_err(names::SOCKOPS))?;

    let callers: SkStorage<MapData, RawCallerRecord> = SkStorage::try_from(
        ebpf.take_map(names::CALLERS)
            .ok_or_else(|| missing(names::CALLERS))?,
    )
    .map_err(|e| map_err(names::CALLERS, e))?;
    let handoff: HashMap<MapData, Tuple, RawCallerRecord> = HashMap::try_from(
        ebpf.take_map(names::HANDOFF)
            .ok_or_else(|| missing(names::HANDOFF))?,
    )
    .map_err(|e| map_err(names::HANDOFF, e))?;

    Ok((
        Redirect {
            _ebpf: ebpf,
            cgroup,
        },
        CallerLookup::new(callers, handoff),
    ))
}

fn missing(name: &'static str) -> RedirectError {
    RedirectError::Map {
        name,
        reason: "not in the kernel object".into(),
    }
}

fn map_err(name: &'static str, e: aya::maps::MapError) -> RedirectError {
    RedirectError::Map {
        name,
        reason: e.to_string(),
    }
}

/// The mount point of the cgroup2 file system.
pub fn cgroup2_root() -> Result<PathBuf, RedirectError> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|_| RedirectError::NoCgroup2)?;
    find_cgroup2(&mountinfo).ok_or(RedirectError::NoCgroup2)
}

/// Find the first cgroup2 mount in mountinfo text (proc(5): field 5 is the mount point, the
/// file system type follows the ` - ` separator; octal escapes such as `\040` are decoded).
pub fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let escaped = "41 31 0:38 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(find_cgroup2(escaped), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(
            find_cgroup2("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
            None
        );
    }
}
