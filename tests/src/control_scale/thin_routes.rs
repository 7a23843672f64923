//! A thin client codec for `RoutingDiscovery/StreamRoutes`: it encodes requests as the
//! real messages but decodes responses into messages that keep only what the benchmark
//! tracks (versions, node ids and statuses), and reports each response's exact encoded
//! size. Protobuf skips the fields a message does not declare, so a thousand subscribers
//! decoding 10,000-node snapshots cost the machine (shared with the control plane under
//! test) a fraction of full decoding.

use meridian_proto::v1 as pb;
use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// `StreamRoutesResponse`, with its `update` oneof as two optional fields (the same
/// encoding).
#[derive(Clone, PartialEq, Message)]
pub struct ThinResponse {
    #[prost(string, tag = "1")]
    pub nonce: String,
    #[prost(message, optional, tag = "2")]
    pub snapshot: Option<ThinTable>,
    #[prost(message, optional, tag = "3")]
    pub delta: Option<ThinDelta>,
}

/// `RoutingTable`: version and nodes.
#[derive(Clone, PartialEq, Message)]
pub struct ThinTable {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(message, repeated, tag = "5")]
    pub nodes: Vec<ThinNode>,
}

/// `RoutingDelta`: versions and node changes.
#[derive(Clone, PartialEq, Message)]
pub struct ThinDelta {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(uint64, tag = "2")]
    pub base_version: u64,
    #[prost(message, repeated, tag = "7")]
    pub upserted_nodes: Vec<ThinNode>,
    #[prost(string, repeated, tag = "8")]
    pub removed_nodes: Vec<String>,
}

/// `Node`: id and status (`NodeStatus` as its number).
#[derive(Clone, PartialEq, Message)]
pub struct ThinNode {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int32, tag = "10")]
    pub status: i32,
}

/// One response as received: its encoded size and its thin decoding.
#[derive(Debug, Clone)]
pub struct Received {
    pub bytes: usize,
    pub message: ThinResponse,
}

/// Real requests out, thin responses in.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThinRoutesCodec;

impl Codec for ThinRoutesCodec {
    type Encode = pb::StreamRoutesRequest;
    type Decode = Received;
    type Encoder = RequestEncoder;
    type Decoder = ThinDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ThinDecoder
    }
}

#[derive(Debug)]
pub struct RequestEncoder;

impl Encoder for RequestEncoder {
    type Item = pb::StreamRoutesRequest;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a StreamRoutes request: {e}")))
    }
}

#[derive(Debug)]
pub struct ThinDecoder;

impl Decoder for ThinDecoder {
    type Item = Received;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Received>, Status> {
        let bytes = src.remaining();
        let message = ThinResponse::decode(src)
            .map_err(|e| Status::internal(format!("decoding a StreamRoutes response: {e}")))?;
        Ok(Some(Received { bytes, message }))
    }
}
