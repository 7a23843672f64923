//! `RoutingDiscovery/StreamRoutes` on the wire, served without re-encoding. tonic's
//! generated server encodes every response message into a buffer of its stream, which
//! then keeps that buffer (a whole snapshot, often hundreds of KiB) for the stream's
//! life, per proxy. Here each response is framed by hand: a small per-stream head (the
//! gRPC length prefix and the nonce) followed by the shared, already encoded update
//! (see [`crate::routing::encoded`]), so a thousand proxies receiving the same snapshot
//! share one copy of it. Every other method of the service goes to the generated server.
//!
//! The framing is ordinary gRPC: a `StreamRoutesResponse` is field 1 (nonce) and field 2
//! (snapshot) or 3 (delta), each length-delimited, so a pre-encoded `RoutingTable` or
//! `RoutingDelta` is written as the body of field 2 or 3 unchanged.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use meridian_proto::v1 as pb;
use meridian_proto::v1::routing_discovery_server::RoutingDiscoveryServer;
use meridian_shared::domain::limits::routing_message_limit;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;
use tonic::{Request, Status};
use tonic_prost::ProstCodec;

use super::DiscoveryService;
use super::session::Outbound;
use crate::routing::UpdateKind;

const STREAM_ROUTES_PATH: &str = "/meridian.v1.RoutingDiscovery/StreamRoutes";

/// The routing-discovery service: `StreamRoutes` framed here, the rest generated.
#[derive(Clone)]
pub struct DiscoveryRoutes {
    discovery: Arc<DiscoveryService>,
    generated: RoutingDiscoveryServer<DiscoveryService>,
}

impl DiscoveryRoutes {
    pub fn new(discovery: DiscoveryService) -> Self {
        let discovery = Arc::new(discovery);
        DiscoveryRoutes {
            generated: RoutingDiscoveryServer::from_arc(Arc::clone(&discovery))
                .max_encoding_message_size(routing_message_limit()),
            discovery,
        }
    }
}

impl NamedService for DiscoveryRoutes {
    const NAME: &'static str = <RoutingDiscoveryServer<DiscoveryService> as NamedService>::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<Body>> for DiscoveryRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != STREAM_ROUTES_PATH {
            return Box::pin(self.generated.call(request));
        }
        let discovery = Arc::clone(&self.discovery);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let decoder =
                ProstCodec::<pb::StreamRoutesResponse, pb::StreamRoutesRequest>::default()
                    .decoder();
            let inbound = Streaming::new_request(decoder, body, None, None);
            let request = Request::from_http(http::Request::from_parts(parts, inbound));
            let response = match discovery.open_stream(request).await {
                Ok(updates) => grpc_response(updates),
                Err(status) => status.into_http(),
            };
            Ok(response)
        })
    }
}

fn grpc_response(updates: mpsc::Receiver<Outbound>) -> http::Response<Body> {
    let body = UpdateBody {
        updates,
        pending: None,
        finished: false,
    };
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Body::new(body))
        .expect("a static gRPC response head is valid")
}

/// The response body: each update as its head then its shared bytes, then OK trailers
/// when the session ends.
struct UpdateBody {
    updates: mpsc::Receiver<Outbound>,
    /// The shared update bytes whose head was just sent.
    pending: Option<Bytes>,
    finished: bool,
}

impl http_body::Body for UpdateBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(update) = self.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(update))));
        }
        if self.finished {
            return Poll::Ready(None);
        }
        match self.updates.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(outbound))
                if outbound.update.bytes.len() > routing_message_limit() =>
            {
                self.finished = true;
                let status = Status::resource_exhausted(format!(
                    "the routing update is {} bytes, over the {}-byte message limit; lower the federation's limits (meridianctl config)",
                    outbound.update.bytes.len(),
                    routing_message_limit()
                ));
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
            }
            Poll::Ready(Some(outbound)) => {
                let head = message_head(&outbound);
                self.pending = Some(outbound.update.bytes);
                Poll::Ready(Some(Ok(Frame::data(head))))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.pending.is_none()
    }
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only a message that is not a valid header value fails; the code alone still is.
        Status::new(status.code(), "")
            .add_header(&mut trailers)
            .expect("a status code alone is a valid header");
    }
    trailers
}

/// The gRPC length prefix and every `StreamRoutesResponse` byte before the update's own:
/// the nonce field and the update field's key and length.
fn message_head(outbound: &Outbound) -> Bytes {
    let nonce = outbound.nonce.as_bytes();
    let update_len = outbound.update.bytes.len();
    let tag = match outbound.update.kind {
        UpdateKind::Snapshot => 2,
        UpdateKind::Delta => 3,
    };
    let nonce_field = if nonce.is_empty() {
        0
    } else {
        1 + encoded_len_varint(nonce.len() as u64) + nonce.len()
    };
    let update_field = 1 + encoded_len_varint(update_len as u64) + update_len;
    let message_len = nonce_field + update_field;
    let mut head = BytesMut::with_capacity(5 + nonce_field + 1 + 10);
    head.put_u8(0); // not compressed
    head.put_u32(u32::try_from(message_len).expect("routing messages are bounded below 4 GiB"));
    if !nonce.is_empty() {
        encode_key(1, WireType::LengthDelimited, &mut head);
        encode_varint(nonce.len() as u64, &mut head);
        head.put_slice(nonce);
    }
    encode_key(tag, WireType::LengthDelimited, &mut head);
    encode_varint(update_len as u64, &mut head);
    head.freeze()
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::routing::EncodedUpdate;

    fn framed(outbound: Outbound) -> Vec<u8> {
        let mut bytes = message_head(&outbound).to_vec();
        bytes.extend_from_slice(&outbound.update.bytes);
        bytes
    }

    #[test]
    fn hand_framed_responses_decode_as_the_generated_message() {
        let table = pb::RoutingTable {
            version: 42,
            federation: "prod".into(),
            nodes: vec![pb::Node {
                id: "eu-1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let delta = pb::RoutingDelta {
            version: 43,
            base_version: 42,
            removed_nodes: vec!["eu-1".into()],
            ..Default::default()
        };
        for (kind, bytes, expected) in [
            (
                UpdateKind::Snapshot,
                table.encode_to_vec(),
                pb::stream_routes_response::Update::Snapshot(table.clone()),
            ),
            (
                UpdateKind::Delta,
                delta.encode_to_vec(),
                pb::stream_routes_response::Update::Delta(delta.clone()),
            ),
        ] {
            let frame = framed(Outbound {
                nonce: "17".into(),
                update: EncodedUpdate {
                    kind,
                    bytes: bytes.into(),
                },
            });
            assert_eq!(frame[0], 0, "uncompressed");
            let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
            assert_eq!(len, frame.len() - 5, "the length prefix covers the message");
            let decoded = pb::StreamRoutesResponse::decode(&frame[5..]).unwrap();
            assert_eq!(decoded.nonce, "17");
            assert_eq!(decoded.update, Some(expected));
        }
    }
}
