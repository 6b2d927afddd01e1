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

/// A small order record as JSON: the same fields every time, other values.
fn order(i: u32) -> Vec<u8> {
    let h = i.wrapping_mul(2_654_435_761);
    format!(
        r#"{{"order_id":"ord_{:08}","customer":"cus_{:06}","status":"{}","currency":"EUR","total_cents":{},"items":{},"created_at":"2025-03-{:02}T{:02}:{:02}:00Z"}}"#,
        h % 100_000_000,
        h % 1_000_000,
        ["pending", "paid", "shipped", "cancelled"][(h % 4) as usize],
        h % 100_000,
        1 + h % 9,
        1 + h % 28,
        h % 24,
        h % 60
    )
    .into_bytes()
}

/// On a slow link (10 Mbit/s), both sides sample a method's small messages, train a dictionary on
/// the offload runtime, ship it, and send the later messages compressed with it: the
/// calls and their replies come back intact, in under half their bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_messages_go_with_a_dictionary_trained_off_the_connection() {
    use polycall_proto::compress::{Algorithm, CompressionTotals};
    let slow = |c: &mut polycall_net::ConnectionConfig| {
        // 10 Mbit/s: a dictionary pays by far, however slowly this busy machine
        // compresses (the choice is made on measured times).
        c.link_throughput = Some(1.25e6);
        let totals = Arc::new(CompressionTotals::default());
        c.proto.compression_totals = Some(totals.clone());
        totals
    };
    let router = Router::new()
        .route(
            "orders.echo",
            MethodInfo::new("returns its input"),
            handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }),
        )
        .unwrap();
    let mut config = ServerConfig::default();
    let server_totals = slow(&mut config.connection);
    let server = Server::serve_router("127.0.0.1:0".parse().unwrap(), config, router)
        .await
        .unwrap();
    let mut client = ChannelConfig::default();
    let client_totals = slow(&mut client.connection);
    let ch = Channel::with_config(server.local_endpoint().clone(), client)
        .await
        .unwrap();
    let call = |i: u32| {
        let ch = ch.clone();
        async move {
            let sent = order(i);
            let r = ch
                .call(
                    Call::new(
                        "orders.echo",
                        Payload::new(sent.clone(), polycall_core::ContentType::Json),
                    )
                    .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(r.payload.bytes, sent);
        }
    };
    // Samples, then training: calls go on meanwhile. Training runs at the lowest
    // priority (the offload runtime): on a machine whose cores are busy it waits, so
    // the calls slow down to leave it room, for at most a minute.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut i = 0;
    while client_totals.get(Algorithm::ZstdDict).0 == 0
        || server_totals.get(Algorithm::ZstdDict).0 == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no dictionary in use after {i} calls"
        );
        call(i).await;
        i += 1;
        if i > 200 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    let (client_before, server_before) = (
        client_totals.get(Algorithm::ZstdDict),
        server_totals.get(Algorithm::ZstdDict),
    );
    for j in 0..300 {
        call(100_000 + j).await;
    }
    for (totals, before) in [
        (&client_totals, client_before),
        (&server_totals, server_before),
    ] {
        let (messages, raw, wire) = totals.get(Algorithm::ZstdDict);
        // The choice is made on measured times: nearly every one, not all.
        assert!(
            messages - before.0 >= 270,
            "{} of 300 used it",
            messages - before.0
        );
        assert!(
            (wire - before.2) * 2 <= raw - before.1,
            "{} bytes for {}",
            wire - before.2,
            raw - before.1
        );
    }
    server.shutdown().await;
}
