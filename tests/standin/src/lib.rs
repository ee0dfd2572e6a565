//! A faithful stand-in for the Azure platform endpoints fastproxy guards: WireServer
//! (168.63.129.16:80), HostGAPlugin (168.63.129.16:32526) and IMDS (169.254.169.254:80).
//!
//! Tests and `fastproxy demo` run it inside a private network namespace where the real platform
//! addresses sit on `lo`, or on loopback stand-in addresses outside one. It answers the way the
//! real endpoints do as far as curl, WALinuxAgent, cloud-init and azure-identity can tell (see
//! `shared/PLATFORM.md`), and it records every request it receives, including rejected ones, as
//! one JSON line per request so tests can assert what arrived: header names exactly as sent, in
//! arrival order, the target as sent and the status answered.
//!
//! Entry points: [`run`] (blocking, until SIGTERM/SIGINT), [`serve`] / [`serve_with_ready`]
//! (async, with a shutdown future), [`spawn`] (background thread, for in-process tests) and
//! [`StandinArgs`] (the command line, embeddable as a subcommand).
//!
//! The WireServer secure channel (SPEC-GPA.md section 6) is modelled too: the status (v1.0 or
//! v2.0), key acquisition and attestation, and, while the channel is on, the request signature
//! of section 4 is enforced on the endpoints it covers (see [`SecureChannel`],
//! [`SecureChannelControl`] and [`signing`]). It starts from [`StandinConfig::secure_channel`]
//! and changes at run time through [`StandinHandle`] or the control file
//! ([`StandinConfig::control`]).

mod hostga;
mod http;
mod imds;
mod securechannel;
pub mod signing;
mod util;
mod wireserver;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

pub use hostga::artifact_byte;
pub use securechannel::{
    AuthorizationMode, SecureChannel, SecureChannelControl, SecureChannelState, SignatureCheck,
    StatusVersion,
};

/// Where the three stand-in listeners bind, and where requests are recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandinConfig {
    /// WireServer listener, e.g. 168.63.129.16:80.
    pub wireserver: SocketAddr,
    /// HostGAPlugin listener, e.g. 168.63.129.16:32526.
    pub hostga: SocketAddr,
    /// IMDS listener, e.g. 169.254.169.254:80.
    pub imds: SocketAddr,
    /// JSONL file, one [`RecordedRequest`] per line, appended and flushed per request.
    pub record: Option<PathBuf>,
    /// The secure channel at start (default: disabled, status 1.0, a generated key).
    pub secure_channel: SecureChannel,
    /// A JSON file re-read before each request is handled (when present), to change the
    /// secure channel while the stand-in runs: `{"state": "disabled"|"wireserver"|
    /// "wireserverandimds", "version": "1.0"|"2.0", "rotate": true|false}`, every field
    /// optional. It is applied once per change of its content or modification time, so
    /// `"rotate": true` rotates the key once each time the file is (re)written.
    pub control: Option<PathBuf>,
}

impl StandinConfig {
    /// A configuration that records nothing, with the secure channel disabled.
    pub fn new(wireserver: SocketAddr, hostga: SocketAddr, imds: SocketAddr) -> Self {
        Self {
            wireserver,
            hostga,
            imds,
            record: None,
            secure_channel: SecureChannel::default(),
            control: None,
        }
    }
}

/// Which stand-in listener received a request.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub enum Endpoint {
    WireServer,
    HostGaPlugin,
    Imds,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::WireServer => "wireserver",
            Endpoint::HostGaPlugin => "hostga",
            Endpoint::Imds => "imds",
        }
    }
}

/// One request as the stand-in saw it, and the status it answered.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RecordedRequest {
    /// Which listener got it.
    pub endpoint: Endpoint,
    /// Client socket address as seen by the stand-in.
    pub peer: String,
    pub method: String,
    /// Request target exactly as received (path + query, or absolute form).
    pub target: String,
    /// In arrival order, names as received.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// The status the stand-in answered.
    pub status: u16,
    /// How its `x-ms-azure-host-authorization` was judged; `None` for a request refused before
    /// routing (malformed) and in records written before signatures were checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureCheck>,
}

impl RecordedRequest {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a record file written by the stand-in; a missing file is an empty list.
pub fn read_records(path: &Path) -> anyhow::Result<Vec<RecordedRequest>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: bad record", path.display(), i + 1))?;
        out.push(rec);
    }
    Ok(out)
}

/// The command line of the stand-in; embed it as a subcommand with `Standin(StandinArgs)`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "fastproxy-standin",
    about = "Stand-in for WireServer, HostGAPlugin and IMDS (tests and demo)"
)]
pub struct StandinArgs {
    /// WireServer listen address.
    #[arg(long, value_name = "ADDR", default_value = "168.63.129.16:80")]
    pub wireserver: SocketAddr,
    /// HostGAPlugin listen address.
    #[arg(long, value_name = "ADDR", default_value = "168.63.129.16:32526")]
    pub hostga: SocketAddr,
    /// IMDS listen address.
    #[arg(long, value_name = "ADDR", default_value = "169.254.169.254:80")]
    pub imds: SocketAddr,
    /// Append every request received to FILE as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Write FILE once every listener is bound (removed again on clean exit).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Secure channel state at start: which endpoints require signed requests.
    #[arg(
        long,
        value_name = "STATE",
        value_enum,
        ignore_case = true,
        default_value_t
    )]
    pub secure_channel: SecureChannelState,
    /// Shape of GET /secure-channel/status.
    #[arg(long, value_name = "VERSION", value_enum, default_value_t)]
    pub status_version: StatusVersion,
    /// JSON file re-read before each request to change the secure channel at run time:
    /// {"state": "disabled|wireserver|wireserverandimds", "version": "1.0|2.0", "rotate": bool}.
    #[arg(long, value_name = "FILE")]
    pub control: Option<PathBuf>,
    /// Guid of the first secure channel key (default: generated).
    #[arg(long, value_name = "GUID")]
    pub key_guid: Option<String>,
    /// The first secure channel key, 64 hex digits (default: generated).
    #[arg(long, value_name = "HEX")]
    pub key_hex: Option<String>,
}

impl StandinArgs {
    /// The listener configuration (the ready file is not part of it).
    pub fn into_config(self) -> StandinConfig {
        StandinConfig {
            wireserver: self.wireserver,
            hostga: self.hostga,
            imds: self.imds,
            record: self.record,
            secure_channel: SecureChannel {
                state: self.secure_channel,
                version: self.status_version,
                key_guid: self.key_guid,
                key_hex: self.key_hex,
                ..SecureChannel::default()
            },
            control: self.control,
        }
    }

    /// Runs the stand-in until SIGTERM/SIGINT, writing the ready file once bound.
    pub fn run(self) -> anyhow::Result<()> {
        let ready_file = self.ready_file.clone();
        run_inner(self.into_config(), ready_file)
    }
}

/// Binds all three listeners, then runs until SIGTERM/SIGINT (then exits cleanly). Blocking;
/// builds its own tokio runtime.
pub fn run(config: StandinConfig) -> anyhow::Result<()> {
    run_inner(config, None)
}

fn run_inner(config: StandinConfig, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        if let Some(path) = &ready_file {
            remove_if_present(path)?;
        }
        let on_ready = || match &ready_file {
            Some(path) => write_ready_file(path, &config),
            None => Ok(()),
        };
        let result = serve_with_ready(config.clone(), on_ready, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await;
        if let Some(path) = &ready_file {
            let _ = std::fs::remove_file(path);
        }
        result
    })
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing stale ready file {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Written to a temporary name and renamed, so a poller never sees it half written.
fn write_ready_file(path: &Path, config: &StandinConfig) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let text = format!(
        "pid={} wireserver={} hostga={} imds={}\n",
        std::process::id(),
        config.wireserver,
        config.hostga,
        config.imds
    );
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Binds all three listeners and serves until `shutdown` completes.
pub async fn serve(
    config: StandinConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_with_ready(config, || Ok(()), shutdown).await
}

/// Like [`serve`], calling `on_ready` once every listener is bound (an error from it stops the
/// stand-in and is returned).
pub async fn serve_with_ready(
    config: StandinConfig,
    on_ready: impl FnOnce() -> anyhow::Result<()>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let channel = securechannel::Shared::new(&config.secure_channel, config.control.clone())?;
    serve_inner(config, Arc::new(channel), on_ready, shutdown).await
}

async fn serve_inner(
    config: StandinConfig,
    channel: Arc<securechannel::Shared>,
    on_ready: impl FnOnce() -> anyhow::Result<()>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let recorder = match &config.record {
        Some(path) => Some(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening record file {}", path.display()))?,
        )),
        None => None,
    };
    let mut listeners = Vec::new();
    for (endpoint, addr) in [
        (Endpoint::WireServer, config.wireserver),
        (Endpoint::HostGaPlugin, config.hostga),
        (Endpoint::Imds, config.imds),
    ] {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the {} listener on {addr}", endpoint.label()))?;
        listeners.push((endpoint, listener));
    }
    let state = Arc::new(State {
        config,
        channel,
        recorder,
        verbose: std::env::var_os("STANDIN_VERBOSE").is_some_and(|v| v == "1"),
    });
    on_ready()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (endpoint, listener) in listeners {
        tasks.spawn(accept_loop(
            endpoint,
            listener,
            Arc::clone(&state),
            stop_rx.clone(),
        ));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    while let Some(joined) = tasks.join_next().await {
        joined.context("a listener task failed")?;
    }
    Ok(())
}

/// A stand-in running on a background thread with its own runtime; stopped on [`stop`] or drop.
///
/// [`stop`]: StandinHandle::stop
#[derive(Debug)]
pub struct StandinHandle {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    control: SecureChannelControl,
}

/// Starts the stand-in on a background thread and returns once every listener is bound.
pub fn spawn(config: StandinConfig) -> anyhow::Result<StandinHandle> {
    let channel = Arc::new(securechannel::Shared::new(
        &config.secure_channel,
        config.control.clone(),
    )?);
    let control = SecureChannelControl(Arc::clone(&channel));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("standin".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("building the tokio runtime")?;
            runtime.block_on(serve_inner(
                config,
                channel,
                move || {
                    let _ = ready_tx.send(());
                    Ok(())
                },
                async move {
                    let _ = stop_rx.await;
                },
            ))
        })
        .context("spawning the stand-in thread")?;
    let mut handle = StandinHandle {
        stop: Some(stop_tx),
        thread: Some(thread),
        control,
    };
    if ready_rx.recv().is_err() {
        // The thread ended before binding everything: report why.
        handle.stop.take();
        return match handle.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => bail!("the stand-in thread panicked"),
            _ => bail!("the stand-in stopped before it was ready"),
        };
    }
    Ok(handle)
}

impl StandinHandle {
    /// A handle on the secure channel that can be cloned and used from other threads.
    pub fn control(&self) -> SecureChannelControl {
        self.control.clone()
    }

    /// The secure channel now: state, status version, current key guid and hex, incarnation.
    pub fn secure_channel(&self) -> SecureChannel {
        self.control.secure_channel()
    }

    /// Changes which endpoints require signed requests (the key stays).
    pub fn set_secure_channel(&self, state: SecureChannelState) {
        self.control.set_secure_channel(state);
    }

    /// Changes the shape of `GET /secure-channel/status`.
    pub fn set_status_version(&self, version: StatusVersion) {
        self.control.set_status_version(version);
    }

    /// Issues a new key (guid, secret, incarnation + 1) and returns its guid; the previous key
    /// keeps verifying until the next rotation.
    pub fn rotate_key(&self) -> String {
        self.control.rotate_key()
    }

    /// Stops the stand-in and waits for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the stand-in thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for StandinHandle {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Shared by every connection.
pub(crate) struct State {
    pub(crate) config: StandinConfig,
    pub(crate) channel: Arc<securechannel::Shared>,
    recorder: Option<Mutex<File>>,
    verbose: bool,
}

impl State {
    pub(crate) fn record(&self, rec: &RecordedRequest) {
        if self.verbose {
            eprintln!(
                "standin: {} {} {} {} -> {} (signature {})",
                rec.endpoint.label(),
                rec.peer,
                rec.method,
                rec.target,
                rec.status,
                rec.signature.map_or("-", SignatureCheck::as_str)
            );
        }
        let Some(recorder) = &self.recorder else {
            return;
        };
        let mut line = match serde_json::to_string(rec) {
            Ok(line) => line,
            Err(e) => {
                eprintln!("standin: cannot encode a record: {e}");
                return;
            }
        };
        line.push('\n');
        let mut file = match recorder.lock() {
            Ok(file) => file,
            Err(poisoned) => poisoned.into_inner(),
        };
        // One write per line: O_APPEND keeps concurrent writers' lines whole.
        if let Err(e) = file.write_all(line.as_bytes()).and_then(|()| file.flush()) {
            eprintln!("standin: cannot write a record: {e}");
        }
    }
}

async fn accept_loop(
    endpoint: Endpoint,
    listener: TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(http::serve_connection(
                        endpoint,
                        stream,
                        peer,
                        Arc::clone(&state),
                    ));
                }
                // Out of descriptors and the like: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            },
        }
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests;
