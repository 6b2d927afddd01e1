//! The raw peer: a pipelined echo of 4-byte little-endian length-prefixed frames over
//! TCP, the practical limit of any framed protocol on this machine.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::{Args, Ctx, Fail};

/// `serve-raw`: echoes every whole frame it has read with one write.
pub async fn serve(args: &Args) -> Result<(), Fail> {
    let listener = TcpListener::bind(args.need("--listen")?)
        .await
        .ctx("binding the raw echo")?;
    args.ready(&listener.local_addr().ctx("local address")?.to_string())?;
    loop {
        let (s, _) = listener.accept().await.ctx("accepting")?;
        s.set_nodelay(true).ctx("TCP_NODELAY")?;
        tokio::spawn(async move {
            let (mut r, mut w) = s.into_split();
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                match r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let mut end = 0;
                while buf.len() >= end + 4 {
                    let len =
                        u32::from_le_bytes([buf[end], buf[end + 1], buf[end + 2], buf[end + 3]])
                            as usize;
                    if buf.len() < end + 4 + len {
                        // Make room for the rest of a large frame in one go.
                        buf.reserve(end + 4 + len - buf.len());
                        break;
                    }
                    end += 4 + len;
                }
                if end > 0 {
                    let out = buf.split_to(end);
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

type Waiter = oneshot::Sender<usize>;

/// A pipelined raw connection: requests go out in order (batched into one write per
/// wake-up), answers come back in order.
#[derive(Clone)]
pub struct RawConn {
    tx: mpsc::UnboundedSender<(Bytes, Waiter)>,
}

impl RawConn {
    /// Connects to a `serve-raw` process.
    pub async fn open(ep: &str) -> Result<RawConn, Fail> {
        let s = TcpStream::connect(ep)
            .await
            .ctx("connecting to serve-raw")?;
        s.set_nodelay(true).ctx("TCP_NODELAY")?;
        let (mut r, mut w) = s.into_split();
        let waiting: Arc<Mutex<VecDeque<Waiter>>> = Arc::default();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Bytes, Waiter)>();
        let w_waiting = waiting.clone();
        tokio::spawn(async move {
            let mut out = BytesMut::new();
            while let Some((payload, done)) = rx.recv().await {
                let mut next = Some((payload, done));
                while let Some((payload, done)) = next {
                    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                    out.extend_from_slice(&payload);
                    w_waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(done);
                    next = rx.try_recv().ok();
                }
                if w.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        });
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                if r.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                while buf.len() >= 4 {
                    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if buf.len() < 4 + len {
                        buf.reserve(4 + len - buf.len());
                        break;
                    }
                    let _ = buf.split_to(4 + len);
                    let done = waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pop_front();
                    if let Some(done) = done {
                        let _ = done.send(len);
                    }
                }
            }
        });
        Ok(RawConn { tx })
    }

    /// Sends `payload` and waits for its echo; returns the echoed length.
    pub async fn call(&self, payload: Bytes) -> Result<usize, Fail> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((payload, tx))
            .map_err(|_| Fail::new("raw call", "the connection's writer ended"))?;
        rx.await
            .map_err(|_| Fail::new("raw call", "the connection closed before the echo"))
    }
}
