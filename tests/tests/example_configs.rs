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
    assert_eq!(
        config.listener_limits,
        Default::default(),
        "the example shows the defaults"
    );
}

#[test]
fn the_example_proxy_config_is_valid() {
    let config: ProxyConfig = load_file(&deploy("proxy.toml")).unwrap();
    config.validate().unwrap();
    assert_eq!(config.region, "eu-west");
    assert_eq!(
        config.listener_limits,
        Default::default(),
        "the example shows the defaults"
    );
}

/// The TLS sections of deploy/proxy.toml are commented out (their files do not exist on
/// a fresh machine); uncommented, they must load and validate too.
#[test]
fn the_example_proxy_tls_sections_are_valid_once_uncommented() {
    let text = std::fs::read_to_string(deploy("proxy.toml")).unwrap();
    let start = text.find("# [listen_tls]").expect("a [listen_tls] example");
    let end = start
        + text[start..]
            .find("\n[log]")
            .expect("[log] after the TLS examples");
    let is_toml = |line: &str| {
        line.starts_with('[')
            || line
                .split_once(" = ")
                .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    };
    let uncommented: Vec<&str> = text[start..end]
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(code) if is_toml(code) => code,
            _ => line,
        })
        .collect();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let whole = format!(
        "{}{}\n{}",
        &text[..start],
        uncommented.join("\n"),
        &text[end..]
    );
    std::io::Write::write_all(&mut file, whole.as_bytes()).unwrap();
    let config: ProxyConfig = load_file(file.path()).unwrap();
    config.validate().unwrap();
    assert!(config.listen_tls.unwrap().client_ca.is_some());
    let control = config.control_plane_tls.unwrap();
    assert!(control.cert.is_some() && control.server_name.is_some());
    assert_eq!(config.upstream_tls.len(), 2);
    assert!(config.upstream_tls[0].server_name.is_some());
}

/// The control-plane configuration files of deploy/kubernetes and deploy/compose load and
/// validate, and listen where the kubelet's probes and Prometheus reach them.
#[test]
fn the_kubernetes_and_compose_control_plane_configs_are_valid() {
    for file in [
        "kubernetes/base/control-plane/control-plane.toml",
        "compose/control-plane.toml",
    ] {
        let config: ControlPlaneConfig =
            load_file(&deploy(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        config.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(config.listen.http.to_string(), "0.0.0.0:7701", "{file}");
        assert_eq!(
            config.store.etcd_endpoints.len(),
            3,
            "{file}: a 3-member etcd"
        );
    }
}

/// The proxy configuration files of deploy/kubernetes and deploy/compose load and
/// validate once the id and region their Deployments and services set in the environment
/// (MERIDIAN_PROXY_ID, MERIDIAN_REGION) are filled in.
#[test]
fn the_kubernetes_and_compose_proxy_configs_are_valid() {
    for file in ["kubernetes/base/proxy/proxy.toml", "compose/proxy.toml"] {
        let mut config: ProxyConfig =
            load_file(&deploy(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        config.id = "proxy-eu-west-0".into();
        config.region = "eu-west".into();
        config.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(config.listen.admin.to_string(), "0.0.0.0:7801", "{file}");
    }
}
