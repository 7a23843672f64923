//! The example configuration files in deploy/ load and validate, so what operators copy
//! from is never broken.

use std::path::Path;

use meridian_shared::config::{ControlPlaneConfig, ProxyConfig, Validate, load_file};

fn deploy(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

#[test]
fn the_example_control_plane_config_is_valid() {
    let config: ControlPlaneConfig = load_file(&deploy("control-plane.toml")).unwrap();
    config.validate().unwrap();
    assert_eq!(config.listen.grpc.to_string(), "127.0.0.1:7700");
}

#[test]
fn the_example_proxy_config_is_valid() {
    let config: ProxyConfig = load_file(&deploy("proxy.toml")).unwrap();
    config.validate().unwrap();
    assert_eq!(config.region, "eu-west");
}
