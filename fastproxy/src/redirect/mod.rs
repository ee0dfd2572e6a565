//! Loads fastproxy's kernel programs and attaches them to a cgroup (v2), fail-closed.
//!
//! Attaching at the cgroup-v2 root covers every socket on the machine; tests and the demo
//! attach to a child cgroup instead. Links and maps are pinned in bpffs, so the redirect
//! outlives the proxy: while it is down (crash, restart, upgrade) redirected connects are
//! refused by the closed port, never sent direct. A later `attach` adopts the pins and swaps
//! the programs in place with BPF_LINK_UPDATE (atomic: no window without a program).
//! `detach` removes the pins, and with them the redirect: the documented break-glass.
//! Minimum kernel: 5.14 (BPF links for cgroups, sk storage from sock_addr and sockops programs,
//! `bpf_get_current_task_btf`, SO_NETNS_COOKIE); developed and tested on 6.18.

use std::fs::File;
use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, SkStorage};
use aya::programs::links::{FdLink, LinkError};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use fastproxy_ebpf::{
    names, EndpointAction, EndpointKey, RawCallerRecord, Tuple, FP_ACTION_REDIRECT,
    FP_ENDPOINT_ROOT_ONLY, IPPROTO_TCP,
};
use thiserror::Error;

use crate::identity::kernel::CallerLookup;
use crate::upstream::{EndpointMode, EndpointTable};

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
    /// Directory in a bpf file system for the pinned links and maps.
    pub pin_dir: PathBuf,
    /// Refuse non-root callers of root-only endpoints in enforce mode in the kernel.
    pub kernel_deny: bool,
}

pub use crate::config::DEFAULT_PIN_DIR;

#[derive(Debug, Error)]
pub enum RedirectError {
    #[error("no cgroup2 file system is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("{0} is not a cgroup v2 directory")]
    NotCgroup2(PathBuf),
    #[error("{0} is not on a bpf file system (mount one: mount -t bpf bpf /sys/fs/bpf)")]
    NoBpffs(PathBuf),
    #[error(
        "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing; needs CONFIG_DEBUG_INFO_BTF)"
    )]
    NoBtf,
    #[error("pin {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    ebpf: Ebpf,
    cgroup: PathBuf,
    kernel_deny: bool,
    proxy: SocketAddrV4,
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

    /// Re-program which endpoints the kernel redirects (modes changed): endpoints that stay
    /// guarded are never absent from the table in between.
    pub fn apply(&mut self, table: &EndpointTable) -> Result<(), RedirectError> {
        sync_endpoints(&mut self.ebpf, table, self.kernel_deny, self.proxy)
    }
}

/// What `attach` did with each link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    /// No pinned link existed: attached and pinned.
    Attached,
    /// A pinned link existed: its program was replaced in place.
    Replaced,
}

/// Load the programs (maps shared through their pins), bring the endpoint table in line with
/// the settings, attach or adopt every link, and hand back the caller lookup.
pub fn attach(
    settings: &RedirectSettings,
) -> Result<(Redirect, CallerLookup, LinkAction), RedirectError> {
    let btf = std::fs::metadata("/sys/kernel/btf/vmlinux");
    if !btf.is_ok_and(|m| m.is_file() && m.len() > 0) {
        return Err(RedirectError::NoBtf);
    }
    let cgroup = match &settings.cgroup {
        Some(dir) => dir.clone(),
        None => cgroup2_root()?,
    };
    if !crate::sys::is_cgroup2(&cgroup) {
        return Err(RedirectError::NotCgroup2(cgroup));
    }
    let cgroup_file = File::open(&cgroup).map_err(|source| RedirectError::Cgroup {
        path: cgroup.clone(),
        source,
    })?;
    let pin_dir = &settings.pin_dir;
    let bpffs = pin_dir.parent().unwrap_or(pin_dir);
    if !crate::sys::is_bpffs(bpffs) {
        return Err(RedirectError::NoBpffs(bpffs.to_owned()));
    }
    std::fs::create_dir_all(pin_dir).map_err(|source| RedirectError::Pin {
        path: pin_dir.clone(),
        source,
    })?;

    let proxy_addr = u32::from_ne_bytes(settings.proxy.ip().octets());
    let proxy_port = settings.proxy.port();
    let netns_cookie = crate::sys::netns_cookie().map_err(RedirectError::NetnsCookie)?;
    let foreign_pass = u32::from(settings.foreign_netns_pass);
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .override_global(names::PROXY_ADDR, &proxy_addr, true)
        .override_global(names::PROXY_PORT, &proxy_port, true)
        .override_global(names::SELF_MARK, &settings.mark, true)
        .override_global(names::PROXY_NETNS_COOKIE, &netns_cookie, true)
        .override_global(names::FOREIGN_NETNS_PASS, &foreign_pass, true)
        .load(fastproxy_ebpf::object())
        .map_err(|e| RedirectError::Load(Box::new(e)))?;

    sync_endpoints(
        &mut ebpf,
        &settings.endpoints,
        settings.kernel_deny,
        settings.proxy,
    )?;

    let program_err = |name: &'static str| {
        move |e: aya::programs::ProgramError| RedirectError::Program {
            name,
            source: Box::new(e),
        }
    };
    let mut action = LinkAction::Replaced;
    for name in names::CGROUP_SOCK_ADDR {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| missing(name))?
            .try_into()
            .map_err(program_err(name))?;
        program.load().map_err(program_err(name))?;
        let pin = link_pin(pin_dir, name);
        if pin.exists() {
            replace_pinned(&pin, program.fd().map_err(program_err(name))?.as_fd())?;
        } else {
            let id = program
                .attach(&cgroup_file, CgroupAttachMode::Single)
                .map_err(program_err(name))?;
            let link: FdLink = program
                .take_link(id)
                .map_err(program_err(name))?
                .try_into()
                .map_err(|e: LinkError| link_err(&pin, e))?;
            pin_link(link, &pin)?;
            action = LinkAction::Attached;
        }
    }
    let sockops: &mut SockOps = ebpf
        .program_mut(names::SOCKOPS)
        .ok_or_else(|| missing(names::SOCKOPS))?
        .try_into()
        .map_err(program_err(names::SOCKOPS))?;
    sockops.load().map_err(program_err(names::SOCKOPS))?;
    let pin = link_pin(pin_dir, names::SOCKOPS);
    if pin.exists() {
        replace_pinned(
            &pin,
            sockops.fd().map_err(program_err(names::SOCKOPS))?.as_fd(),
        )?;
    } else {
        let id = sockops
            .attach(&cgroup_file, CgroupAttachMode::Single)
            .map_err(program_err(names::SOCKOPS))?;
        let link: FdLink = sockops
            .take_link(id)
            .map_err(program_err(names::SOCKOPS))?
            .try_into()
            .map_err(|e: LinkError| link_err(&pin, e))?;
        pin_link(link, &pin)?;
        action = LinkAction::Attached;
    }

    let callers: SkStorage<MapData, RawCallerRecord> = SkStorage::try_from(
        ebpf.take_map(names::CALLERS)
            .ok_or_else(|| missing(names::CALLERS))?,
    )
    .map_err(|e| map_err(names::CALLERS, e))?;
    let mut handoff = Vec::with_capacity(2);
    for name in [names::HANDOFF_ROOT, names::HANDOFF] {
        let map: HashMap<MapData, Tuple, RawCallerRecord> =
            HashMap::try_from(ebpf.take_map(name).ok_or_else(|| missing(name))?)
                .map_err(|e| map_err(name, e))?;
        handoff.push(map);
    }

    Ok((
        Redirect {
            ebpf,
            cgroup,
            kernel_deny: settings.kernel_deny,
            proxy: settings.proxy,
        },
        CallerLookup::new(callers, handoff),
        action,
    ))
}

/// Make the kernel's endpoint table exactly the configured one (it is pinned, so it may hold
/// a previous configuration): add what is missing first, then remove what is no longer
/// guarded, so an endpoint that stays guarded is never absent.
fn sync_endpoints(
    ebpf: &mut Ebpf,
    table: &EndpointTable,
    kernel_deny: bool,
    proxy: SocketAddrV4,
) -> Result<(), RedirectError> {
    let map = ebpf
        .map_mut(names::ENDPOINTS)
        .ok_or_else(|| missing(names::ENDPOINTS))?;
    let mut endpoints: HashMap<_, EndpointKey, EndpointAction> =
        HashMap::try_from(map).map_err(|e| map_err(names::ENDPOINTS, e))?;
    let mut wanted = kernel_table(table, kernel_deny);
    // The proxy's own address too: a connect to it is "redirected" to itself, which records
    // the caller, so the proxy knows who calls its local paths (/provision, the status).
    wanted.push((
        EndpointKey {
            addr: u32::from_ne_bytes(proxy.ip().octets()),
            port: proxy.port().to_be(),
            proto: IPPROTO_TCP,
        },
        EndpointAction {
            action: FP_ACTION_REDIRECT,
            flags: 0,
        },
    ));
    for (key, action) in &wanted {
        endpoints
            .insert(key, action, 0)
            .map_err(|e| map_err(names::ENDPOINTS, e))?;
    }
    let stale: Vec<EndpointKey> = endpoints
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.iter().any(|(w, _)| w == k))
        .collect();
    for key in stale {
        endpoints
            .remove(&key)
            .map_err(|e| map_err(names::ENDPOINTS, e))?;
    }
    Ok(())
}

/// The kernel's endpoint table for a configuration: `disabled` endpoints are absent (never
/// redirected); with `kernel_deny`, root-only endpoints in enforce mode refuse non-root
/// callers in the kernel.
pub fn kernel_table(
    table: &EndpointTable,
    kernel_deny: bool,
) -> Vec<(EndpointKey, EndpointAction)> {
    table
        .iter()
        .filter(|e| e.mode != EndpointMode::Disabled)
        .map(|e| {
            let key = EndpointKey {
                addr: u32::from_ne_bytes(e.addr.ip().octets()),
                port: e.addr.port().to_be(),
                proto: IPPROTO_TCP,
            };
            let flags = if kernel_deny && e.mode == EndpointMode::Enforce && e.root_only() {
                FP_ENDPOINT_ROOT_ONLY
            } else {
                0
            };
            (
                key,
                EndpointAction {
                    action: FP_ACTION_REDIRECT,
                    flags,
                },
            )
        })
        .collect()
}

fn link_pin(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join(format!("link_{program}"))
}

fn replace_pinned(pin: &Path, program: std::os::fd::BorrowedFd<'_>) -> Result<(), RedirectError> {
    let link = crate::sys::bpf_obj_get(pin).map_err(|source| RedirectError::Pin {
        path: pin.to_owned(),
        source,
    })?;
    crate::sys::bpf_link_update(link.as_fd(), program).map_err(|source| RedirectError::Pin {
        path: pin.to_owned(),
        source,
    })
}

fn pin_link(link: FdLink, pin: &Path) -> Result<(), RedirectError> {
    link.pin(pin).map_err(|e| RedirectError::Pin {
        path: pin.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(())
}

fn link_err(pin: &Path, e: LinkError) -> RedirectError {
    RedirectError::Pin {
        path: pin.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The break-glass: remove every pinned link and map of fastproxy under `pin_dir`. Once the
/// pins are gone and no process holds the links, the kernel detaches the programs and
/// connects go direct again. Returns the pins removed.
pub fn detach(pin_dir: &Path) -> Result<Vec<PathBuf>, RedirectError> {
    let mut removed = Vec::new();
    let links = names::CGROUP_SOCK_ADDR
        .iter()
        .chain([names::SOCKOPS].iter())
        .map(|p| link_pin(pin_dir, p));
    let maps = names::MAPS.iter().map(|m| pin_dir.join(m));
    for pin in links.chain(maps) {
        match std::fs::remove_file(&pin) {
            Ok(()) => removed.push(pin),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RedirectError::Pin { path: pin, source }),
        }
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(removed)
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
    fn kernel_table_follows_modes() {
        use crate::upstream::EndpointKind;
        let mut table = EndpointTable::azure();
        table.set_mode(EndpointKind::Imds, EndpointMode::Disabled);
        table.set_mode(EndpointKind::HostGaPlugin, EndpointMode::Audit);
        let plain = kernel_table(&table, false);
        assert_eq!(plain.len(), 2, "disabled IMDS is not redirected");
        assert!(plain.iter().all(|(_, a)| a.flags == 0));
        let fast = kernel_table(&table, true);
        let flagged: Vec<_> = fast
            .iter()
            .filter(|(_, a)| a.flags & FP_ENDPOINT_ROOT_ONLY != 0)
            .collect();
        assert_eq!(
            flagged.len(),
            1,
            "only enforce-mode WireServer is refused in the kernel"
        );
        assert_eq!(flagged[0].0.port, 80u16.to_be());
    }

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
