//! Connects to an endpoint with the proxy's mark, so the kernel programs let them through.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio_uring::net::TcpStream;

use crate::sys::connect_op;

/// Why an upstream could not be reached; the proxy answers 502 or 504.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("creating the upstream socket")]
    Socket(#[source] io::Error),
    #[error("connecting to {addr}")]
    Refused {
        addr: SocketAddrV4,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {0}: no answer within the deadline")]
    TimedOut(SocketAddrV4),
}

/// Connect to `addr` from a socket carrying `mark`, within `deadline`.
pub async fn connect_marked(
    addr: SocketAddrV4,
    mark: u32,
    deadline: Duration,
) -> Result<TcpStream, ConnectError> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))
        .map_err(ConnectError::Socket)?;
    socket.set_mark(mark).map_err(ConnectError::Socket)?;
    socket.set_nodelay(true).map_err(ConnectError::Socket)?;
    let op = connect_op(socket.as_raw_fd(), SockAddr::from(addr)).submit();
    match tokio::time::timeout(deadline, op).await {
        Ok(Ok(())) => Ok(TcpStream::from_std(std::net::TcpStream::from(socket))),
        Ok(Err(source)) => Err(ConnectError::Refused { addr, source }),
        Err(_) => {
            // A connect in SYN_SENT is aborted by shutdown; without it the kernel would keep
            // retrying for minutes on behalf of a request that is already answered.
            let _ = socket.shutdown(std::net::Shutdown::Both);
            Err(ConnectError::TimedOut(addr))
        }
    }
}
