//! The tonic peer: gRPC unary echo over HTTP/2 (`proto/echo.proto`, compiled at build
//! time by protox + tonic-prost-build). tonic's defaults, with TCP_NODELAY on both ends
//! (as every other peer).

use bytes::Bytes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use crate::{Args, Ctx, Fail};

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod pb {
    tonic::include_proto!("bench");
}

use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{Msg, StreamReq};

struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, request: Request<Msg>) -> Result<Response<Msg>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    type StreamStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Msg, Status>> + Send>>;

    async fn stream(
        &self,
        request: Request<StreamReq>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let StreamReq { count, size } = request.into_inner();
        let chunk = crate::static_payload(size as usize);
        let messages = futures_util::stream::iter((0..count).map(move |_| {
            Ok(Msg {
                payload: bytes::Bytes::from_static(chunk),
            })
        }));
        Ok(Response::new(Box::pin(messages)))
    }
}

/// Opens a `Stream` call of `count` messages of `size` bytes on a new connection and
/// reads it to its end; returns the number of messages.
pub async fn read_stream(ep: &str, count: u64, size: usize) -> Result<u64, Fail> {
    let conn = TonicConn::open(ep).await?;
    let mut client = conn.0.max_decoding_message_size(usize::MAX);
    let mut s = client
        .stream(StreamReq {
            count,
            size: size as u64,
        })
        .await
        .ctx("opening the tonic stream")?
        .into_inner();
    let mut got = 0u64;
    while let Some(m) = s.message().await.ctx("a tonic stream message")? {
        if m.payload.len() != size {
            return Err(Fail::new(
                "tonic stream",
                format!("a message of {}", m.payload.len()),
            ));
        }
        got += 1;
    }
    Ok(got)
}

/// `serve-tonic`: a tonic server with the `Echo` service.
pub async fn serve(args: &Args) -> Result<(), Fail> {
    let addr = args.need("--listen")?.parse().ctx("--listen")?;
    let incoming = TcpIncoming::bind(addr)
        .ctx("binding the tonic server")?
        .with_nodelay(Some(true));
    args.ready(&incoming.local_addr().ctx("local address")?.to_string())?;
    Server::builder()
        .tcp_nodelay(true)
        .add_service(EchoServer::new(EchoService))
        .serve_with_incoming(incoming)
        .await
        .ctx("serving tonic")
}

/// One HTTP/2 connection to a `serve-tonic` process.
#[derive(Clone)]
pub struct TonicConn(EchoClient<Channel>);

impl TonicConn {
    /// Connects (eagerly: the connection is up when this returns).
    pub async fn open(ep: &str) -> Result<TonicConn, Fail> {
        let channel = Endpoint::from_shared(format!("http://{ep}"))
            .ctx("the tonic endpoint")?
            .tcp_nodelay(true)
            .connect()
            .await
            .ctx("connecting to serve-tonic")?;
        Ok(TonicConn(EchoClient::new(channel)))
    }

    /// One unary call; returns the echoed payload's length.
    pub async fn call(&self, payload: Bytes) -> Result<usize, Fail> {
        let reply = self
            .0
            .clone()
            .echo(Msg { payload })
            .await
            .ctx("tonic call")?;
        Ok(reply.into_inner().payload.len())
    }
}
