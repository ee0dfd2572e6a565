//! The few places fastproxy talks to the kernel below the level of its crates: an io_uring
//! connect op for marked sockets, and process set-up for the demo and tests (network
//! namespace, cgroup, privileges) run between fork and exec. Every unsafe block is here.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use io_uring::{cqueue, opcode, types};
use socket2::SockAddr;
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

// === impl ConnectOp ===

/// Keeps the socket address alive until the kernel has completed the connect, even when the
/// future that submitted it is dropped (tokio-uring holds the data until the completion).
#[derive(Debug)]
pub struct ConnectData {
    _addr: Box<SockAddr>,
}

/// Turns the connect completion into an `io::Result`.
#[derive(Debug)]
pub struct ConnectTransform;

impl OneshotOutputTransform for ConnectTransform {
    type Output = io::Result<()>;
    type StoredData = ConnectData;

    fn transform_oneshot_output(self, _data: ConnectData, cqe: cqueue::Entry) -> io::Result<()> {
        let res = cqe.result();
        if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else {
            Ok(())
        }
    }
}

/// An io_uring `IORING_OP_CONNECT` on a socket the caller created (and marked) itself;
/// tokio-uring's own connect makes its socket internally, too late to mark it.
pub fn connect_op(fd: RawFd, addr: SockAddr) -> UnsubmittedOneshot<ConnectData, ConnectTransform> {
    let addr = Box::new(addr);
    let sqe = opcode::Connect::new(types::Fd(fd), addr.as_ptr().cast(), addr.len()).build();
    UnsubmittedOneshot::new(ConnectData { _addr: addr }, ConnectTransform, sqe)
}

// === impl SpliceOp ===

/// A pipe for splicing between two sockets. Shared (`Rc`) with every splice op in flight, so
/// it stays open until the kernel is done with it even if the relay gave up.
#[derive(Debug)]
pub struct Pipe {
    pub read: std::os::fd::OwnedFd,
    pub write: std::os::fd::OwnedFd,
}

impl Pipe {
    /// A new pipe, its buffer grown to `capacity` bytes when the kernel allows.
    pub fn new(capacity: usize) -> io::Result<Pipe> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid two-int out array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two new descriptors that nothing else owns.
        let pipe = unsafe {
            Pipe {
                read: std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                write: std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            }
        };
        let size = libc::c_int::try_from(capacity).unwrap_or(libc::c_int::MAX);
        // SAFETY: fcntl on a descriptor we own; failure only leaves the default size.
        unsafe {
            libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, size);
        }
        Ok(pipe)
    }
}

/// Keeps the pipe alive until the splice completes.
#[derive(Debug)]
pub struct SpliceData {
    _pipe: std::rc::Rc<Pipe>,
}

/// Turns the splice completion into the number of bytes moved.
#[derive(Debug)]
pub struct SpliceTransform;

impl OneshotOutputTransform for SpliceTransform {
    type Output = io::Result<usize>;
    type StoredData = SpliceData;

    fn transform_oneshot_output(self, _data: SpliceData, cqe: cqueue::Entry) -> io::Result<usize> {
        let res = cqe.result();
        if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else {
            Ok(res as usize)
        }
    }
}

/// An io_uring `IORING_OP_SPLICE` of up to `len` bytes from `from` to `to`, one of which is
/// an end of `pipe`. tokio-uring has no splice; this is its public custom-op API. The socket
/// descriptors belong to streams that outlive the relay loop that awaits this op.
pub fn splice_op(
    from: RawFd,
    to: RawFd,
    len: u32,
    pipe: &std::rc::Rc<Pipe>,
) -> UnsubmittedOneshot<SpliceData, SpliceTransform> {
    let sqe = opcode::Splice::new(types::Fd(from), -1, types::Fd(to), -1, len).build();
    UnsubmittedOneshot::new(
        SpliceData {
            _pipe: std::rc::Rc::clone(pipe),
        },
        SpliceTransform,
        sqe,
    )
}

// === process set-up between fork and exec ===

/// What a child process must become before it execs: run inside a network namespace, in a
/// cgroup, as a user. Prepared before fork (allocation is not allowed after it).
#[derive(Debug)]
pub struct ChildSetup {
    netns_fd: Option<RawFd>,
    cgroup_procs: Option<CString>,
    ids: Option<(u32, u32)>,
}

impl ChildSetup {
    pub fn new() -> Self {
        ChildSetup {
            netns_fd: None,
            cgroup_procs: None,
            ids: None,
        }
    }

    /// Enter the network namespace open at `fd` (must stay open until the spawn).
    pub fn netns(mut self, fd: RawFd) -> Self {
        self.netns_fd = Some(fd);
        self
    }

    /// Join the cgroup whose `cgroup.procs` file is at `path`.
    pub fn cgroup(mut self, procs_path: &std::path::Path) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        self.cgroup_procs = Some(
            CString::new(procs_path.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in cgroup path"))?,
        );
        Ok(self)
    }

    /// Drop to this uid and gid (with no supplementary groups).
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.ids = Some((uid, gid));
        self
    }

    /// Apply the set-up to `cmd`, in the order namespace, cgroup, privileges (joining a cgroup
    /// needs the privileges that are dropped last).
    pub fn apply(self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let setup = self;
        let hook = move || -> io::Result<()> {
            // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; the child dies with the
            // process that started it, so an interrupted demo or test leaves nothing behind.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = setup.netns_fd {
                // SAFETY: plain syscall on a descriptor the parent keeps open across the spawn.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(path) = &setup.cgroup_procs {
                // SAFETY: async-signal-safe calls only (open, write, close) on a C string
                // allocated before the fork; "0" moves the calling process.
                unsafe {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            if let Some((uid, gid)) = setup.ids {
                // SAFETY: async-signal-safe credential syscalls; groups first, uid last.
                unsafe {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        };
        // SAFETY: the hook performs only async-signal-safe syscalls and allocates nothing.
        unsafe {
            cmd.pre_exec(hook);
        }
    }
}

impl Default for ChildSetup {
    fn default() -> Self {
        ChildSetup::new()
    }
}

/// Whether the process has an effective capability (by number), from /proc/self/status.
pub fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << cap) != 0)
}

/// Capability numbers fastproxy checks for (linux/capability.h).
pub mod caps {
    pub const CAP_NET_ADMIN: u32 = 12;
    pub const CAP_SYS_ADMIN: u32 = 21;
    pub const CAP_BPF: u32 = 39;
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Send SIGTERM to a process this program started (callers pass only their own children).
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE, Linux 5.14+), read
/// from a throwaway socket.
pub fn netns_cookie() -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the out pointers are valid for the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

// === bpf(2) calls aya 0.14 does not expose ===

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The BPF_OBJ_GET part of `union bpf_attr`; the kernel zero-fills the rest of a short attr.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// The BPF_LINK_UPDATE part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> io::Result<libc::c_long> {
    // SAFETY: `attr` points to a live, zero-initialised bpf_attr of `size` bytes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Open a pinned BPF object (here: a link) by its bpffs path.
pub fn bpf_obj_get(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        ..ObjGetAttr::default()
    };
    let fd = bpf(
        BPF_OBJ_GET,
        (&mut attr as *mut ObjGetAttr).cast(),
        std::mem::size_of::<ObjGetAttr>(),
    )?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Atomically replace the program behind a link (BPF_LINK_UPDATE): connects see either the
/// old program or the new one, never none.
pub fn bpf_link_update(
    link: std::os::fd::BorrowedFd<'_>,
    program: std::os::fd::BorrowedFd<'_>,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut attr = LinkUpdateAttr {
        link_fd: u32::try_from(link.as_raw_fd()).map_err(|_| io::Error::other("bad fd"))?,
        new_prog_fd: u32::try_from(program.as_raw_fd()).map_err(|_| io::Error::other("bad fd"))?,
        ..LinkUpdateAttr::default()
    };
    bpf(
        BPF_LINK_UPDATE,
        (&mut attr as *mut LinkUpdateAttr).cast(),
        std::mem::size_of::<LinkUpdateAttr>(),
    )?;
    Ok(())
}

/// Whether `path` lies on a bpf file system (where pins can live).
pub fn is_bpffs(path: &std::path::Path) -> bool {
    fs_magic(path) == Some(BPF_FS_MAGIC)
}

/// Whether `path` lies on a cgroup v2 file system.
pub fn is_cgroup2(path: &std::path::Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    fs_magic(path) == Some(CGROUP2_SUPER_MAGIC)
}

fn fs_magic(path: &std::path::Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: valid C string and a properly sized out buffer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: statfs filled the buffer when it returned 0.
    (rc == 0).then(|| unsafe { st.assume_init() }.f_type)
}

/// Mount a private bpf file system at `dir` (the demo and tests keep their pins there).
pub fn mount_bpffs(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lazily unmount what `mount_bpffs` mounted; pins inside it disappear.
pub fn unmount(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an idle pooled connection is unusable: the peer closed it, reset it, or sent bytes
/// nobody asked for. One non-blocking peek, no data consumed.
pub fn idle_connection_unusable(fd: std::os::fd::RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: a valid one-byte buffer; MSG_PEEK leaves the data in the socket.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return !matches!(err.raw_os_error(), Some(libc::EAGAIN));
    }
    true
}
