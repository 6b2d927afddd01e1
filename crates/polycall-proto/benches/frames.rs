//! Encode and decode time per frame at 64 B, 4 KiB and 256 KiB payloads, with and
//! without the CRC32C trailer. Run with `cargo xtask bench proto`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use polycall_core::ContentType;
use polycall_proto::WireMeta;
use polycall_proto::compress::Algorithm;
use polycall_proto::frame::{self, CallFrame, Frame, FrameBuf, MethodRef};

const SIZES: [(&str, usize); 3] = [("64B", 64), ("4KiB", 4096), ("256KiB", 256 * 1024)];

/// A hot-path call frame: interned method id, a deadline, a payload.
fn call(size: usize) -> Frame {
    Frame::Call(CallFrame {
        call_id: 12_345,
        method: MethodRef { id: 3, name: None },
        content_type: ContentType::Raw,
        compression: Algorithm::None,
        meta: WireMeta {
            timeout: Some(Duration::from_millis(250)),
            ..WireMeta::default()
        },
        more: false,
        message_len: None,
        stream: false,
        empty: false,
        payload: Bytes::from((0..size).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>()),
    })
}

fn benches(c: &mut Criterion) {
    for (group, op) in [("encode", 0), ("decode", 1), ("roundtrip", 2)] {
        let mut g = c.benchmark_group(group);
        for (label, size) in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            for crc in [false, true] {
                let f = call(size);
                let encoded = f.to_bytes(crc);
                let id = format!("{label}_{}", if crc { "crc32c" } else { "plain" });
                let max = u32::MAX;
                match op {
                    0 => {
                        let mut out = FrameBuf::new();
                        let mut chunks = Vec::with_capacity(4);
                        g.bench_function(&id, |b| {
                            b.iter(|| {
                                black_box(&f).encode(&mut out, crc);
                                out.drain_chunks(&mut chunks);
                                chunks.clear();
                            })
                        });
                    }
                    1 => {
                        g.bench_function(&id, |b| {
                            b.iter_batched(
                                || BytesMut::from(&encoded[..]),
                                |mut buf| black_box(frame::decode(&mut buf, max, crc).unwrap()),
                                BatchSize::SmallInput,
                            )
                        });
                    }
                    _ => {
                        let mut out = FrameBuf::new();
                        let mut chunks = Vec::with_capacity(4);
                        g.bench_function(&id, |b| {
                            b.iter_batched(
                                || BytesMut::with_capacity(encoded.len()),
                                |mut buf| {
                                    black_box(&f).encode(&mut out, crc);
                                    out.drain_chunks(&mut chunks);
                                    for c in chunks.drain(..) {
                                        buf.extend_from_slice(&c);
                                    }
                                    black_box(frame::decode(&mut buf, max, crc).unwrap())
                                },
                                BatchSize::SmallInput,
                            )
                        });
                    }
                }
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = frames;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(frames);
