//! Owned-buffer I/O helpers over tokio-uring streams: buffers move into the kernel and come
//! back, so the helpers take them out of their slot and put them back afterwards.

use std::io;
use std::ops::Range;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

/// Read at most `max` bytes, appended to `buf` (growing it when it is full). Returns the
/// number read; 0 means end of stream.
pub(crate) async fn read_append(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(buf.capacity().max(8 * 1024));
    }
    let start = buf.len();
    let end = start + max.min(buf.capacity() - start);
    let owned = std::mem::take(buf);
    let (res, slice) = stream.read(owned.slice(start..end)).await;
    *buf = slice.into_inner();
    res
}

/// Write `buf[range]` completely.
pub(crate) async fn write_range(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    range: Range<usize>,
) -> io::Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    let (res, slice) = stream.write_all(owned.slice(range)).await;
    *buf = slice.into_inner();
    res
}

/// Write all of `buf`.
pub(crate) async fn write_all(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = buf.len();
    write_range(stream, buf, 0..len).await
}
