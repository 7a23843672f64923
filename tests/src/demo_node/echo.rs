//! `demo.v1.Echo`: the sample application service. Every call passes the node's knobs
//! first ([`NodeBehaviour::admit`]); successful responses copy `x-echo-*` request metadata
//! into their headers so tests can see metadata cross a proxy both ways.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_server::Echo;
use tonic::metadata::{KeyAndValueRef, MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use super::behaviour::NodeBehaviour;

/// Request metadata keys with this prefix come back as response headers.
pub const ECHO_PREFIX: &str = "x-echo-";
/// The trailer (a header when the code is OK) that carries FailRequest.trailer.
pub const DEMO_TRAILER: &str = "x-demo-trailer";
/// The response header holding the `grpc-timeout` the call arrived with, if any, so a
/// test can see the deadline a proxy passed on.
pub const RECEIVED_TIMEOUT_HEADER: &str = "x-node-grpc-timeout";

type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Echo service of one node.
pub struct EchoService {
    behaviour: Arc<NodeBehaviour>,
}

impl EchoService {
    pub fn new(behaviour: Arc<NodeBehaviour>) -> Self {
        EchoService { behaviour }
    }

    fn reply(&self, request: demo::SayRequest) -> demo::SayReply {
        demo::SayReply {
            text: request.text,
            payload: request.payload,
            node_id: self.behaviour.node_id().to_owned(),
        }
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn say(
        &self,
        request: Request<demo::SayRequest>,
    ) -> Result<Response<demo::SayReply>, Status> {
        self.behaviour.received(request.get_ref().payload.len());
        self.behaviour.admit(request.get_ref().delay_ms).await?;
        let echoed = echoed_metadata(request.metadata());
        Ok(with_metadata(self.reply(request.into_inner()), echoed))
    }

    type ChatStream = ReplyStream<demo::SayReply>;

    async fn chat(
        &self,
        request: Request<Streaming<demo::SayRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        self.behaviour.admit(0).await?;
        let echoed = echoed_metadata(request.metadata());
        let node_id = self.behaviour.node_id().to_owned();
        let behaviour = Arc::clone(&self.behaviour);
        // `then` answers one request at a time, so replies keep the requests' order.
        let replies = request.into_inner().then(move |message| {
            let node_id = node_id.clone();
            let behaviour = Arc::clone(&behaviour);
            async move {
                let message = message?;
                behaviour.received(message.payload.len());
                sleep_ms(message.delay_ms).await;
                Ok(demo::SayReply {
                    text: message.text,
                    payload: message.payload,
                    node_id,
                })
            }
        });
        Ok(with_metadata(Box::pin(replies) as Self::ChatStream, echoed))
    }

    type CountStream = ReplyStream<demo::CountReply>;

    async fn count(
        &self,
        request: Request<demo::CountRequest>,
    ) -> Result<Response<Self::CountStream>, Status> {
        self.behaviour.admit(0).await?;
        let echoed = echoed_metadata(request.metadata());
        let demo::CountRequest { n, interval_ms } = request.into_inner();
        let node_id = self.behaviour.node_id().to_owned();
        let replies = futures::stream::iter(1..=n).then(move |sequence| {
            let node_id = node_id.clone();
            async move {
                if sequence > 1 {
                    sleep_ms(interval_ms).await;
                }
                Ok(demo::CountReply { sequence, node_id })
            }
        });
        Ok(with_metadata(
            Box::pin(replies) as Self::CountStream,
            echoed,
        ))
    }

    async fn collect(
        &self,
        request: Request<Streaming<demo::SayRequest>>,
    ) -> Result<Response<demo::CollectReply>, Status> {
        self.behaviour.admit(0).await?;
        let echoed = echoed_metadata(request.metadata());
        let mut inbound = request.into_inner();
        let mut reply = demo::CollectReply {
            node_id: self.behaviour.node_id().to_owned(),
            ..Default::default()
        };
        while let Some(message) = inbound.message().await? {
            self.behaviour.received(message.payload.len());
            sleep_ms(message.delay_ms).await;
            reply.count += 1;
            reply.texts.push(message.text);
            reply.payload_bytes += message.payload.len() as u64;
        }
        Ok(with_metadata(reply, echoed))
    }

    async fn fail(
        &self,
        request: Request<demo::FailRequest>,
    ) -> Result<Response<demo::SayReply>, Status> {
        self.behaviour.admit(0).await?;
        let demo::FailRequest {
            code,
            message,
            trailer,
        } = request.into_inner();
        let code = requested_code(code)?;
        let mut metadata = MetadataMap::new();
        if !trailer.is_empty() {
            let value = MetadataValue::try_from(trailer.as_str()).map_err(|_| {
                Status::invalid_argument(format!(
                    "trailer: {trailer:?} is not valid ASCII metadata"
                ))
            })?;
            metadata.insert(DEMO_TRAILER, value);
        }
        if code == Code::Ok {
            let reply = self.reply(demo::SayRequest {
                text: message,
                ..Default::default()
            });
            return Ok(with_metadata(reply, metadata));
        }
        Err(Status::with_metadata(code, message, metadata))
    }
}

/// The status code a FailRequest asks for.
fn requested_code(code: u32) -> Result<Code, Status> {
    match i32::try_from(code) {
        Ok(number @ 0..=16) => Ok(Code::from(number)),
        _ => Err(Status::invalid_argument(format!(
            "code: {code} is not a gRPC status code (0 to 16)"
        ))),
    }
}

/// `/demo.v1.Echo/<Method>` for a call to `/<alias>/<Method>` of one of `aliases`; other
/// calls as they are.
pub fn unalias(
    mut request: http::Request<tonic::body::Body>,
    aliases: &[String],
) -> http::Request<tonic::body::Body> {
    let path = request.uri().path();
    let aliased = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(service, _)| aliases.iter().any(|a| a == service));
    if let Some((_, method)) = aliased
        && let Ok(uri) = format!("/{}/{method}", demo::echo_server::SERVICE_NAME).parse()
    {
        *request.uri_mut() = uri;
    }
    request
}

/// The request metadata whose keys start with [`ECHO_PREFIX`], ASCII and binary alike, and
/// the call's `grpc-timeout` as [`RECEIVED_TIMEOUT_HEADER`].
pub fn echoed_metadata(request: &MetadataMap) -> MetadataMap {
    let mut echoed = MetadataMap::new();
    if let Some(timeout) = request.get("grpc-timeout") {
        echoed.insert(RECEIVED_TIMEOUT_HEADER, timeout.clone());
    }
    for entry in request.iter() {
        match entry {
            KeyAndValueRef::Ascii(key, value) if key.as_str().starts_with(ECHO_PREFIX) => {
                echoed.append(key.clone(), value.clone());
            }
            KeyAndValueRef::Binary(key, value) if key.as_str().starts_with(ECHO_PREFIX) => {
                echoed.append_bin(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    echoed
}

fn with_metadata<T>(message: T, metadata: MetadataMap) -> Response<T> {
    let mut response = Response::new(message);
    *response.metadata_mut() = metadata;
    response
}

async fn sleep_ms(ms: u32) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_x_echo_keys_are_echoed() {
        let mut request = MetadataMap::new();
        request.insert("x-echo-user", "alice".parse().unwrap());
        request.append("x-echo-user", "bob".parse().unwrap());
        request.insert_bin("x-echo-blob-bin", MetadataValue::from_bytes(b"\x00\x01"));
        request.insert("x-other", "no".parse().unwrap());
        let echoed = echoed_metadata(&request);
        let users: Vec<_> = echoed.get_all("x-echo-user").iter().collect();
        assert_eq!(users, ["alice", "bob"]);
        assert_eq!(
            echoed
                .get_bin("x-echo-blob-bin")
                .unwrap()
                .to_bytes()
                .unwrap(),
            &b"\x00\x01"[..]
        );
        assert!(echoed.get("x-other").is_none());
    }

    #[test]
    fn codes_above_16_are_refused() {
        assert_eq!(requested_code(14).unwrap(), Code::Unavailable);
        assert_eq!(requested_code(0).unwrap(), Code::Ok);
        assert_eq!(
            requested_code(17).unwrap_err().code(),
            Code::InvalidArgument
        );
    }
}
