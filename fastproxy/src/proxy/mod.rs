//! The proxy: one thread per core, each with its own tokio-uring runtime and its own
//! SO_REUSEPORT listener, so connections never cross cores and workers share no locks.
//!
//! Trade-off: a connection stays on the core that accepted it for its whole life. The kernel
//! spreads new connections across the listeners, which is enough for a proxy whose
//! connections are short and alike.

mod connection;
mod io;

use std::net::{SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

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

/// Running workers.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

/// Bind one listener per worker (errors surface here, before any thread starts), then start
/// the workers.
pub fn start(
    settings: &ProxySettings,
    lookup: Arc<CallerLookup>,
) -> Result<Workers, ProxyStartError> {
    let workers = if settings.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        settings.workers
    };
    let listeners = (0..workers)
        .map(|_| bind(settings.listen))
        .collect::<Result<Vec<_>, _>>()?;
    let mut handles = Vec::with_capacity(workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        let settings = settings.clone();
        let lookup = Arc::clone(&lookup);
        let handle = std::thread::Builder::new()
            .name(format!("fastproxy-w{index}"))
            .spawn(move || worker(listener, settings, lookup))
            .map_err(ProxyStartError::Thread)?;
        handles.push(handle);
    }
    Ok(Workers { handles })
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

fn worker(listener: std::net::TcpListener, settings: ProxySettings, lookup: Arc<CallerLookup>) {
    tokio_uring::start(async move {
        let local = settings.listen;
        let listener = tokio_uring::net::TcpListener::from_std(listener);
        let ctx = Rc::new(connection::WorkerCtx::new(settings, lookup, local));
        loop {
            match listener.accept().await {
                Ok((stream, SocketAddr::V4(peer))) => {
                    tokio_uring::spawn(connection::serve(stream, peer, Rc::clone(&ctx)));
                }
                Ok((_, peer)) => debug!(%peer, "ignoring a non-IPv4 peer"),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // Out of descriptors or memory: retrying at once would spin; let
                    // connections finish first.
                    warn!(error = %e, "accept failed, backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => debug!(error = %e, "accept failed"),
            }
        }
    });
}
