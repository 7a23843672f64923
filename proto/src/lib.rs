//! The `meridian.v1` protocol: the generated messages, clients and servers for every
//! Meridian service, and the descriptor set that server reflection serves so `grpcurl`
//! works without local .proto files. Also `demo.v1`, the sample application API that
//! `meridian-demo-node` serves, so demos and tests exercise services Meridian has no code
//! for. The .proto files under `proto/` are the reference.

#![forbid(unsafe_code)]

/// Package `meridian.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("meridian.v1");
}

/// The sample application API, not part of the Meridian protocol.
pub mod demo {
    /// Package `demo.v1`: the `Echo` service and the `DemoControl` knobs of
    /// `meridian-demo-node`.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("demo.v1");
    }
}

/// The ORCA backend-metrics report nodes may attach to responses (trailer
/// `endpoint-load-metrics-bin`), and the out-of-band stream they may serve it on. The
/// modules follow the packages (generated code names one from the other by path);
/// [`xds::orca`] and [`xds::orca_service`] are the short names.
pub mod xds {
    pub use data::orca::v3 as orca;
    pub use service::orca::v3 as orca_service;

    pub mod data {
        pub mod orca {
            /// Package `xds.data.orca.v3`.
            pub mod v3 {
                #![allow(clippy::all, missing_docs)]
                tonic::include_proto!("xds.data.orca.v3");
            }
        }
    }

    pub mod service {
        pub mod orca {
            /// Package `xds.service.orca.v3`: `OpenRcaService/StreamCoreMetrics`, a
            /// node's load reports at an interval the client asks for.
            pub mod v3 {
                #![allow(clippy::all, missing_docs)]
                tonic::include_proto!("xds.service.orca.v3");
            }
        }
    }
}

/// The trailer that carries a binary-encoded [`xds::orca::OrcaLoadReport`].
pub const ORCA_TRAILER: &str = "endpoint-load-metrics-bin";

/// The largest utilisation an ORCA report may carry (a fraction, 1.0 = fully used; a
/// node may report above 1 when it queues). Proxies drop reports outside 0 to this, and
/// the control plane refuses load reports that carry one.
pub const MAX_ORCA_UTILIZATION: f64 = 100.0;

/// Encoded `FileDescriptorSet` of every meridian.v1 and demo.v1 file, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("meridian_descriptor");
