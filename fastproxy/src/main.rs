//! The `fastproxy` command line.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fastproxy::config::{parse_endpoint_override, ProxySettings, DEFAULT_LISTEN, DEFAULT_MARK};
use fastproxy::redirect::{self, RedirectSettings};
use fastproxy::sys::{caps, has_capability};
use fastproxy::telemetry::{self, LogFormat};
use tracing::info;

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
    /// Attach the kernel programs and run the proxy until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Show fastproxy end to end in a private network namespace (needs root).
    Demo,
    /// Run the stand-in WireServer, HostGAPlugin and IMDS (tests and the demo).
    #[command(hide = true)]
    Standin(fastproxy_standin::StandinArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Address to listen on: loopback, privileged port.
    #[arg(long, default_value_t = DEFAULT_LISTEN)]
    listen: SocketAddrV4,
    /// Worker threads (one runtime and listener each); 0 = one per core.
    #[arg(long, default_value_t = 0)]
    workers: usize,
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
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: LogFormat,
    /// Create this file once the programs are attached and the listeners are up.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
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
    telemetry::init(args.log_format);
    let mut settings = ProxySettings {
        listen: args.listen,
        workers: args.workers,
        mark: args.mark,
        cgroup: args.cgroup,
        foreign_netns_pass: args.foreign_netns == "pass",
        ..ProxySettings::default()
    };
    for spec in &args.endpoints {
        let (kind, addr) = parse_endpoint_override(spec)?;
        settings.endpoints.set(kind, addr);
    }
    settings.validate()?;
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

    let (redirect, lookup) = redirect::attach(&RedirectSettings {
        proxy: settings.listen,
        mark: settings.mark,
        endpoints: settings.endpoints.clone(),
        cgroup: settings.cgroup.clone(),
        foreign_netns_pass: settings.foreign_netns_pass,
    })?;
    let workers = fastproxy::proxy::start(&settings, Arc::new(lookup))?;
    info!(
        listen = %settings.listen,
        workers = workers.len(),
        cgroup = %redirect.cgroup().display(),
        "fastproxy ready"
    );
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    wait_for_shutdown_signal()?;
    info!("shutting down");
    // Dropping `redirect` detaches the programs.
    drop(redirect);
    Ok(())
}

fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        Ok(())
    })
}
