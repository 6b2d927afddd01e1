//! The HTTP peer of `cargo xtask bench gateway`: the least an HTTP/JSON server can do —
//! hyper (HTTP/1.1 and HTTP/2, as the gateway), reading the body and answering it as
//! JSON. What a gateway in front of polycall is measured against.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;

use crate::{Args, Ctx, Fail};

/// `serve-http-echo --listen ADDR [--ready FILE]`: answers every request with its body.
pub async fn serve(args: &Args) -> Result<(), Fail> {
    let listener = TcpListener::bind(args.need("--listen")?)
        .await
        .ctx("binding the HTTP echo")?;
    args.ready(&listener.local_addr().ctx("local address")?.to_string())?;
    loop {
        let (s, _) = listener.accept().await.ctx("accepting")?;
        s.set_nodelay(true).ctx("TCP_NODELAY")?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = match req.into_body().collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => Bytes::new(),
                    };
                    let mut r = Response::new(Full::new(body));
                    *r.status_mut() = StatusCode::OK;
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(r)
                },
            );
            let http =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = http
                .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                .await;
        });
    }
}
