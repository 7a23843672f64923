//! The `meridian.v1` protocol: the generated messages, clients and servers for every
//! Meridian service, and the descriptor set that server reflection serves so `grpcurl`
//! works without local .proto files. The .proto files under `proto/` are the reference.

#![forbid(unsafe_code)]

/// Package `meridian.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("meridian.v1");
}

/// Encoded `FileDescriptorSet` of every meridian.v1 file, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("meridian_descriptor");
