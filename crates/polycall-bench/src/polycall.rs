//! The polycall peers: a direct server, and a provider for the routed path (client →
//! `polycall run` → provider).

use polycall_core::{Call, MethodInfo, Reply, Router, handler_fn};
use polycall_net::{Server, ServerConfig};

use crate::{Args, Ctx, Fail};

/// The method every polycall peer serves.
pub const METHOD: &str = "bench.echo";

/// `bench.echo` answers at once and says so (`MethodInfo::inline`): it runs in the
/// connection's task. Unmarked methods run on polycall's handler runtime, a thread hop
/// each way (docs/benchmarks.md has both figures).
fn echo_router() -> Result<Router, Fail> {
    Router::new()
        .route(
            METHOD,
            MethodInfo::new("returns its input")
                .idempotent(true)
                .inline(true),
            handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }),
        )
        .and_then(|r| {
            r.route_server_stream(
                crate::stream_load::METHOD,
                MethodInfo::new("streams count messages of size bytes").inline(true),
                crate::stream_load::polycall_stream,
            )
        })
        .ctx("building the echo router")
}

/// `serve-polycall`: a polycall server (compression off, like every peer) with `bench.echo`.
pub async fn serve(args: &Args) -> Result<(), Fail> {
    let mut config = ServerConfig::default();
    config.connection.proto.compression.candidates = vec![];
    let listen = args.need("--listen")?.parse().ctx("--listen")?;
    let server = Server::serve_router(listen, config, echo_router()?)
        .await
        .ctx("starting the polycall server")?;
    args.ready(&server.local_endpoint().to_string())?;
    std::future::pending::<()>().await;
    Ok(())
}

/// `provide`: registers `bench.echo` with the runtime at `--runtime` and serves it.
pub async fn provide(args: &Args) -> Result<(), Fail> {
    let ep = args.need("--runtime")?.parse().ctx("--runtime")?;
    let _provider = polycall_runtime::Provider::start(ep, echo_router()?)
        .await
        .ctx("registering with the runtime")?;
    args.ready("providing bench.echo")?;
    std::future::pending::<()>().await;
    Ok(())
}
