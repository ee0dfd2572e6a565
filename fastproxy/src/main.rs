//! The `fastproxy` command line.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use fastproxy::config::{
    parse_endpoint_override, parse_mode_override, ProxySettings, Timeouts, DEFAULT_LISTEN,
    DEFAULT_MARK, DEFAULT_SPLICE_THRESHOLD,
};
use fastproxy::keykeeper::{
    self,
    keeper::{ChannelState, KeeperSettings},
    status::Modes,
};
use fastproxy::policy::source::{fail_closed, Fingerprint, PolicySources};
use fastproxy::policy::{CanonicalRequest, CompiledPolicy, KnownCaller};
use fastproxy::proxy::{RuntimeKind, Shared};
use fastproxy::redirect::{self, RedirectSettings};
use fastproxy::status::Provisioning;
use fastproxy::sys::{caps, has_capability};
use fastproxy::telemetry::{self, LogFormat};
use fastproxy::upstream::EndpointKind;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::{info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "fastproxy",
    version,
    about = "Guard for a cloud VM's platform endpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attach (or adopt) the kernel programs and run the proxy until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
    /// Attach the kernel programs, or replace the running ones in place, and exit. The
    /// redirect stays (pinned): connects are refused until a proxy listens.
    Attach(RedirectArgs),
    /// Report provisioning: exit 0 when finished, 2 when finished with an error (printed), 1
    /// when not finished within --wait seconds. Also answers as `azure-proxy-agent --status`.
    Status {
        /// Seconds to wait for provisioning to finish.
        #[arg(long, default_value_t = 0)]
        wait: u64,
        /// The proxy's listening address.
        #[arg(long, default_value_t = DEFAULT_LISTEN)]
        listen: SocketAddrV4,
    },
    /// Policy tools.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Break-glass: remove the pinned programs and maps; connects go direct again.
    Detach {
        /// Directory in a bpf file system holding fastproxy's pins.
        #[arg(long, default_value = redirect::DEFAULT_PIN_DIR)]
        bpffs_dir: PathBuf,
    },
    /// Show fastproxy end to end in a private network namespace (needs root).
    Demo,
    /// Run the stand-in WireServer, HostGAPlugin and IMDS (tests and the demo).
    #[command(hide = true)]
    Standin(fastproxy_standin::StandinArgs),
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Show which rule decides a request by a given caller, and why.
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
struct ExplainArgs {
    /// The policy file (docs/POLICY.md).
    #[arg(long)]
    policy: PathBuf,
    /// Directory of the Guest Proxy Agent's local rule files.
    #[arg(long, default_value = "/var/lib/azure-proxy-agent/rules")]
    local_rules_dir: PathBuf,
    /// The endpoint: wireserver, hostga or imds.
    #[arg(long)]
    endpoint: EndpointKind,
    /// The caller's uid.
    #[arg(long)]
    uid: u32,
    /// The caller's user name.
    #[arg(long)]
    user: Option<String>,
    /// A group of the caller (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// The caller's executable path.
    #[arg(long)]
    exe: Option<PathBuf>,
    /// The request target, e.g. '/metadata/identity/oauth2/token?api-version=2018-02-01'.
    target: String,
}

#[derive(Debug, clap::Args)]
struct RedirectArgs {
    /// Address to listen on: loopback, privileged port.
    #[arg(long, default_value_t = DEFAULT_LISTEN)]
    listen: SocketAddrV4,
    /// SO_MARK of the proxy's own upstream sockets.
    #[arg(long, default_value_t = DEFAULT_MARK)]
    mark: u32,
    /// Cgroup v2 directory to attach to (default: the cgroup-v2 root, every socket on the VM).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Point an endpoint elsewhere: NAME=IP:PORT with NAME wireserver, hostga or imds.
    #[arg(long = "endpoint", value_name = "NAME=IP:PORT")]
    endpoints: Vec<String>,
    /// Connects from other network namespaces (containers): deny (EPERM) or pass (unguarded,
    /// unsafe).
    #[arg(long, default_value = "deny", value_parser = ["deny", "pass"])]
    foreign_netns: String,
    /// Directory in a bpf file system for the pinned programs and maps.
    #[arg(long, default_value = redirect::DEFAULT_PIN_DIR)]
    bpffs_dir: PathBuf,
    /// Mode of an endpoint: NAME=MODE with MODE disabled (not redirected), audit or enforce.
    #[arg(long = "mode", value_name = "NAME=MODE")]
    modes: Vec<String>,
    /// Refuse non-root callers of WireServer and HostGAPlugin (enforce mode) in the kernel
    /// with EPERM, instead of a 403 from the proxy.
    #[arg(long)]
    kernel_deny: bool,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    redirect: RedirectArgs,
    /// Worker threads (one runtime and listener each); 0 = one per core.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: LogFormat,
    /// Create this file once the programs are attached and the listeners are up.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Runtime: auto (io_uring when the kernel allows it), io-uring, or tokio (epoll).
    #[arg(long, default_value = "auto", value_parser = ["auto", "io-uring", "tokio"])]
    runtime: String,
    /// Splice response bodies with at least this many bytes left to relay (io_uring only);
    /// 0 = always copy.
    #[arg(long, default_value_t = DEFAULT_SPLICE_THRESHOLD)]
    splice_threshold: u64,
    /// Connections open at once, in all (beyond it: 503 and close).
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Connections open at once per uid.
    #[arg(long, default_value_t = 64)]
    max_connections_per_uid: u32,
    /// Of --max-connections, how many only root may use.
    #[arg(long, default_value_t = 32)]
    root_reserved_connections: usize,
    /// On SIGTERM or SIGINT: seconds to let requests in flight finish before exiting.
    #[arg(long, default_value_t = 10)]
    shutdown_grace: u64,
    /// Secure channel with WireServer (key latching, signing, modes from its status): on or
    /// off (the --mode flags then stay in force).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    secure_channel: String,
    /// fastproxy's policy file (the authorizationRules JSON of docs/POLICY.md); when given,
    /// it replaces the rules the secure channel delivers. Reloaded on change and on SIGHUP.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Directory of the Guest Proxy Agent's local rule files (WireServer_Rules.json,
    /// IMDS_Rules.json), merged as GPA merges them.
    #[arg(long, default_value = "/var/lib/azure-proxy-agent/rules")]
    local_rules_dir: PathBuf,
    /// Directory of status.json (created root-only).
    #[arg(long, default_value = "/var/log/fastproxy")]
    log_dir: PathBuf,
    /// Telemetry (connection summaries) to WireServer: on or off.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    telemetry: String,
    /// Seconds between telemetry batches.
    #[arg(long, default_value_t = 60)]
    telemetry_period: u64,
    /// Seconds between status.json writes.
    #[arg(long, default_value_t = 60)]
    status_interval: u64,
    /// Seconds within which provisioning must finish (else it finishes with an error).
    #[arg(long, default_value_t = 120)]
    provision_timeout: u64,
    /// Seconds between secure-channel status polls once the state is known.
    #[arg(long, default_value_t = 15)]
    secure_channel_poll: u64,
    /// Directory of latched keys (created root-only, 0700; key files 0600).
    #[arg(long, default_value = "/var/lib/fastproxy/keys")]
    keys_dir: PathBuf,
    /// Deadline for a complete request head, in seconds (408 after it).
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Idle keep-alive time of a client connection between requests, in seconds.
    #[arg(long, default_value_t = 15)]
    idle_timeout: u64,
    /// Deadline for connecting to an endpoint, in seconds (504 after it).
    #[arg(long, default_value_t = 5)]
    upstream_connect_timeout: u64,
    /// Deadline for an endpoint's response head, in seconds (504 after it).
    #[arg(long, default_value_t = 30)]
    upstream_head_timeout: u64,
}

impl RedirectArgs {
    fn settings(&self) -> anyhow::Result<ProxySettings> {
        let mut settings = ProxySettings {
            listen: self.listen,
            mark: self.mark,
            cgroup: self.cgroup.clone(),
            foreign_netns_pass: self.foreign_netns == "pass",
            pin_dir: self.bpffs_dir.clone(),
            kernel_deny: self.kernel_deny,
            ..ProxySettings::default()
        };
        for spec in &self.modes {
            let (kind, mode) = parse_mode_override(spec)?;
            settings.endpoints.set_mode(kind, mode);
        }
        for spec in &self.endpoints {
            let (kind, addr) = parse_endpoint_override(spec)?;
            settings.endpoints.set(kind, addr);
        }
        settings.validate()?;
        Ok(settings)
    }
}

fn check_privileges() -> anyhow::Result<()> {
    if !(has_capability(caps::CAP_BPF) || has_capability(caps::CAP_SYS_ADMIN)) {
        anyhow::bail!(
            "missing capability CAP_BPF (or CAP_SYS_ADMIN): cannot load the kernel programs"
        );
    }
    if !has_capability(caps::CAP_NET_ADMIN) {
        anyhow::bail!(
            "missing capability CAP_NET_ADMIN: cannot attach the kernel programs or mark sockets"
        );
    }
    Ok(())
}

fn redirect_settings(settings: &ProxySettings) -> RedirectSettings {
    RedirectSettings {
        proxy: settings.listen,
        mark: settings.mark,
        endpoints: settings.endpoints.clone(),
        cgroup: settings.cgroup.clone(),
        foreign_netns_pass: settings.foreign_netns_pass,
        pin_dir: settings.pin_dir.clone(),
        kernel_deny: settings.kernel_deny,
    }
}

fn main() -> ExitCode {
    // Installed (or linked) as `azure-proxy-agent`, answer the Guest Proxy Agent's
    // `--status [--wait N]`, which cloud-init runs during provisioning.
    let invoked_as = std::env::args_os().next().and_then(|a| {
        PathBuf::from(a)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    });
    if invoked_as.as_deref() == Some("azure-proxy-agent") {
        return gpa_compatible_status();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Attach(args) => attach_only(&args),
        Command::Detach { bpffs_dir } => detach(&bpffs_dir),
        Command::Status { wait, listen } => return ExitCode::from(status(wait, listen)),
        Command::Rules(RulesCommand::Explain(args)) => explain(&args),
        Command::Demo => fastproxy::demo::run_demo(),
        Command::Standin(args) => args.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fastproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let _log = telemetry::init(args.log_format);
    let mut settings = args.redirect.settings()?;
    settings.workers = args.workers;
    settings.splice_threshold = args.splice_threshold;
    settings.max_connections = args.max_connections;
    settings.max_connections_per_uid = args.max_connections_per_uid;
    settings.root_reserved_connections = args.root_reserved_connections;
    settings.timeouts = Timeouts {
        header: Duration::from_secs(args.header_timeout),
        idle: Duration::from_secs(args.idle_timeout),
        upstream_connect: Duration::from_secs(args.upstream_connect_timeout),
        upstream_head: Duration::from_secs(args.upstream_head_timeout),
    };
    settings.validate()?;
    check_privileges()?;
    let (mut redirect, lookup, action) = redirect::attach(&redirect_settings(&settings))?;
    info!(?action, pins = %settings.pin_dir.display(), "kernel programs in place");
    let configured = settings.endpoints.clone();
    let shared = Shared {
        endpoints: Arc::new(ArcSwap::from_pointee(configured.clone())),
        channel: Arc::new(ChannelState::default()),
        provisioning: Arc::new(Provisioning::new(Duration::from_secs(
            args.provision_timeout,
        ))),
        policy: Arc::new(ArcSwap::from_pointee(CompiledPolicy::builtin_only())),
        reports: Arc::new(std::sync::Mutex::new(Vec::new())),
        status_json: Arc::new(ArcSwap::from_pointee(String::from("{}"))),
        telemetry: None,
    };
    let sources = PolicySources {
        policy_file: args.policy.clone(),
        local_rules_dir: args.local_rules_dir.clone(),
    };
    let mut shared = shared;
    if args.telemetry == "on" {
        let wireserver = configured
            .by_kind(EndpointKind::WireServer)
            .map(|e| e.addr)
            .context("no WireServer endpoint")?;
        shared.telemetry = Some(fastproxy::telemetry::events::spawn(
            fastproxy::telemetry::events::TelemetrySettings {
                wireserver,
                mark: settings.mark,
                spool: args.log_dir.join("telemetry-spool"),
                spool_limit: 64,
                period: Duration::from_secs(args.telemetry_period),
            },
            Arc::clone(&shared.channel),
        )?);
    }
    let mut policy_loader = PolicyLoader::new(sources);
    policy_loader.reload(&shared, None, true);
    let channel_on = args.secure_channel == "on";
    let (modes_tx, modes_rx) = std::sync::mpsc::channel();
    let stop_keeper = Arc::new(AtomicBool::new(false));
    let keeper = if args.secure_channel == "on" {
        let wireserver = configured
            .by_kind(EndpointKind::WireServer)
            .map(|e| e.addr)
            .context("no WireServer endpoint")?;
        Some(keykeeper::keeper::spawn(
            KeeperSettings {
                wireserver,
                mark: settings.mark,
                keys_dir: args.keys_dir.clone(),
                poll: Duration::from_secs(args.secure_channel_poll),
            },
            Arc::clone(&shared.channel),
            modes_tx,
            Arc::clone(&stop_keeper),
        )?)
    } else {
        None
    };
    let runtime = match args.runtime.as_str() {
        "io-uring" => RuntimeKind::IoUring,
        "tokio" => RuntimeKind::Tokio,
        _ => RuntimeKind::detect(),
    };
    let grace = Duration::from_secs(args.shutdown_grace);
    let workers = fastproxy::proxy::start(&settings, Arc::new(lookup), runtime, grace, &shared)?;
    info!(
        listen = %settings.listen,
        workers = workers.len(),
        runtime = workers.runtime().name(),
        cgroup = %redirect.cgroup().display(),
        "fastproxy ready"
    );
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // Until the shutdown signal: apply the modes the secure channel sets, to the kernel's
    // redirect table and to the proxy's endpoint table (every core sees them on its next
    // request).
    let apply_modes = |modes: Modes, redirect: &mut redirect::Redirect| {
        let table = configured.with_modes(modes.wireserver, modes.hostga, modes.imds);
        if let Err(e) = redirect.apply(&table) {
            warn!(error = %fastproxy::telemetry::error_chain(&e), "re-programming the redirect table");
        }
        shared.endpoints.store(Arc::new(table));
    };
    let keys_dir = args.keys_dir.clone();
    let status_path = args.log_dir.join("status.json");
    let status_every = Duration::from_secs(args.status_interval);
    let mut status_written: Option<std::time::Instant> = None;
    wait_for_shutdown_signal(|hangup| {
        while let Ok(modes) = modes_rx.try_recv() {
            apply_modes(modes, &mut redirect);
        }
        let remote = shared.channel.rules.load_full();
        policy_loader.reload(&shared, remote.as_deref(), hangup);
        // Ready: redirect loaded and listeners up (both done by now), and a key latched or
        // the channel disabled or off.
        let key_ready = !channel_on
            || shared.channel.key.load().is_some()
            || shared.channel.modes.load().as_deref() == Some(&Modes::DISABLED);
        if let Some(done) = shared
            .provisioning
            .update(key_ready, "secure channel key not latched")
        {
            info!(error = %done.error_message, "provisioning finished");
            if let Err(e) = fastproxy::status::write_tags(&keys_dir, &done) {
                warn!(error = %e, "writing the tag files");
            }
        }
        if status_written.is_none_or(|t| t.elapsed() >= status_every) {
            status_written = Some(std::time::Instant::now());
            let report = status_report(&shared, channel_on).to_string();
            shared.status_json.store(Arc::new(report.clone()));
            if let Err(e) = write_private(&status_path, report.as_bytes()) {
                warn!(error = %e, path = %status_path.display(), "writing status.json");
            }
        }
    })?;
    stop_keeper.store(true, Ordering::Relaxed);
    if let Some(keeper) = keeper {
        let _ = keeper.join();
    }
    info!(
        grace_s = args.shutdown_grace,
        "shutting down: no new connections, finishing requests in flight"
    );
    let clean = workers.shutdown(grace);
    info!(
        clean,
        "stopped; the redirect stays pinned (connects are refused until a proxy listens)"
    );
    drop(redirect);
    Ok(())
}

fn attach_only(args: &RedirectArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    check_privileges()?;
    let (redirect, _lookup, action) = redirect::attach(&redirect_settings(&settings))?;
    println!(
        "fastproxy: programs {} on {} (pins in {})",
        match action {
            redirect::LinkAction::Attached => "attached",
            redirect::LinkAction::Replaced => "replaced",
        },
        redirect.cgroup().display(),
        settings.pin_dir.display()
    );
    Ok(())
}

fn detach(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    check_privileges()?;
    let removed = redirect::detach(pin_dir)?;
    if removed.is_empty() {
        println!("fastproxy: nothing pinned in {}", pin_dir.display());
    } else {
        println!(
            "fastproxy: removed {} pins from {}; the redirect is gone",
            removed.len(),
            pin_dir.display()
        );
    }
    Ok(())
}

/// Wait for SIGTERM or SIGINT, calling `tick` every 100 ms meanwhile (with `true` right after
/// a SIGHUP).
fn wait_for_shutdown_signal(mut tick: impl FnMut(bool)) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                r = tokio::signal::ctrl_c() => return r.map_err(Into::into),
                _ = hup.recv() => tick(true),
                _ = every.tick() => tick(false),
            }
        }
    })
}

/// Rebuilds the policy when its sources change (checked once a second) or on SIGHUP.
struct PolicyLoader {
    sources: PolicySources,
    seen: Option<Fingerprint>,
    checked: std::time::Instant,
    loaded_once: bool,
}

impl PolicyLoader {
    fn new(sources: PolicySources) -> Self {
        PolicyLoader {
            sources,
            seen: None,
            checked: std::time::Instant::now(),
            loaded_once: false,
        }
    }

    fn reload(&mut self, shared: &Shared, remote: Option<&serde_json::Value>, force: bool) {
        if !force && self.checked.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.checked = std::time::Instant::now();
        let now = self.sources.fingerprint(remote);
        if !force && self.seen.as_ref() == Some(&now) {
            return;
        }
        self.seen = Some(now);
        match self.sources.build(remote) {
            Ok(policy) => {
                info!(advanced_rules = policy.is_some(), "policy loaded");
                shared.policy.store(Arc::new(
                    policy.unwrap_or_else(CompiledPolicy::builtin_only),
                ));
                self.loaded_once = true;
            }
            Err(e) if self.loaded_once => {
                warn!(error = %e, "invalid policy: keeping the previous one");
            }
            Err(e) => {
                warn!(error = %e, "invalid policy and none before it: the rules deny everything");
                shared.policy.store(Arc::new(fail_closed(&e.to_string())));
            }
        }
    }
}

/// `azure-proxy-agent --status [--wait SECONDS]`.
fn gpa_compatible_status() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--status") {
        eprintln!("azure-proxy-agent (fastproxy): only --status [--wait SECONDS] is supported under this name");
        return ExitCode::FAILURE;
    }
    let wait = args
        .iter()
        .position(|a| a == "--wait")
        .and_then(|i| args.get(i + 1))
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    ExitCode::from(status(wait, DEFAULT_LISTEN))
}

/// Poll `GET /provision` until it is finished or `wait` seconds pass; the exit code of
/// SPEC-GPA.md section 7.
fn status(wait: u64, listen: SocketAddrV4) -> u8 {
    let deadline = std::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let provision = fetch_provision(listen);
        let code = fastproxy::status::exit_code(provision.as_ref());
        if code != 1 || std::time::Instant::now() >= deadline {
            match &provision {
                Some(p) if p.finished && p.error_message.is_empty() => {
                    println!("provisioning finished")
                }
                Some(p) if p.finished => {
                    println!("provisioning finished with an error: {}", p.error_message)
                }
                Some(_) => println!("provisioning not finished"),
                None => {
                    println!("provisioning not finished: fastproxy does not answer on {listen}")
                }
            }
            return u8::try_from(code).unwrap_or(1);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn fetch_provision(listen: SocketAddrV4) -> Option<fastproxy::status::Provision> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::V4(listen),
        Duration::from_secs(2),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!(
        "GET /provision HTTP/1.1\r\nHost: {listen}\r\nMetadata: True\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let body = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| &raw[i + 4..])?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        finished: bool,
        error_message: String,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    Some(fastproxy::status::Provision {
        finished: answer.finished,
        error_message: answer.error_message,
    })
}

/// `fastproxy rules explain`: the decision for one request and the rule that made it.
fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let sources = PolicySources {
        policy_file: Some(args.policy.clone()),
        local_rules_dir: args.local_rules_dir.clone(),
    };
    let policy = sources
        .build(None)?
        .unwrap_or_else(CompiledPolicy::builtin_only);
    let table = fastproxy::upstream::EndpointTable::azure();
    let mut endpoint = table.by_kind(args.endpoint).context("no such endpoint")?;
    if policy.rules(args.endpoint).is_some() {
        endpoint.mode = policy.mode(args.endpoint);
    }
    let mut caller = KnownCaller {
        uid: args.uid,
        user_name: args.user.clone(),
        groups: args.groups.clone(),
        exe_path: args.exe.as_ref().map(|p| p.display().to_string()),
    };
    let (path, query) = match args.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (args.target.as_str(), None),
    };
    let mut scratch = CanonicalRequest::new();
    let verdict =
        fastproxy::policy::authorize(&policy, &endpoint, &mut caller, path, query, &mut scratch);
    println!("{}", verdict.explain(&policy));
    Ok(())
}

/// The status report of SPEC-GPA.md section 7 (status.json).
fn status_report(shared: &Shared, channel_on: bool) -> serde_json::Value {
    use serde_json::json;
    let provision = shared.provisioning.get();
    let status = match (provision.finished, provision.error_message.is_empty()) {
        (true, true) => "SUCCESS",
        (true, false) => "ERROR",
        (false, _) => "UNKNOWN",
    };
    let reports = shared
        .reports
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let connections: usize = reports.iter().map(|r| r.connections).sum();
    let summaries: Vec<_> = reports.into_iter().flat_map(|r| r.summaries).collect();
    let failed: Vec<_> = summaries
        .iter()
        .filter(|s| s.response_status == "403")
        .cloned()
        .collect();
    let rules = shared.channel.rules.load_full();
    let rule_id = |endpoint: &str| {
        rules
            .as_deref()
            .and_then(|r| r.get(endpoint)?.get("id")?.as_str().map(str::to_owned))
    };
    let key = shared.channel.key.load_full();
    let message = shared
        .channel
        .message
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    json!({
        "timestamp": httpdate::fmt_http_date(shared.channel.clock.now()),
        "proxyAgentStatus": {
            "version": env!("CARGO_PKG_VERSION"),
            "status": status,
            "keyLatchStatus": {
                "status": if channel_on { "RUNNING" } else { "STOPPED" },
                "message": if channel_on { message } else { "secure channel off (--secure-channel off)".to_owned() },
                "states": {
                    "secureChannelState": if channel_on { shared.channel.state_text() } else { "disabled".to_owned() },
                    "keyGuid": key.as_ref().map(|k| k.guid().to_owned()),
                    "wireServerRuleId": rule_id("wireserver"),
                    "imdsRuleId": rule_id("imds"),
                    "hostGARuleId": rule_id("hostga"),
                    "keyIncarnationId": serde_json::Value::Null,
                },
            },
            "ebpfProgramStatus": {"status": "RUNNING", "message": "redirect attached and pinned"},
            "proxyListenerStatus": {"status": "RUNNING", "message": "listening"},
            "telemetryLoggerStatus": if shared.telemetry.is_some() {
                json!({"status": "RUNNING", "message": "connection summaries to WireServer"})
            } else {
                json!({"status": "STOPPED", "message": "telemetry off (--telemetry off)"})
            },
            "proxyConnectionsCount": connections,
        },
        "proxyConnectionSummary": summaries,
        "failedAuthenticateSummary": failed,
    })
}

/// Write a root-only file: the directory 0700, the file 0600, through a temporary name.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}
