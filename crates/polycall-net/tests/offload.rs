//! Large messages compressed and decompressed off the connections' tasks, end to end:
//! a 1 MiB call compressed with brotli by the client (on the offload runtime), handed
//! to the server still compressed and decompressed there, its reply compressed by the
//! server and decompressed by the client the same way. Small calls on the same
//! connection are answered meanwhile.

use std::sync::Arc;

use polycall_core::{Call, MethodInfo, Payload, Reply, Router, handler_fn};
use polycall_net::{Channel, ChannelConfig, Server, ServerConfig};
use polycall_proto::compress::Choice;

fn brotli_over_a_slow_link(c: &mut polycall_net::ConnectionConfig) {
    c.proto.compression.candidates = vec![Choice::brotli(5)];
    c.link_throughput = Some(1e6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_compressed_messages_round_trip_through_the_offload_runtime() {
    let router = Router::new()
        .route(
            "bulk.echo",
            MethodInfo::new("returns its input"),
            handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }),
        )
        .unwrap();
    let mut config = ServerConfig::default();
    brotli_over_a_slow_link(&mut config.connection);
    let server = Server::serve_router("127.0.0.1:0".parse().unwrap(), config, router)
        .await
        .unwrap();
    let mut client = ChannelConfig::default();
    brotli_over_a_slow_link(&mut client.connection);
    let ch = Channel::with_config(server.local_endpoint().clone(), client)
        .await
        .unwrap();
    let text: Arc<Vec<u8>> = Arc::new(
        (0..1_048_576u32)
            .map(|i| b"the quick brown fox "[(i % 20) as usize] ^ (i / 4096) as u8)
            .collect(),
    );
    let mut big = Vec::new();
    for _ in 0..4 {
        let ch = ch.clone();
        let text = text.clone();
        big.push(tokio::spawn(async move {
            ch.call(Call::new("bulk.echo", Payload::raw(text.to_vec())).unwrap())
                .await
        }));
    }
    for i in 0..50u32 {
        let r = ch
            .call(Call::new("bulk.echo", Payload::raw(i.to_string())).unwrap())
            .await
            .unwrap();
        assert_eq!(r.payload.bytes, i.to_string().as_bytes());
    }
    for b in big {
        let r = b.await.unwrap().unwrap();
        assert_eq!(r.payload.bytes.len(), text.len());
        assert!(
            r.payload.bytes[..] == text[..],
            "the payload came back intact"
        );
    }
    server.shutdown().await;
}
