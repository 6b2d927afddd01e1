//! An IO wrapper that replays bytes already read from a stream before reading more:
//! what the server read to tell the dialect goes back in front of the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::transport::BoxIo;

/// A stream whose reads return `prefix` first, then the inner stream's bytes. Writes
/// go straight to the inner stream.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tokio::io::AsyncReadExt;
/// let inner: polycall_net::BoxIo = Box::new(tokio::io::join(&b" world"[..], tokio::io::sink()));
/// let mut io = polycall_net::Prefixed::new(bytes::Bytes::from_static(b"hello"), inner);
/// let mut s = String::new();
/// io.read_to_string(&mut s).await.unwrap();
/// assert_eq!(s, "hello world");
/// # }
/// ```
pub struct Prefixed {
    prefix: Bytes,
    inner: BoxIo,
}

impl Prefixed {
    /// Replays `prefix` before reading from `inner`.
    pub fn new(prefix: Bytes, inner: BoxIo) -> Self {
        Self { prefix, inner }
    }
}

impl std::fmt::Debug for Prefixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefixed")
            .field("prefix_left", &self.prefix.len())
            .finish()
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
