//! Generates the Rust code (messages, clients, servers) of the meridian.v1 protocol, of
//! the demo.v1 sample API and of the ORCA load report, and one file descriptor set of
//! them all that server reflection serves. Needs `protoc` (Debian: protobuf-compiler).

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/meridian/v1/topology.proto",
    "proto/meridian/v1/router.proto",
    "proto/meridian/v1/discovery.proto",
    "proto/meridian/v1/registry.proto",
    "proto/meridian/v1/admin.proto",
    "proto/demo/v1/demo.proto",
    "proto/xds/data/orca/v3/orca_load_report.proto",
    "proto/xds/service/orca/v3/orca.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("meridian_descriptor.bin"))
        .compile_protos(PROTOS, &["proto"])
        .map_err(|e| {
            format!("compiling the meridian.v1 and demo.v1 protos failed (is protoc installed? `apt-get install protobuf-compiler`): {e}")
        })?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
