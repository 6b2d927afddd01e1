//! The NATS peer: request/reply through a real `nats-server` broker (routed, like
//! polycall's runtime): the load client requests on subject `bench.echo`, a responder
//! process (queue group `bench`) publishes the payload back to the reply inbox.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::{Args, Ctx, Fail};

/// The subject requests go to.
pub const SUBJECT: &str = "bench.echo";

/// Connects to the broker, retrying for up to 30 s while it starts.
async fn connect(addr: &str) -> Result<async_nats::Client, Fail> {
    let started = Instant::now();
    loop {
        match async_nats::ConnectOptions::new()
            .no_echo()
            .request_timeout(Some(Duration::from_secs(30)))
            .connect(addr)
            .await
        {
            Ok(c) => return Ok(c),
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                return Err(Fail::new(
                    format!("connecting to nats-server at {addr}"),
                    format!("{e}; is nats-server running (apt-get install nats-server)?"),
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `serve-nats`: answers every request on [`SUBJECT`] with its payload.
pub async fn serve(args: &Args) -> Result<(), Fail> {
    let client = connect(args.need("--nats")?).await?;
    let mut requests = client
        .queue_subscribe(SUBJECT, "bench".to_owned())
        .await
        .ctx("subscribing to bench.echo")?;
    // The subscription is known to the server once a flush returns.
    client.flush().await.ctx("flushing the subscription")?;
    args.ready("responding on bench.echo")?;
    while let Some(msg) = requests.next().await {
        if let Some(reply) = msg.reply {
            client
                .publish(reply, msg.payload)
                .await
                .ctx("publishing a reply")?;
        }
    }
    Err(Fail::new(
        "serve-nats",
        "the subscription ended (broker gone?)",
    ))
}

/// One connection to the broker.
#[derive(Clone)]
pub struct NatsConn(async_nats::Client);

impl NatsConn {
    /// Connects to the broker at `addr`.
    pub async fn open(addr: &str) -> Result<NatsConn, Fail> {
        Ok(NatsConn(connect(addr).await?))
    }

    /// One request; returns the reply payload's length.
    pub async fn call(&self, payload: Bytes) -> Result<usize, Fail> {
        let reply = self.0.request(SUBJECT, payload).await.ctx("nats request")?;
        Ok(reply.payload.len())
    }
}
