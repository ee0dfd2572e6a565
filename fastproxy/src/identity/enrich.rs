//! Lazy enrichment of a caller: exe path, process name, the first command-line arguments
//! (secrets redacted), user name and groups. Read only when a rule or the log needs them,
//! because reading a caller's /proc costs as much as a whole request (11-24 µs here).
//!
//! Pid reuse: the kernel record carries the task's start time. /proc/PID/stat is read before
//! and after the other files, and both must show that start time; otherwise the process is
//! gone (and the pid may already belong to another process): the caller then has no process
//! facts at all, never someone else's.
//!
//! Caches are per core (no locks), bounded, keyed by (pid, start time) and by uid.

use std::ffi::CStr;
use std::io;
use std::rc::Rc;

/// What /proc says about a calling process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessFacts {
    /// Full path of the executable (`/proc/PID/exe`).
    pub exe_path: String,
    /// File name of the executable.
    pub process_name: String,
    /// The first command-line arguments, secrets redacted.
    pub args: Vec<String>,
}

/// What NSS says about a uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserFacts {
    pub name: Option<String>,
    pub groups: Vec<String>,
}

/// Why process facts are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessGone {
    /// The pid is gone or now belongs to a process that started at another time.
    Gone,
    /// The kernel record had no start time to check against.
    Unverifiable,
}

/// Command-line arguments kept (SPEC-GPA.md section 3: the first 4).
pub const MAX_ARGS: usize = 4;

/// Arguments that name a secret; the argument after such a flag, and the value in
/// `--flag=value` / `key=value` forms, are redacted.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "key",
    "credential",
    "auth",
    "sig",
];

fn names_secret(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| lower.contains(w))
}

/// The first `MAX_ARGS` NUL-separated arguments of a cmdline, secrets replaced by `***`.
pub fn redacted_args(cmdline: &[u8]) -> Vec<String> {
    let mut out = Vec::with_capacity(MAX_ARGS);
    let mut redact_next = false;
    for raw in cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .take(MAX_ARGS)
    {
        let arg = String::from_utf8_lossy(raw);
        if redact_next {
            out.push("***".to_owned());
            redact_next = false;
            continue;
        }
        match arg.split_once('=') {
            Some((key, _)) if names_secret(key) => out.push(format!("{key}=***")),
            _ => {
                if arg.starts_with('-') && names_secret(&arg) {
                    redact_next = true;
                }
                out.push(arg.into_owned());
            }
        }
    }
    out
}

/// Field 22 (starttime, clock ticks since boot) of /proc/PID/stat. The command name (field
/// 2) is in parentheses and may itself hold spaces and parentheses: parse after the last ')'.
pub fn stat_start_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields after the comm start at field 3; starttime is field 22.
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

/// Read the facts of process `tgid`, which must have started at `start_boottime_ns`.
pub fn read_process(
    tgid: u32,
    start_boottime_ns: Option<u64>,
) -> Result<ProcessFacts, ProcessGone> {
    let start = start_boottime_ns.ok_or(ProcessGone::Unverifiable)?;
    let expected_ticks = start / (1_000_000_000 / clock_ticks_per_second());
    let stat_path = format!("/proc/{tgid}/stat");
    let same_process = || -> bool {
        std::fs::read_to_string(&stat_path)
            .ok()
            .and_then(|s| stat_start_ticks(&s))
            // The kernel rounds the same nanoseconds down to ticks; allow one tick.
            .is_some_and(|ticks| ticks.abs_diff(expected_ticks) <= 1)
    };
    if !same_process() {
        return Err(ProcessGone::Gone);
    }
    let exe = std::fs::read_link(format!("/proc/{tgid}/exe")).map_err(|_| ProcessGone::Gone)?;
    let cmdline = std::fs::read(format!("/proc/{tgid}/cmdline")).unwrap_or_default();
    // Read again: if the pid was reused in between, the files above may be the new process's.
    if !same_process() {
        return Err(ProcessGone::Gone);
    }
    let exe_path = exe.to_string_lossy().into_owned();
    let process_name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(ProcessFacts {
        exe_path,
        process_name,
        args: redacted_args(&cmdline),
    })
}

/// The user name and group names of `uid` (primary group `gid`), through NSS
/// (getpwuid_r, getgrouplist, getgrgid_r), never by parsing /etc files.
pub fn read_user(uid: u32, gid: u32) -> io::Result<UserFacts> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::zeroed();
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid out pointers and a buffer of the size given.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            pwd.as_mut_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Ok(UserFacts {
            name: None,
            groups: group_names(&[gid]),
        });
    }
    // SAFETY: getpwuid_r succeeded and filled `pwd`, whose strings point into `buf`.
    let pwd = unsafe { pwd.assume_init() };
    // SAFETY: pw_name is a NUL-terminated string inside `buf`, alive here.
    let name_c = unsafe { CStr::from_ptr(pwd.pw_name) };
    let name = name_c.to_string_lossy().into_owned();
    let mut gids = vec![0 as libc::gid_t; 64];
    let mut count = gids.len() as libc::c_int;
    loop {
        // SAFETY: `gids` holds `count` entries; the name is a valid C string.
        let rc = unsafe { libc::getgrouplist(name_c.as_ptr(), gid, gids.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            gids.truncate(usize::try_from(count).unwrap_or(0));
            break;
        }
        if gids.len() >= 65536 {
            gids.truncate(0);
            break;
        }
        let wanted = usize::try_from(count).unwrap_or(0).max(gids.len() * 2);
        gids.resize(wanted, 0);
        count = gids.len() as libc::c_int;
    }
    Ok(UserFacts {
        name: Some(name),
        groups: group_names(&gids),
    })
}

fn group_names(gids: &[libc::gid_t]) -> Vec<String> {
    let mut buf = vec![0u8; 16 * 1024];
    gids.iter()
        .filter_map(|&gid| {
            let mut grp = std::mem::MaybeUninit::<libc::group>::zeroed();
            let mut result: *mut libc::group = std::ptr::null_mut();
            // SAFETY: valid out pointers and a buffer of the size given.
            let rc = unsafe {
                libc::getgrgid_r(
                    gid,
                    grp.as_mut_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                )
            };
            if rc != 0 || result.is_null() {
                return None;
            }
            // SAFETY: getgrgid_r succeeded; gr_name points into `buf`, alive here.
            let name = unsafe { CStr::from_ptr(grp.assume_init().gr_name) };
            Some(name.to_string_lossy().into_owned())
        })
        .collect()
}

/// A small bounded cache: most recent at the end, oldest evicted.
#[derive(Debug)]
struct Bounded<K, V> {
    entries: Vec<(K, V)>,
    capacity: usize,
}

impl<K: PartialEq, V: Clone> Bounded<K, V> {
    fn new(capacity: usize) -> Self {
        Bounded {
            entries: Vec::with_capacity(capacity),
            capacity,
        }
    }

    fn get(&mut self, key: &K) -> Option<V> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(i);
        let value = entry.1.clone();
        self.entries.push(entry);
        Some(value)
    }

    fn put(&mut self, key: K, value: V) {
        if self.entries.len() >= self.capacity {
            self.entries.remove(0);
        }
        self.entries.push((key, value));
    }
}

/// Per-core caches of process and user facts.
#[derive(Debug)]
pub struct Enricher {
    processes: Bounded<(u32, u64), Result<Rc<ProcessFacts>, ProcessGone>>,
    users: Bounded<u32, Rc<UserFacts>>,
}

impl Default for Enricher {
    fn default() -> Self {
        Enricher::new(256, 64)
    }
}

impl Enricher {
    pub fn new(processes: usize, users: usize) -> Self {
        Enricher {
            processes: Bounded::new(processes),
            users: Bounded::new(users),
        }
    }

    /// Process facts of a caller (cached per pid and start time).
    pub fn process(
        &mut self,
        tgid: u32,
        start_boottime_ns: Option<u64>,
    ) -> Result<Rc<ProcessFacts>, ProcessGone> {
        let key = (tgid, start_boottime_ns.unwrap_or(0));
        if let Some(hit) = self.processes.get(&key) {
            return hit;
        }
        let facts = read_process(tgid, start_boottime_ns).map(Rc::new);
        // A process found gone stays gone; a live one keeps its exe and arguments.
        self.processes.put(key, facts.clone());
        facts
    }

    /// User facts of a uid (cached per uid).
    pub fn user(&mut self, uid: u32, gid: u32) -> Rc<UserFacts> {
        if let Some(hit) = self.users.get(&uid) {
            return hit;
        }
        let facts = Rc::new(read_user(uid, gid).unwrap_or(UserFacts {
            name: None,
            groups: Vec::new(),
        }));
        self.users.put(uid, Rc::clone(&facts));
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_only_four_args_kept() {
        let cases: &[(&[u8], &[&str])] = &[
            (
                b"curl\0-H\0Metadata: true\0http://x/\0more",
                &["curl", "-H", "Metadata: true", "http://x/"],
            ),
            (
                b"tool\0--password\0hunter2\0x",
                &["tool", "--password", "***", "x"],
            ),
            (
                b"tool\0--client-secret=abc\0token=xyz\0ok",
                &["tool", "--client-secret=***", "token=***", "ok"],
            ),
            (b"python3\0-c\0print(1)", &["python3", "-c", "print(1)"]),
        ];
        for (cmdline, want) in cases {
            assert_eq!(redacted_args(cmdline), *want);
        }
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "1234 (we ird) (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 10000 200";
        assert_eq!(stat_start_ticks(stat), Some(987654));
        assert_eq!(stat_start_ticks("garbage"), None);
    }

    /// The pid-reuse guard: the right start time gives this process's facts; any other start
    /// time gives none, never this process's identity.
    #[test]
    fn a_wrong_start_time_is_a_gone_process() {
        let me = std::process::id();
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).expect("own stat");
        let ticks = stat_start_ticks(&stat).expect("start");
        let ns = ticks * (1_000_000_000 / clock_ticks_per_second());
        let facts = read_process(me, Some(ns)).expect("this process");
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(facts.exe_path, exe.to_string_lossy());
        assert_eq!(
            read_process(me, Some(ns + 10_000_000_000)),
            Err(ProcessGone::Gone)
        );
        assert_eq!(read_process(me, None), Err(ProcessGone::Unverifiable));
        assert_eq!(read_process(u32::MAX - 1, Some(ns)), Err(ProcessGone::Gone));
    }

    #[test]
    fn users_come_from_nss() {
        let root = read_user(0, 0).expect("nss");
        assert_eq!(root.name.as_deref(), Some("root"));
        assert!(root.groups.iter().any(|g| g == "root"));
        let unknown = read_user(4_000_000_000, 4_000_000_000).expect("nss");
        assert_eq!(unknown.name, None);
    }

    #[test]
    fn caches_are_bounded() {
        let mut cache = Bounded::new(2);
        cache.put(1, "a");
        cache.put(2, "b");
        assert_eq!(cache.get(&1), Some("a"));
        cache.put(3, "c");
        assert_eq!(cache.get(&2), None, "least recently used went first");
        assert_eq!(cache.get(&1), Some("a"));
    }
}
