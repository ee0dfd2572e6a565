//! `fastproxy demo`, and the sandbox it (and the privileged tests) run in.
//!
//! A `Sandbox` is a private network namespace, with the platform's real addresses on its
//! loopback, plus a child cgroup (v2) to attach the kernel programs to. Nothing outside the
//! sandbox is touched: no program is attached at the cgroup root and no packet leaves the
//! namespace. Dropping the sandbox ends every process it started (by PID) and removes the
//! cgroup and the namespace, also when a test panics.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::redirect::cgroup2_root;
use crate::sys::{self, ChildSetup};
use crate::upstream::EndpointKind;

/// uid and gid of `nobody`, the unprivileged caller of the demo and tests.
pub const NOBODY: (u32, u32) = (65534, 65534);

static SANDBOX_SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace plus a child cgroup; see the module docs.
#[derive(Debug)]
pub struct Sandbox {
    name: String,
    netns: File,
    cgroup: PathBuf,
    /// A private bpf file system for the pins of this sandbox's programs.
    bpffs: PathBuf,
    children: Vec<Child>,
}

impl Sandbox {
    /// Create the namespace (loopback up, `addresses` added to it as /32) and the cgroup.
    pub fn create(tag: &str, addresses: &[Ipv4Addr]) -> anyhow::Result<Sandbox> {
        let seq = SANDBOX_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("fastproxy-{tag}-{}-{seq}", std::process::id());
        ip(&["netns", "add", &name])?;
        // From here on, a failure must undo what exists: build the value first.
        let netns_path = Path::new("/run/netns").join(&name);
        let netns = match File::open(&netns_path) {
            Ok(f) => f,
            Err(e) => {
                let _ = ip(&["netns", "del", &name]);
                return Err(e).with_context(|| format!("opening {}", netns_path.display()));
            }
        };
        let cgroup = cgroup2_root()?.join(&name);
        let mut sandbox = Sandbox {
            name,
            netns,
            cgroup: PathBuf::new(),
            bpffs: PathBuf::new(),
            children: Vec::new(),
        };
        let bpffs = std::env::temp_dir().join(format!("{}-bpffs", sandbox.name));
        std::fs::create_dir_all(&bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        sys::mount_bpffs(&bpffs)
            .with_context(|| format!("mounting a bpf file system at {}", bpffs.display()))?;
        sandbox.bpffs = bpffs;
        std::fs::create_dir(&cgroup)
            .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        sandbox.cgroup = cgroup;
        ip(&["-n", &sandbox.name, "link", "set", "lo", "up"])?;
        for addr in addresses {
            ip(&[
                "-n",
                &sandbox.name,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "lo",
            ])?;
        }
        Ok(sandbox)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the proxy of this sandbox pins its programs and maps.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("fastproxy")
    }

    /// The cgroup the kernel programs attach to; every process of the sandbox is in it.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    fn setup(&self, user: Option<(u32, u32)>) -> io::Result<ChildSetup> {
        let setup = ChildSetup::new()
            .netns(self.netns.as_raw_fd())
            .cgroup(&self.cgroup.join("cgroup.procs"))?;
        Ok(with_user(setup, user))
    }

    /// Start a long-running process inside the sandbox; it is killed when the sandbox drops.
    pub fn spawn(&mut self, mut cmd: Command, user: Option<(u32, u32)>) -> io::Result<u32> {
        self.setup(user)?.apply(&mut cmd);
        let child = cmd.spawn()?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Run a short command inside the sandbox; returns its PID and output.
    pub fn run(&self, cmd: Command, user: Option<(u32, u32)>) -> io::Result<(u32, Output)> {
        run_to_end(self.setup(user)?, cmd)
    }

    /// Run a short command in this sandbox's network namespace but outside its cgroup: a
    /// process the kernel programs do not see.
    pub fn run_outside_cgroup(&self, cmd: Command) -> io::Result<(u32, Output)> {
        run_to_end(ChildSetup::new().netns(self.netns.as_raw_fd()), cmd)
    }

    /// Run a short command in `netns_of`'s network namespace but in this sandbox's cgroup: a
    /// process of a "container" whose sockets this sandbox's programs see.
    pub fn run_foreign(
        &self,
        netns_of: &Sandbox,
        cmd: Command,
        user: Option<(u32, u32)>,
    ) -> io::Result<(u32, Output)> {
        let setup = ChildSetup::new()
            .netns(netns_of.netns.as_raw_fd())
            .cgroup(&self.cgroup.join("cgroup.procs"))?;
        run_to_end(with_user(setup, user), cmd)
    }

    /// Whether a process this sandbox started has exited (and with what).
    pub fn exited(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        self.children
            .iter_mut()
            .find(|c| c.id() == pid)
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL a process this sandbox started and reap it (a crash, for tests).
    pub fn kill(&mut self, pid: u32) {
        if let Some(child) = self.children.iter_mut().find(|c| c.id() == pid) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send SIGTERM to a process this sandbox started and wait up to `grace` for it.
    pub fn terminate(&mut self, pid: u32, grace: Duration) -> Option<std::process::ExitStatus> {
        let child = self.children.iter_mut().find(|c| c.id() == pid)?;
        let _ = sys::terminate(pid);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

fn with_user(setup: ChildSetup, user: Option<(u32, u32)>) -> ChildSetup {
    match user {
        Some((uid, gid)) => setup.user(uid, gid),
        None => setup,
    }
}

/// Run `cmd` with `setup` to its end, collecting its output.
fn run_to_end(setup: ChildSetup, mut cmd: Command) -> io::Result<(u32, Output)> {
    setup.apply(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn()?;
    let pid = child.id();
    Ok((pid, child.wait_with_output()?))
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.cgroup.as_os_str().is_empty() {
            // The cgroup empties as its processes are reaped; rmdir fails until then.
            for _ in 0..50 {
                if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if !self.bpffs.as_os_str().is_empty() {
            // Unmounting drops the pins; the links go with the (removed) cgroup anyway.
            let _ = sys::unmount(&self.bpffs);
            let _ = std::fs::remove_dir(&self.bpffs);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip(8) from iproute2")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Wait until `path` exists (a child's readiness file), or fail after `timeout`, or when the
/// child has already exited.
pub fn wait_for_file(
    sandbox: &mut Sandbox,
    pid: u32,
    path: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return Ok(());
        }
        if let Some(status) = sandbox.exited(pid) {
            bail!("process {pid} exited ({status}) before it was ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("process {pid} not ready within {timeout:?}")
}

/// The platform's addresses, for the sandbox's loopback.
pub fn azure_addresses() -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = EndpointKind::ALL
        .iter()
        .map(|k| *k.azure_address().ip())
        .collect();
    v.dedup();
    v
}

/// What one curl call saw.
#[derive(Debug, Clone)]
pub struct CurlResult {
    pub pid: u32,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CurlResult {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Run real curl inside the sandbox as `user`, with extra headers, and collect the status,
/// response headers and body. The `X-Request-Tag` header lets the caller find the request in
/// the stand-in's records.
pub fn curl(
    sandbox: &Sandbox,
    user: Option<(u32, u32)>,
    url: &str,
    headers: &[&str],
) -> anyhow::Result<CurlResult> {
    let mut cmd = Command::new("curl");
    // -i: the response head, then the body, on stdout.
    cmd.args(["-sS", "-i", "--max-time", "10"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    let (pid, out) = sandbox.run(cmd, user).context("running curl")?;
    let mut rest: &[u8] = &out.stdout;
    // Skip interim (1xx) heads; the last head is the final response.
    let (head, body) = loop {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            bail!(
                "curl {url}: no response ({}; {})",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        };
        let (head, body) = (&rest[..end], &rest[end + 4..]);
        if head.starts_with(b"HTTP/1.1 1") && !body.is_empty() {
            rest = body;
            continue;
        }
        break (String::from_utf8_lossy(head).into_owned(), body.to_vec());
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("curl {url}: no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(CurlResult {
        pid,
        status,
        headers,
        body,
    })
}

/// One request of the demo.
struct Scenario {
    user: Option<(u32, u32)>,
    endpoint: EndpointKind,
    url: &'static str,
    headers: &'static [&'static str],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        user: None,
        endpoint: EndpointKind::WireServer,
        url: "http://168.63.129.16/machine/?comp=goalstate",
        headers: &["x-ms-version: 2012-11-30"],
    },
    Scenario {
        user: None,
        endpoint: EndpointKind::HostGaPlugin,
        url: "http://168.63.129.16:32526/vmSettings",
        headers: &["x-ms-version: 2015-09-01"],
    },
    Scenario {
        user: None,
        endpoint: EndpointKind::Imds,
        url: "http://169.254.169.254/metadata/instance/compute?api-version=2021-08-01",
        headers: &["Metadata: true"],
    },
    Scenario {
        user: Some(NOBODY),
        endpoint: EndpointKind::WireServer,
        url: "http://168.63.129.16/machine/?comp=goalstate",
        headers: &["x-ms-version: 2012-11-30"],
    },
    Scenario {
        user: Some(NOBODY),
        endpoint: EndpointKind::HostGaPlugin,
        url: "http://168.63.129.16:32526/vmSettings",
        headers: &["x-ms-version: 2015-09-01"],
    },
    Scenario {
        user: Some(NOBODY),
        endpoint: EndpointKind::Imds,
        url: "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com",
        headers: &["Metadata: true"],
    },
];

/// Start the stand-in and the proxy inside `sandbox`; returns their PIDs. `dir` receives the
/// stand-in's records (`records.jsonl`) and the proxy's log (`proxy.log`).
pub fn start_stack(
    sandbox: &mut Sandbox,
    exe: &Path,
    dir: &Path,
    proxy_args: &[&str],
) -> anyhow::Result<(u32, u32)> {
    start_stack_with(sandbox, exe, dir, &[], proxy_args)
}

/// `start_stack` with extra arguments for the stand-in too.
pub fn start_stack_with(
    sandbox: &mut Sandbox,
    exe: &Path,
    dir: &Path,
    standin_args: &[&str],
    proxy_args: &[&str],
) -> anyhow::Result<(u32, u32)> {
    let standin_ready = dir.join("standin.ready");
    let mut standin = Command::new(exe);
    standin
        .arg("standin")
        .arg("--record")
        .arg(dir.join("records.jsonl"))
        .arg("--ready-file")
        .arg(&standin_ready)
        .args(standin_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let standin_pid = sandbox
        .spawn(standin, None)
        .context("starting the stand-in")?;
    wait_for_file(
        sandbox,
        standin_pid,
        &standin_ready,
        Duration::from_secs(10),
    )
    .context("stand-in")?;

    let proxy_pid = start_proxy(sandbox, exe, dir, "proxy", proxy_args)?;
    Ok((standin_pid, proxy_pid))
}

/// Start a proxy in `sandbox` (pins in the sandbox's bpffs) and wait until it is ready; its
/// log goes to `dir/<name>.log`. Returns its PID.
pub fn start_proxy(
    sandbox: &mut Sandbox,
    exe: &Path,
    dir: &Path,
    name: &str,
    args: &[&str],
) -> anyhow::Result<u32> {
    let ready = dir.join(format!("{name}.ready"));
    let log_path = dir.join(format!("{name}.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut proxy = Command::new(exe);
    proxy
        .arg("run")
        .arg("--cgroup")
        .arg(sandbox.cgroup())
        .arg("--bpffs-dir")
        .arg(sandbox.pin_dir())
        .arg("--ready-file")
        .arg(&ready)
        .args(["--log-format", "json"])
        .arg("--keys-dir")
        .arg(dir.join("keys"))
        .arg("--log-dir")
        .arg(dir.join("logs"))
        .args(args)
        .args(if args.contains(&"--secure-channel") {
            &[][..]
        } else {
            &["--secure-channel", "off"][..]
        })
        // Telemetry posts to the stand-in would show up among the requests tests count.
        .args(if args.contains(&"--telemetry") {
            &[][..]
        } else {
            &["--telemetry", "off"][..]
        })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let pid = sandbox.spawn(proxy, None).context("starting the proxy")?;
    if let Err(e) = wait_for_file(sandbox, pid, &ready, Duration::from_secs(10)) {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let last = log.lines().last().unwrap_or("").to_owned();
        return Err(e.context(format!("proxy: {last}")));
    }
    Ok(pid)
}

/// `fastproxy demo`: see the README.
pub fn run_demo() -> anyhow::Result<()> {
    if !sys::is_root() {
        bail!("fastproxy demo needs root (CAP_SYS_ADMIN for a network namespace and cgroup, CAP_BPF and CAP_NET_ADMIN for the kernel programs)");
    }
    let exe = std::env::current_exe().context("locating the fastproxy binary")?;
    let dir = std::env::temp_dir().join(format!("fastproxy-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = (|| {
        let mut sandbox = Sandbox::create("demo", &azure_addresses())?;
        install_interrupt_cleanup(sandbox.name().to_owned(), sandbox.cgroup().to_owned());
        println!(
            "fastproxy demo: namespace {}, cgroup {}",
            sandbox.name(),
            sandbox.cgroup().display()
        );
        println!("  stand-ins for WireServer 168.63.129.16:80, HostGAPlugin :32526, IMDS 169.254.169.254:80");
        let (_standin, _proxy) = start_stack(&mut sandbox, &exe, &dir, &[])?;
        println!(
            "  proxy attached and listening; running real curl as root and as nobody (uid 65534)\n"
        );
        print_table(&sandbox, &dir)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn print_table(sandbox: &Sandbox, dir: &Path) -> anyhow::Result<()> {
    println!(
        "{:<8} {:<11} {:<46} {:>6} {:<7} {:<9} claims seen upstream",
        "caller", "endpoint", "request", "status", "marker", "upstream"
    );
    let mut rows = Vec::new();
    for (i, s) in SCENARIOS.iter().enumerate() {
        let tag = format!("X-Request-Tag: demo-{i}");
        let mut headers: Vec<&str> = s.headers.to_vec();
        headers.push(&tag);
        let result = curl(sandbox, s.user, s.url, &headers)?;
        rows.push((s, i, result));
    }
    let records = fastproxy_standin::read_records(&dir.join("records.jsonl"))?;
    for (s, i, result) in rows {
        let tag = format!("demo-{i}");
        let seen = records
            .iter()
            .find(|r| r.header("x-request-tag") == Some(tag.as_str()));
        let path = s.url.split_once("://").map_or(s.url, |(_, r)| r);
        let path = &path[path.find('/').unwrap_or(0)..];
        let short: String = path.chars().take(46).collect();
        println!(
            "{:<8} {:<11} {:<46} {:>6} {:<7} {:<9} {}",
            if s.user.is_some() { "nobody" } else { "root" },
            s.endpoint.name(),
            short,
            result.status,
            if result.header("x-ms-azure-host-authorization") == Some("value") {
                "yes"
            } else {
                "no"
            },
            if seen.is_some() { "reached" } else { "blocked" },
            seen.and_then(|r| r.header("x-ms-azure-host-claims"))
                .unwrap_or("-"),
        );
    }
    println!("\nWireServer and HostGAPlugin are root-only; IMDS is open. Refused requests never reach the endpoint.");
    Ok(())
}

/// On Ctrl-C, remove the namespace and cgroup before exiting (children get the same SIGINT
/// from the terminal and exit by themselves).
fn install_interrupt_cleanup(netns: String, cgroup: PathBuf) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                std::thread::sleep(Duration::from_millis(200));
                for _ in 0..25 {
                    if std::fs::remove_dir(&cgroup).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = ip(&["netns", "del", &netns]);
                eprintln!("fastproxy demo: interrupted, cleaned up");
                std::process::exit(130);
            }
        });
    });
}
