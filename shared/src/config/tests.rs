//! The loader refuses bad files with errors that name the field and the value, and
//! accepts good ones.

use std::io::Write;
use std::path::Path;

use super::load::parse;
use super::*;

fn control_plane(text: &str) -> Result<ControlPlaneConfig, ConfigError> {
    let config: ControlPlaneConfig = parse(text, Path::new("control.toml"))?;
    config.validate().map(|()| config)
}

fn proxy(text: &str) -> Result<ProxyConfig, ConfigError> {
    let config: ProxyConfig = parse(text, Path::new("proxy.toml"))?;
    config.validate().map(|()| config)
}

#[test]
fn a_full_control_plane_file_loads() {
    let config = control_plane(
        r#"
        replica_id = "cp-1"
        [listen]
        grpc = "127.0.0.1:17700"
        http = "127.0.0.1:17701"
        [store]
        backend = "etcd"
        etcd_endpoints = ["http://127.0.0.1:2379", "http://127.0.0.1:22379"]
        prefix = "/test/"
        [election]
        lease_ttl_seconds = 5
        [[auth.tokens]]
        name = "alice"
        token = "0123456789abcdef0123"
        role = "operator"
        [log]
        format = "json"
        level = "debug"
        "#,
    )
    .unwrap();
    assert_eq!(config.listen.grpc.port(), 17700);
    assert_eq!(config.store.etcd_endpoints.len(), 2);
    assert_eq!(config.auth.tokens[0].role, Role::Operator);
    assert_eq!(config.log.format, crate::telemetry::LogFormat::Json);
}

#[test]
fn defaults_are_the_documented_addresses() {
    let config = control_plane("").unwrap();
    assert_eq!(config.listen.grpc.to_string(), "127.0.0.1:7700");
    assert_eq!(config.listen.http.to_string(), "127.0.0.1:7701");
    let config = proxy("id = \"p1\"\nregion = \"eu-west\"").unwrap();
    assert_eq!(config.listen.grpc.to_string(), "127.0.0.1:7800");
    assert_eq!(config.listen.admin.to_string(), "127.0.0.1:7801");
}

#[test]
fn a_value_of_the_wrong_type_names_its_field() {
    let err = control_plane("[listen]\ngrpc = \"not-an-address\"").unwrap_err();
    assert_eq!(err.field(), Some("listen.grpc"), "{err}");
    assert!(err.to_string().contains("control.toml"), "{err}");
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let err = control_plane("[store]\nprefixx = \"/m/\"").unwrap_err();
    assert!(err.to_string().contains("prefixx"), "{err}");
}

#[test]
fn an_unknown_role_names_its_field() {
    let err = control_plane(
        "[[auth.tokens]]\nname = \"bob\"\ntoken = \"0123456789abcdef\"\nrole = \"root\"",
    )
    .unwrap_err();
    assert_eq!(err.field(), Some("auth.tokens[0].role"), "{err}");
    assert!(err.to_string().contains("root"), "{err}");
}

#[test]
fn invalid_values_name_the_field_and_the_value() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[store]\nprefix = \"meridian\"",
            "store.prefix",
            "\"meridian\"",
        ),
        (
            "[store]\netcd_endpoints = [\"localhost:2379\"]",
            "store.etcd_endpoints[0]",
            "localhost:2379",
        ),
        ("[store]\netcd_endpoints = []", "store.etcd_endpoints", "[]"),
        (
            "[election]\nlease_ttl_seconds = 1000",
            "election.lease_ttl_seconds",
            "1000",
        ),
        ("replica_id = \"Bad Name\"", "replica_id", "Bad Name"),
        ("[log]\nlevel = \"info,=[\"", "log.level", "info,=["),
        (
            "[listen]\ngrpc = \"127.0.0.1:9000\"\nhttp = \"127.0.0.1:9000\"",
            "listen.http",
            "127.0.0.1:9000",
        ),
    ];
    for (text, field, value) in cases {
        let err = control_plane(text).unwrap_err();
        assert_eq!(err.field(), Some(*field), "{text}: {err}");
        assert!(
            err.to_string().contains(value),
            "{text}: {err} does not show {value}"
        );
    }
}

#[test]
fn a_short_token_is_refused_without_showing_it() {
    let err =
        control_plane("[[auth.tokens]]\nname = \"bob\"\ntoken = \"hunter2\"\nrole = \"viewer\"")
            .unwrap_err();
    assert_eq!(err.field(), Some("auth.tokens[0].token"));
    assert!(
        !err.to_string().contains("hunter2"),
        "the secret leaked: {err}"
    );
}

#[test]
fn token_debug_output_hides_the_secret() {
    let config = control_plane(
        "[[auth.tokens]]\nname = \"bob\"\ntoken = \"s3cr3t-s3cr3t-s3cr3t\"\nrole = \"viewer\"",
    )
    .unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
}

#[test]
fn proxy_files_are_validated() {
    let err = proxy("region = \"eu-west\"").unwrap_err();
    assert_eq!(err.field(), Some("id"));
    let err = proxy("id = \"p1\"\nregion = \"eu-west\"\ncontrol_planes = [\"127.0.0.1:7700\"]")
        .unwrap_err();
    assert_eq!(err.field(), Some("control_planes[0]"));
    let err = proxy("id = \"p1\"\nregion = \"eu-west\"\nmax_message_bytes = 12").unwrap_err();
    assert_eq!(err.field(), Some("max_message_bytes"));
    let err = proxy(
        "id = \"p1\"\nregion = \"eu-west\"\nretry_buffer_call_bytes = 10\nretry_buffer_total_bytes = 5",
    )
    .unwrap_err();
    assert_eq!(err.field(), Some("retry_buffer_call_bytes"));
}

#[test]
fn the_upstream_section_is_read_and_validated() {
    let config = proxy(
        "id = \"p1\"\nregion = \"eu-west\"\n[upstream]\nmax_requests_per_endpoint = 16\nstream_idle_timeout_ms = 0\ndefault_deadline_ms = 30000",
    )
    .unwrap();
    assert_eq!(config.upstream.max_requests_per_endpoint, 16);
    assert_eq!(config.upstream.stream_idle_timeout(), None);
    assert_eq!(
        config.upstream.default_deadline(),
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(
        config.upstream.max_streams_per_connection, 100,
        "unset keys keep their defaults"
    );
    assert_eq!(
        ProxyConfig::default().upstream.connection_window_bytes(),
        100 * 1024 * 1024,
        "room for every stream of a connection at its full window"
    );
    for (key, field) in [
        (
            "max_requests_per_endpoint = 0",
            "upstream.max_requests_per_endpoint",
        ),
        (
            "stream_idle_timeout_ms = 5",
            "upstream.stream_idle_timeout_ms",
        ),
        ("stream_window_bytes = 1000", "upstream.stream_window_bytes"),
        (
            "stream_window_bytes = 67108864\nmax_streams_per_connection = 100",
            "upstream.stream_window_bytes",
        ),
    ] {
        let err = proxy(&format!(
            "id = \"p1\"\nregion = \"eu-west\"\n[upstream]\n{key}"
        ))
        .unwrap_err();
        assert_eq!(err.field(), Some(field), "{key}: {err}");
    }
}

#[test]
fn load_file_reads_from_disk_and_reports_a_missing_file() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "id = \"p1\"\nregion = \"eu-west\"\nzone = \"eu-west-a\""
    )
    .unwrap();
    let config: ProxyConfig = load_file(file.path()).unwrap();
    assert_eq!(config.zone, "eu-west-a");

    let err = load_file::<ProxyConfig>(Path::new("/nonexistent/meridian.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/meridian.toml"));
}

#[test]
fn proxy_tls_sections_load() {
    let config = proxy(
        r#"
        id = "p1"
        region = "eu-west"
        control_planes = ["https://cp.example:7700", "http://127.0.0.1:7710"]
        [listen_tls]
        cert = "/tls/proxy.pem"
        key = "/tls/proxy.key"
        client_ca = "/tls/clients.pem"
        [control_plane_tls]
        ca = "/tls/ca.pem"
        cert = "/tls/client.pem"
        key = "/tls/client.key"
        server_name = "cp.internal"
        [[upstream_tls]]
        services = ["demo.v1.Echo"]
        ca = "/tls/nodes.pem"
        server_name = "nodes.internal"
        [[upstream_tls]]
        services = ["*"]
        ca = "/tls/ca.pem"
        "#,
    )
    .unwrap();
    assert!(config.listen_tls.unwrap().files().require_client_cert);
    let control = config.control_plane_tls.unwrap().files();
    assert_eq!(control.server_name.as_deref(), Some("cp.internal"));
    assert!(control.cert.is_some() && control.key.is_some());
    let [echo, every] = &config.upstream_tls[..] else {
        panic!("two rules expected: {:?}", config.upstream_tls)
    };
    assert!(echo.matches("demo.v1.Echo") && !echo.matches("demo.v1.Other"));
    assert!(every.matches("demo.v1.Other"));
    assert_eq!(
        echo.client_tls().server_name.as_deref(),
        Some("nodes.internal")
    );
}

#[test]
fn proxy_tls_problems_name_the_field() {
    let base = "id = \"p1\"\nregion = \"eu-west\"\n";
    let cases: &[(&str, &str)] = &[
        (
            "control_planes = [\"https://cp.example:7700\"]",
            "control_plane_tls.ca",
        ),
        (
            "[control_plane_tls]\nca = \"/ca.pem\"\ncert = \"/c.pem\"",
            "control_plane_tls.key",
        ),
        (
            "[control_plane_tls]\nca = \"/ca.pem\"\nkey = \"/c.key\"",
            "control_plane_tls.cert",
        ),
        (
            "[[upstream_tls]]\nservices = []\nca = \"/ca.pem\"",
            "upstream_tls[0].services",
        ),
        (
            "[[upstream_tls]]\nservices = [\"*\"]\nca = \"/ca.pem\"\ncert = \"/c.pem\"",
            "upstream_tls[0].key",
        ),
        ("[listen_tls]\ncert = \"/c.pem\"", "listen_tls"),
        ("[[upstream_tls]]\nservices = [\"*\"]", "upstream_tls[0]"),
    ];
    for (text, field) in cases {
        let err = proxy(&format!("{base}{text}")).unwrap_err();
        assert!(
            err.field().is_some_and(|f| f.starts_with(field)),
            "{text}: {err} does not name {field}"
        );
    }
    let err = proxy(&format!(
        "{base}control_planes = [\"https://cp.example:7700\"]"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("--control-plane-ca"), "{err}");
}

/// The `[store]` of `text`, checked as validation checks etcd access, with the password
/// variable set or not.
fn etcd_access(text: &str, password_in_env: bool) -> Result<StoreConfig, ConfigError> {
    let config: ControlPlaneConfig = parse(text, Path::new("control.toml"))?;
    super::control_plane::validate_etcd_access(&config.store, password_in_env)?;
    Ok(config.store)
}

#[test]
fn etcd_tls_and_a_user_with_a_password_file_load() {
    let store = etcd_access(
        r#"
        [store]
        etcd_endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
        etcd_user = "meridian"
        etcd_password_file = "/run/secrets/etcd-password"
        [store.etcd_tls]
        ca = "/etc/etcd/ca.pem"
        cert = "/etc/etcd/client.pem"
        key = "/etc/etcd/client.key"
        server_name = "etcd.internal"
        "#,
        false,
    )
    .unwrap();
    let tls = store.etcd_tls.unwrap();
    assert_eq!(tls.ca.unwrap(), Path::new("/etc/etcd/ca.pem"));
    assert_eq!(tls.server_name.as_deref(), Some("etcd.internal"));
    assert_eq!(store.etcd_user.as_deref(), Some("meridian"));
    let from_env = "[store]\netcd_user = \"meridian\"";
    assert!(
        etcd_access(from_env, true).is_ok(),
        "the password may come from the environment"
    );
}

#[test]
fn etcd_access_mistakes_name_the_field() {
    let cases = [
        (
            "[store]\netcd_endpoints = [\"https://10.0.0.1:2379\"]",
            "store.etcd_tls.ca",
        ),
        (
            "[store]\netcd_endpoints = [\"http://10.0.0.1:2379\"]\n[store.etcd_tls]\nca = \"/ca.pem\"",
            "store.etcd_tls",
        ),
        (
            "[store]\netcd_endpoints = [\"https://10.0.0.1:2379\"]\n[store.etcd_tls]\ncert = \"/c.pem\"",
            "store.etcd_tls.ca",
        ),
        (
            "[store]\netcd_endpoints = [\"https://10.0.0.1:2379\"]\n[store.etcd_tls]\nca = \"/ca.pem\"\ncert = \"/c.pem\"",
            "store.etcd_tls.key",
        ),
        (
            "[store]\netcd_endpoints = [\"https://10.0.0.1:2379\"]\n[store.etcd_tls]\nca = \"/ca.pem\"\nkey = \"/c.key\"",
            "store.etcd_tls.cert",
        ),
        (
            "[store]\netcd_user = \"meridian\"",
            "store.etcd_password_file",
        ),
        ("[store]\netcd_user = \"\"", "store.etcd_user"),
        ("[store]\netcd_password_file = \"/p\"", "store.etcd_user"),
    ];
    for (text, field) in cases {
        let err = etcd_access(text, false).unwrap_err();
        assert_eq!(err.field(), Some(field), "{text}: {err}");
    }
    let err = control_plane("[store]\netcd_password = \"hunter2\"").unwrap_err();
    assert_eq!(
        err.field(),
        Some("store.etcd_password"),
        "a password in the file is refused: {err}"
    );
}
