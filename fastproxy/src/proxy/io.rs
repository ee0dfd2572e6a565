//! The stream operations the connection logic needs, over either runtime: tokio-uring (owned
//! buffers move into the kernel and come back) or, where io_uring is disabled, plain tokio
//! (readiness, then a non-blocking read or write). The connection code is written once,
//! generic over `ProxyStream`.

use std::io;
use std::net::{Shutdown, SocketAddrV4};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio_uring::buf::BoundedBuf;

use crate::sys::{splice_op, Pipe};
use crate::upstream::connect::{connect_marked, ConnectError};

/// A TCP stream as the proxy uses it.
pub(crate) trait ProxyStream: AsRawFd + Sized + 'static {
    /// Read at most `max` bytes, appended to `buf` (growing it when full); 0 = end of stream.
    async fn read_append(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize>;
    /// Write `buf[range]` completely.
    async fn write_range(&self, buf: &mut Vec<u8>, range: Range<usize>) -> io::Result<()>;
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    fn set_nodelay(&self, on: bool) -> io::Result<()>;
    /// Connect from a socket carrying `mark`, within `deadline`.
    async fn connect_marked(
        addr: SocketAddrV4,
        mark: u32,
        deadline: Duration,
    ) -> Result<Self, ConnectError>;
    /// Move up to `len` bytes from this stream to `to` through `pipe` without copying them
    /// through user space. `Ok(0)`: end of stream. `None`: this runtime cannot splice.
    async fn splice_to(
        &self,
        to: &Self,
        pipe: &Rc<Pipe>,
        len: usize,
    ) -> Option<Result<usize, SpliceError>>;
}

/// Which side of a splice failed.
#[derive(Debug)]
pub(crate) enum SpliceError {
    /// Reading from the source (the upstream).
    Source(io::Error),
    /// Writing to the destination (the client).
    Sink(io::Error),
}

/// Make room for a read of up to `max` bytes; returns the range to read into.
fn read_window(buf: &mut Vec<u8>, max: usize) -> Range<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(buf.capacity().max(8 * 1024));
    }
    let start = buf.len();
    start..start + max.min(buf.capacity() - start)
}

// === impl ProxyStream for tokio-uring ===

impl ProxyStream for tokio_uring::net::TcpStream {
    async fn read_append(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        let window = read_window(buf, max);
        let owned = std::mem::take(buf);
        let (res, slice) = self.read(owned.slice(window)).await;
        *buf = slice.into_inner();
        res
    }

    async fn write_range(&self, buf: &mut Vec<u8>, range: Range<usize>) -> io::Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let owned = std::mem::take(buf);
        let (res, slice) = self.write_all(owned.slice(range)).await;
        *buf = slice.into_inner();
        res
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        tokio_uring::net::TcpStream::shutdown(self, how)
    }

    fn set_nodelay(&self, on: bool) -> io::Result<()> {
        tokio_uring::net::TcpStream::set_nodelay(self, on)
    }

    async fn connect_marked(
        addr: SocketAddrV4,
        mark: u32,
        deadline: Duration,
    ) -> Result<Self, ConnectError> {
        connect_marked(addr, mark, deadline).await
    }

    async fn splice_to(
        &self,
        to: &Self,
        pipe: &Rc<Pipe>,
        len: usize,
    ) -> Option<Result<usize, SpliceError>> {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let moved = match splice_op(self.as_raw_fd(), pipe.write.as_raw_fd(), len, pipe)
            .submit()
            .await
        {
            Ok(0) => return Some(Ok(0)),
            Ok(n) => n,
            Err(e) => return Some(Err(SpliceError::Source(e))),
        };
        let mut left = moved;
        while left > 0 {
            let chunk = u32::try_from(left).unwrap_or(u32::MAX);
            match splice_op(pipe.read.as_raw_fd(), to.as_raw_fd(), chunk, pipe)
                .submit()
                .await
            {
                Ok(0) => return Some(Err(SpliceError::Sink(io::ErrorKind::WriteZero.into()))),
                Ok(n) => left -= n,
                Err(e) => return Some(Err(SpliceError::Sink(e))),
            }
        }
        Some(Ok(moved))
    }
}

// === impl ProxyStream for tokio (io_uring disabled) ===

impl ProxyStream for tokio::net::TcpStream {
    async fn read_append(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        let window = read_window(buf, max);
        let start = window.start;
        // Zero-filling the window keeps this path free of unsafe; it only runs where
        // io_uring is unavailable.
        buf.resize(window.end, 0);
        loop {
            self.readable().await?;
            match self.try_read(&mut buf[window.clone()]) {
                Ok(n) => {
                    buf.truncate(start + n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    buf.truncate(start);
                    return Err(e);
                }
            }
        }
    }

    async fn write_range(&self, buf: &mut Vec<u8>, range: Range<usize>) -> io::Result<()> {
        let mut pos = range.start;
        while pos < range.end {
            self.writable().await?;
            match self.try_write(&buf[pos..range.end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(how)
    }

    fn set_nodelay(&self, on: bool) -> io::Result<()> {
        tokio::net::TcpStream::set_nodelay(self, on)
    }

    async fn connect_marked(
        addr: SocketAddrV4,
        mark: u32,
        deadline: Duration,
    ) -> Result<Self, ConnectError> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))
            .map_err(ConnectError::Socket)?;
        socket.set_mark(mark).map_err(ConnectError::Socket)?;
        socket.set_nodelay(true).map_err(ConnectError::Socket)?;
        socket.set_nonblocking(true).map_err(ConnectError::Socket)?;
        match socket.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(source) => return Err(ConnectError::Refused { addr, source }),
        }
        let stream =
            tokio::net::TcpStream::from_std(socket.into()).map_err(ConnectError::Socket)?;
        match tokio::time::timeout(deadline, stream.writable()).await {
            Err(_) => {
                let _ = socket2::SockRef::from(&stream).shutdown(Shutdown::Both);
                Err(ConnectError::TimedOut(addr))
            }
            Ok(Err(source)) => Err(ConnectError::Refused { addr, source }),
            Ok(Ok(())) => match stream.take_error() {
                Ok(None) => Ok(stream),
                Ok(Some(source)) | Err(source) => Err(ConnectError::Refused { addr, source }),
            },
        }
    }

    async fn splice_to(
        &self,
        _to: &Self,
        _pipe: &Rc<Pipe>,
        _len: usize,
    ) -> Option<Result<usize, SpliceError>> {
        None
    }
}

/// Read at most `max` bytes, appended to `buf`.
pub(crate) async fn read_append<S: ProxyStream>(
    stream: &S,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    stream.read_append(buf, max).await
}

/// Write `buf[range]` completely.
pub(crate) async fn write_range<S: ProxyStream>(
    stream: &S,
    buf: &mut Vec<u8>,
    range: Range<usize>,
) -> io::Result<()> {
    stream.write_range(buf, range).await
}

/// Write all of `buf`.
pub(crate) async fn write_all<S: ProxyStream>(stream: &S, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = buf.len();
    stream.write_range(buf, 0..len).await
}
