//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, `meridian-control` exports a span for every
//! gRPC request, and `meridian-proxy` one for every forwarded call, over OTLP/gRPC,
//! continuing the caller's W3C `traceparent`. The collector here is a real OTLP/gRPC
//! server on loopback that records what it receives.

use std::net::SocketAddr;
use std::time::Duration;

use meridian_tests::http;
use meridian_tests::ports::free_port;
use meridian_tests::process::ChildProcess;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn start_collector() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, rx)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn grpc_requests_are_exported_as_spans_continuing_the_callers_trace() {
    let (collector, mut exports) = start_collector().await;
    let dir = tempfile::tempdir().unwrap();
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let endpoint = format!("http://{collector}");
    let control = ChildProcess::spawn_with_env(
        "meridian-control",
        &[
            "--dev",
            "--grpc-addr",
            &grpc.to_string(),
            "--http-addr",
            &http_addr.to_string(),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
        &dir.path().join("control.log"),
    )
    .unwrap();
    assert!(
        http::wait_for_ok(http_addr, "/ready", Duration::from_secs(20)).await,
        "{}",
        control.output()
    );

    // A health check carrying the caller's trace context.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    HealthClient::new(channel)
        .check(request)
        .await
        .expect("health check");

    let (service, span) = exported_span(&mut exports, "/grpc.health.v1.Health/Check")
        .await
        .unwrap_or_else(|| {
            panic!(
                "no span exported; control plane output:\n{}",
                control.output()
            )
        });
    assert_eq!(
        hex(&span.trace_id),
        TRACE_ID,
        "the caller's trace was not continued"
    );
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(service, Some(Value::StringValue("meridian-control".into())));
}

/// The first exported span named `name`, with its service.name, within 20 s.
async fn exported_span(
    exports: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    name: &str,
) -> Option<(Option<Value>, opentelemetry_proto::tonic::trace::v1::Span)> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let export = exports.recv().await?;
            for resource_spans in export.resource_spans {
                let service = resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref()?.value.clone());
                for scope in resource_spans.scope_spans {
                    if let Some(span) = scope.spans.into_iter().find(|s| s.name == name) {
                        return Some((service, span));
                    }
                }
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test]
async fn the_proxy_exports_a_span_for_each_forwarded_call_in_the_callers_trace() {
    use meridian_proto::demo::v1::SayRequest;
    use meridian_proto::demo::v1::echo_client::EchoClient;
    use meridian_tests::control::{
        ControlPlaneOptions, ControlPlaneProcess, OPERATOR_TOKEN, authorized,
    };
    use meridian_tests::demo_node::process::DemoNodeProcess;

    let (collector, mut exports) = start_collector().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &[],
        prefix: "/meridian/",
        replica: "cp-dev",
        election_ttl_seconds: 5,
        dir: dir.path(),
    })
    .await;
    cp.create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-a"])
        .await;
    let node = DemoNodeProcess::start("eu-1", &[], &dir.path().join("node.log")).await;
    let register = meridian_proto::v1::RegisterNodeRequest {
        node: Some(meridian_proto::v1::Node {
            id: "eu-1".into(),
            address: node.addr.to_string(),
            federation: "prod".into(),
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
            services: vec!["demo.v1.Echo".into()],
            ..Default::default()
        }),
        replace: false,
    };
    cp.admin()
        .await
        .register_node(authorized(register, OPERATOR_TOKEN))
        .await
        .unwrap();

    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let endpoint = format!("http://{collector}");
    let proxy = ChildProcess::spawn_with_env(
        "meridian-proxy",
        &[
            "--id",
            "proxy-eu",
            "--federation",
            "prod",
            "--region",
            "eu-west",
            "--zone",
            "eu-west-a",
            "--control-planes",
            &cp.url(),
            "--grpc-addr",
            &grpc.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("MERIDIAN_TOKEN", meridian_tests::control::PROXY_TOKEN),
        ],
        &dir.path().join("proxy.log"),
    )
    .unwrap();
    assert!(
        http::wait_for_ok(admin, "/ready", Duration::from_secs(20)).await,
        "{}",
        proxy.output()
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = Request::new(SayRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    EchoClient::new(channel)
        .say(request)
        .await
        .expect("call through the proxy");

    let (service, span) = exported_span(&mut exports, "forward demo.v1.Echo")
        .await
        .unwrap_or_else(|| {
            panic!(
                "the proxy exported no span; its output:\n{}",
                proxy.output()
            )
        });
    assert_eq!(service, Some(Value::StringValue("meridian-proxy".into())));
    assert_eq!(
        hex(&span.trace_id),
        TRACE_ID,
        "the caller's trace was not continued"
    );
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN_ID);
}
