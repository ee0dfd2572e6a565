//! The proxy: one thread per core, each with its own tokio-uring runtime and its own
//! SO_REUSEPORT listener, so connections never cross cores and workers share no locks.
//!
//! Trade-off: a connection stays on the core that accepted it for its whole life. The kernel
//! spreads new connections across the listeners, which is enough for a proxy whose
//! connections are short and alike. Where io_uring is disabled the same connection logic runs
//! on a plain tokio current-thread runtime per core (`RuntimeKind::Tokio`).

mod connection;
mod io;
mod limits;

pub use connection::{Shared, WorkerReport};

use std::cell::Cell;
use std::net::{SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tracing::{debug, warn};

use crate::config::ProxySettings;
use crate::identity::kernel::CallerLookup;

#[derive(Debug, Error)]
pub enum ProxyStartError {
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("starting a worker thread")]
    Thread(#[source] std::io::Error),
}

/// Which runtime the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// tokio-uring: io_uring for every socket operation.
    IoUring,
    /// Plain tokio (epoll), where io_uring is disabled (kernel.io_uring_disabled, RHEL's
    /// default), with the same connection logic.
    Tokio,
}

impl RuntimeKind {
    /// io_uring if this process may create a ring, else tokio.
    pub fn detect() -> RuntimeKind {
        if io_uring::IoUring::new(2).is_ok() {
            RuntimeKind::IoUring
        } else {
            RuntimeKind::Tokio
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::IoUring => "io_uring",
            RuntimeKind::Tokio => "tokio",
        }
    }
}

/// Running workers.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    runtime: RuntimeKind,
}

impl Workers {
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub fn runtime(&self) -> RuntimeKind {
        self.runtime
    }

    /// Stop accepting, close idle connections, let requests in flight finish within `grace`.
    /// Returns whether every worker finished in time.
    pub fn shutdown(self, grace: Duration) -> bool {
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + grace + Duration::from_millis(500);
        let mut clean = true;
        for handle in self.handles {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if handle.is_finished() {
                clean &= handle.join().is_ok();
            } else {
                clean = false;
            }
        }
        clean
    }
}

/// Bind one listener per worker (errors surface here, before any thread starts), then start
/// the workers on `runtime`.
pub fn start(
    settings: &ProxySettings,
    lookup: Arc<CallerLookup>,
    runtime: RuntimeKind,
    grace: Duration,
    shared: &Shared,
) -> Result<Workers, ProxyStartError> {
    let workers = if settings.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        settings.workers
    };
    let listeners = (0..workers)
        .map(|_| bind(settings.listen))
        .collect::<Result<Vec<_>, _>>()?;
    let (shutdown, _) = watch::channel(false);
    let limits = limits::ConnectionLimits::new(
        settings.max_connections,
        settings.max_connections_per_uid,
        settings.root_reserved_connections,
    );
    let mut handles = Vec::with_capacity(workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        let settings = settings.clone();
        let lookup = Arc::clone(&lookup);
        let limits = Arc::clone(&limits);
        let shared = shared.clone();
        let stop = shutdown.subscribe();
        let handle = std::thread::Builder::new()
            .name(format!("fastproxy-w{index}"))
            .spawn(move || match runtime {
                RuntimeKind::IoUring => {
                    uring_worker(listener, settings, lookup, limits, shared, stop, grace)
                }
                RuntimeKind::Tokio => {
                    tokio_worker(listener, settings, lookup, limits, shared, stop, grace)
                }
            })
            .map_err(ProxyStartError::Thread)?;
        handles.push(handle);
    }
    Ok(Workers {
        handles,
        shutdown,
        runtime,
    })
}

fn bind(addr: SocketAddrV4) -> Result<std::net::TcpListener, ProxyStartError> {
    let err = |source| ProxyStartError::Listen { addr, source };
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.bind(&SocketAddr::V4(addr).into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    Ok(socket.into())
}

/// How often each worker publishes its summaries for the status report.
const REPORT_PERIOD: Duration = Duration::from_secs(5);

/// Publish this worker's summaries and connection count every `REPORT_PERIOD` into its own
/// slot of the shared reports (read by the status report).
async fn publish_reports<S>(
    ctx: Rc<connection::WorkerCtx<S>>,
    reports: Arc<std::sync::Mutex<Vec<WorkerReport>>>,
) {
    let slot = {
        let mut all = reports.lock().unwrap_or_else(|p| p.into_inner());
        all.push(WorkerReport::default());
        all.len() - 1
    };
    loop {
        tokio::time::sleep(REPORT_PERIOD).await;
        let report = ctx.report();
        reports.lock().unwrap_or_else(|p| p.into_inner())[slot] = report;
    }
}

/// What to do after an accept error: back off when out of descriptors or memory (retrying at
/// once would spin while nothing can change), otherwise go on.
async fn after_accept_error(e: &std::io::Error) {
    if matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) {
        warn!(error = %e, "accept failed, backing off");
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        debug!(error = %e, "accept failed");
    }
}

/// After the listener is closed: wait for the connections still open to finish, up to
/// `grace` (idle ones close at once; see `connection`).
async fn drain(active: &Cell<usize>, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    while active.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if active.get() > 0 {
        warn!(
            open = active.get(),
            "grace period over, closing connections"
        );
    }
}

fn uring_worker(
    listener: std::net::TcpListener,
    settings: ProxySettings,
    lookup: Arc<CallerLookup>,
    limits: Arc<limits::ConnectionLimits>,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    tokio_uring::start(async move {
        let local = settings.listen;
        let listener = tokio_uring::net::TcpListener::from_std(listener);
        let ctx = Rc::new(connection::WorkerCtx::new(
            settings,
            lookup,
            limits,
            &shared,
            local,
            stop.clone(),
        ));
        let publish = publish_reports(Rc::clone(&ctx), Arc::clone(&shared.reports));
        tokio_uring::spawn(publish);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, SocketAddr::V4(peer))) => {
                        tokio_uring::spawn(connection::serve(stream, peer, Rc::clone(&ctx)));
                    }
                    Ok((_, peer)) => debug!(%peer, "ignoring a non-IPv4 peer"),
                    Err(e) => after_accept_error(&e).await,
                },
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        drop(listener);
        drain(ctx.active(), grace).await;
    });
}

fn tokio_worker(
    listener: std::net::TcpListener,
    settings: ProxySettings,
    lookup: Arc<CallerLookup>,
    limits: Arc<limits::ConnectionLimits>,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(error = %e, "cannot build the worker runtime");
            return;
        }
    };
    let local_set = tokio::task::LocalSet::new();
    local_set.block_on(&runtime, async move {
        let local = settings.listen;
        if let Err(e) = listener.set_nonblocking(true) {
            warn!(error = %e, "listener");
            return;
        }
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "listener");
                return;
            }
        };
        let ctx = Rc::new(connection::WorkerCtx::new(
            settings,
            lookup,
            limits,
            &shared,
            local,
            stop.clone(),
        ));
        let publish = publish_reports(Rc::clone(&ctx), Arc::clone(&shared.reports));
        tokio::task::spawn_local(publish);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, SocketAddr::V4(peer))) => {
                        tokio::task::spawn_local(connection::serve(stream, peer, Rc::clone(&ctx)));
                    }
                    Ok((_, peer)) => debug!(%peer, "ignoring a non-IPv4 peer"),
                    Err(e) => after_accept_error(&e).await,
                },
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        drop(listener);
        drain(ctx.active(), grace).await;
    });
}
