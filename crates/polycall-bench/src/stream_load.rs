//! The streaming benchmark's pieces (`cargo xtask bench stream`): what each server
//! streams, the raw TCP streamer, and `stream-load`, which opens one server stream of
//! `--count` messages of `--size` bytes, reads it to its end and prints one JSON line:
//! messages/s, bytes/s, and the CPU seconds of this process and of `--server-pids`.
//!
//! Every server sends slices of one pre-made buffer (no per-message allocation of the
//! payload), and every client checks the length of every message and their count.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use polycall_core::{Call, MessageStream, Metadata, Payload, Status};
use polycall_net::{Channel, ChannelConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{Args, Ctx, Fail, cpu_seconds, payload};

/// The streaming method of the polycall peers.
pub const METHOD: &str = "bench.stream";

/// A stream request: `count` and `size`, each a little-endian u64.
pub fn request(count: u64, size: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.freeze()
}

fn parse_request(b: &[u8]) -> Option<(u64, usize)> {
    if b.len() != 16 {
        return None;
    }
    let count = u64::from_le_bytes(b[..8].try_into().ok()?);
    let size = u64::from_le_bytes(b[8..].try_into().ok()?);
    Some((count, usize::try_from(size).ok()?))
}

/// `bench.stream`'s handler: `count` messages of `size` bytes.
pub fn polycall_stream(request: Payload, _metadata: Metadata) -> MessageStream {
    match parse_request(&request.bytes) {
        None => polycall_core::stream::fail(Status::invalid_input(
            "bench.stream takes 16 bytes: count, size",
        )),
        Some((count, size)) => {
            let chunk = crate::static_payload(size);
            Box::pin(futures_util::stream::iter(
                (0..count).map(move |_| Ok(Payload::raw(Bytes::from_static(chunk)))),
            ))
        }
    }
}

/// `serve-raw-stream`: per connection, reads a 16-byte request and writes `count`
/// frames (4-byte little-endian length, then `size` bytes), batched into large writes.
pub async fn serve_raw(args: &Args) -> Result<(), Fail> {
    let listener = TcpListener::bind(args.need("--listen")?)
        .await
        .ctx("binding the raw streamer")?;
    args.ready(&listener.local_addr().ctx("local address")?.to_string())?;
    loop {
        let (mut s, _) = listener.accept().await.ctx("accepting")?;
        s.set_nodelay(true).ctx("TCP_NODELAY")?;
        tokio::spawn(async move {
            let mut req = [0u8; 16];
            if s.read_exact(&mut req).await.is_err() {
                return;
            }
            let Some((count, size)) = parse_request(&req) else {
                return;
            };
            let chunk = payload(size);
            let mut frame = BytesMut::with_capacity(4 + size);
            frame.extend_from_slice(&(size as u32).to_le_bytes());
            frame.extend_from_slice(&chunk);
            // Frames per write: about 256 KiB of them, as polycall's writer batches.
            let per_write = (256 * 1024 / frame.len()).max(1) as u64;
            let mut batch = BytesMut::with_capacity(frame.len() * per_write as usize);
            let mut left = count;
            while left > 0 {
                let n = left.min(per_write);
                batch.clear();
                for _ in 0..n {
                    batch.extend_from_slice(&frame);
                }
                if s.write_all(&batch).await.is_err() {
                    return;
                }
                left -= n;
            }
        });
    }
}

async fn read_raw(ep: &str, count: u64, size: usize) -> Result<u64, Fail> {
    let mut s = TcpStream::connect(ep)
        .await
        .ctx("connecting to serve-raw-stream")?;
    s.set_nodelay(true).ctx("TCP_NODELAY")?;
    s.write_all(&request(count, size as u64))
        .await
        .ctx("sending the request")?;
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut got = 0u64;
    while got < count {
        if s.read_buf(&mut buf).await.ctx("reading the stream")? == 0 {
            return Err(Fail::new("raw stream", "the server closed early"));
        }
        while buf.len() >= 4 {
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len != size {
                return Err(Fail::new("raw stream", format!("a frame of {len} bytes")));
            }
            if buf.len() < 4 + len {
                buf.reserve(4 + len - buf.len());
                break;
            }
            let _ = buf.split_to(4 + len);
            got += 1;
        }
    }
    Ok(got)
}

/// Reads a polycall server stream one message at a time (`StreamExt::next`, a
/// `Payload` each) or, with `batches`, with `Streaming::next_batch` (borrowed messages).
async fn read_polycall(ep: &str, count: u64, size: usize, batches: bool) -> Result<u64, Fail> {
    let mut config = ChannelConfig::default();
    config.connection.proto.compression.candidates = vec![];
    let ch = Channel::with_config(ep.parse().ctx("--endpoint")?, config)
        .await
        .ctx("connecting the polycall channel")?;
    let call = Call::new(METHOD, Payload::raw(request(count, size as u64))).ctx("the call")?;
    let mut s = ch.server_stream(call).await.ctx("opening the stream")?;
    let wrong = |len: usize| Fail::new("polycall stream", format!("a message of {len}"));
    let mut got = 0u64;
    if batches {
        while let Some(batch) = s.next_batch().await {
            let batch = batch.ctx("a batch of stream messages")?;
            for m in batch.iter() {
                if m.len() != size {
                    return Err(wrong(m.len()));
                }
                got += 1;
            }
        }
    } else {
        while let Some(m) = s.next().await {
            let m = m.ctx("a stream message")?;
            if m.len() != size {
                return Err(wrong(m.len()));
            }
            got += 1;
        }
    }
    Ok(got)
}

/// Runs `stream-load` and prints its JSON line.
pub async fn run(args: &Args) -> Result<(), Fail> {
    let peer = args.need("--peer")?;
    let ep = args.need("--endpoint")?;
    let count: u64 = args.parse("--count")?;
    let size: usize = args.parse("--size")?;
    let pids: Vec<u32> = args
        .get("--server-pids")
        .unwrap_or("")
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect();
    // A warm-up stream (connections, allocator, TCP windows), not measured.
    let warm = (count / 20).max(1);
    let read = |n: u64| async move {
        match peer {
            "raw" => read_raw(ep, n, size).await,
            "polycall" => read_polycall(ep, n, size, false).await,
            "polycall-batch" => read_polycall(ep, n, size, true).await,
            "tonic" => crate::tonic_peer::read_stream(ep, n, size).await,
            other => Err(Fail::new(
                "--peer",
                format!("{other:?} is none of raw, polycall, polycall-batch, tonic"),
            )),
        }
    };
    read(warm).await?;
    let cpu0 = cpu_seconds(None);
    let server0: f64 = pids.iter().map(|p| cpu_seconds(Some(*p))).sum();
    let started = Instant::now();
    let got = read(count).await?;
    let secs = started.elapsed().as_secs_f64();
    let client_cpu = cpu_seconds(None) - cpu0;
    let server_cpu: f64 = pids.iter().map(|p| cpu_seconds(Some(*p))).sum::<f64>() - server0;
    if got != count {
        return Err(Fail::new("stream", format!("{got} messages of {count}")));
    }
    println!(
        "{}",
        serde_json::json!({
            "peer": peer,
            "count": count,
            "size": size,
            "seconds": secs,
            "messages_per_s": count as f64 / secs,
            "bytes_per_s": (count as f64 * size as f64) / secs,
            "client_cpu_s": client_cpu,
            "server_cpu_s": server_cpu,
        })
    );
    Ok(())
}
