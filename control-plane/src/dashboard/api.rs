//! The dashboard's JSON routes: who is signed in, the federation at a glance, and the
//! operator's actions (drain, recover and fail a node; start and clear a failover). Each
//! route admits its caller under the gRPC path of the Admin method it runs, then runs that
//! method; a gRPC status becomes the HTTP status that means the same, with the status's
//! message as `{"error": ..., "code": ...}`.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use meridian_proto::v1 as pb;
use meridian_proto::v1::admin_server::Admin;
use prost_types::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::{Code, Status};

use super::{CALL_TIMEOUT, Dashboard};
use crate::admin::AdminService;
use crate::auth::{Caller, Denied};
use crate::ctl::json;

/// A refusal or failure, answered as JSON with the HTTP status of its gRPC code (or, for
/// a body that is not the JSON a route takes, the status axum gives it: 400, 413, 415,
/// 422).
#[derive(Debug)]
pub struct ApiError {
    status: Status,
    http: Option<StatusCode>,
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        ApiError { status, http: None }
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        Status::from(denied).into()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "the request body is larger than {} bytes",
                super::MAX_BODY_BYTES
            )
        } else {
            rejection.body_text()
        };
        ApiError {
            status: Status::invalid_argument(message),
            http: Some(rejection.status()),
        }
    }
}

impl ApiError {
    /// `{"type": "error", "error": <message>, "code": <gRPC code name>}`.
    pub fn to_json(&self) -> Value {
        json!({
            "type": "error",
            "error": self.status.message(),
            "code": format!("{:?}", self.status.code()),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let http = self.http.unwrap_or(match self.status.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        });
        let mut response = (http, Json(self.to_json())).into_response();
        if http == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

pub type ApiResult = Result<Json<Value>, ApiError>;

impl Dashboard {
    /// The Admin service, once the control plane has opened its store.
    pub(super) fn admin(&self) -> Result<Arc<AdminService>, ApiError> {
        self.admin.get().cloned().ok_or_else(|| {
            Status::unavailable(
                "the control plane is still starting (opening its store); retry shortly",
            )
            .into()
        })
    }

    /// `message` as a request to Admin method `method` from the caller `headers` name,
    /// admitted exactly as the gRPC call would be.
    pub(super) fn admit<T>(
        &self,
        headers: &HeaderMap,
        method: &str,
        message: T,
    ) -> Result<tonic::Request<T>, ApiError> {
        Ok(from(self.caller(headers, method)?, message))
    }

    /// Who `headers` authenticate as, if they may call Admin method `method`.
    pub(super) fn caller(&self, headers: &HeaderMap, method: &str) -> Result<Caller, ApiError> {
        let path = format!("/meridian.v1.Admin/{method}");
        self.auth
            .admit(&path, headers, &http::Extensions::new())?
            .ok_or_else(|| Status::internal("every Admin method needs a role").into())
    }
}

/// `message` as a request from `caller`, as the [`crate::auth::AuthLayer`] hands it on.
fn from<T>(caller: Caller, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(caller);
    request
}

/// Runs an Admin call within [`CALL_TIMEOUT`].
async fn within_timeout<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(answer) => Ok(answer?.into_inner()),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the control plane did not answer within {} s; is its store reachable?",
            CALL_TIMEOUT.as_secs()
        ))
        .into()),
    }
}

/// `GET /api/v1/whoami`: the caller's name and role, if it may read the dashboard.
pub async fn whoami(State(dashboard): State<Dashboard>, headers: HeaderMap) -> ApiResult {
    let caller = dashboard.caller(&headers, "GetTopology")?;
    Ok(Json(
        json!({ "name": caller.name, "role": caller.role.name() }),
    ))
}

/// `GET /api/v1/overview`: what the page shows, as one document.
pub async fn overview(State(dashboard): State<Dashboard>, headers: HeaderMap) -> ApiResult {
    Ok(Json(read_overview(&dashboard, &headers).await?))
}

/// The federation at a glance, from the Admin reads a viewer may make: topology (regions,
/// nodes, service policies), proxies, active failovers, scaling decisions and the global
/// metrics (calls/s, errors and latency from the proxies' load reports).
pub(super) async fn read_overview(
    dashboard: &Dashboard,
    headers: &HeaderMap,
) -> Result<Value, ApiError> {
    let admin = dashboard.admin()?;
    let topology = within_timeout(admin.get_topology(dashboard.admit(
        headers,
        "GetTopology",
        pb::GetTopologyRequest::default(),
    )?))
    .await?;
    let proxies = within_timeout(admin.list_proxies(dashboard.admit(
        headers,
        "ListProxies",
        pb::ListProxiesRequest {},
    )?))
    .await?
    .proxies;
    let failovers = within_timeout(admin.list_failovers(dashboard.admit(
        headers,
        "ListFailovers",
        pb::ListFailoversRequest {},
    )?))
    .await?
    .failovers;
    let scaling = within_timeout(admin.list_scaling(dashboard.admit(
        headers,
        "ListScaling",
        pb::ListScalingRequest::default(),
    )?))
    .await?
    .services;
    let metrics = within_timeout(admin.get_global_metrics(dashboard.admit(
        headers,
        "GetGlobalMetrics",
        pb::GetGlobalMetricsRequest::default(),
    )?))
    .await?;
    Ok(json!({
        "at": Timestamp::from(SystemTime::now()).to_string(),
        "revision": topology.revision,
        "federations": topology.federations.iter().map(json::federation).collect::<Vec<_>>(),
        "regions": topology.regions.iter().map(json::region).collect::<Vec<_>>(),
        "nodes": topology.nodes.iter().map(json::node).collect::<Vec<_>>(),
        "services": topology.services.iter().map(json::service_policy).collect::<Vec<_>>(),
        "proxies": proxies.iter().map(json::proxy).collect::<Vec<_>>(),
        "failovers": failovers.iter().map(json::failover).collect::<Vec<_>>(),
        "scaling": scaling.iter().map(json::service_scaling).collect::<Vec<_>>(),
        "metrics": json::global_metrics(&metrics),
    }))
}

/// The body of a node action: why (shown in events and `meridianctl nodes`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    #[serde(default)]
    reason: String,
}

/// `POST /api/v1/nodes/{id}/drain`: `Admin/DrainNode`.
pub async fn drain_node(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Reason>, JsonRejection>,
) -> ApiResult {
    let caller = dashboard.caller(&headers, "DrainNode")?;
    let Json(Reason { reason }) = body?;
    let request = from(caller, pb::DrainNodeRequest { id, reason });
    let node = within_timeout(dashboard.admin()?.drain_node(request)).await?;
    Ok(Json(json::node(&node)))
}

/// `POST /api/v1/nodes/{id}/recover`: `Admin/RecoverNode`.
pub async fn recover_node(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Reason>, JsonRejection>,
) -> ApiResult {
    let caller = dashboard.caller(&headers, "RecoverNode")?;
    let Json(Reason { reason }) = body?;
    let request = from(caller, pb::RecoverNodeRequest { id, reason });
    let node = within_timeout(dashboard.admin()?.recover_node(request)).await?;
    Ok(Json(json::node(&node)))
}

/// `POST /api/v1/nodes/{id}/fail`: `Admin/FailNode` (a reason is required).
pub async fn fail_node(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Reason>, JsonRejection>,
) -> ApiResult {
    let caller = dashboard.caller(&headers, "FailNode")?;
    let Json(Reason { reason }) = body?;
    let request = from(caller, pb::FailNodeRequest { id, reason });
    let node = within_timeout(dashboard.admin()?.fail_node(request)).await?;
    Ok(Json(json::node(&node)))
}

/// The body of `POST /api/v1/failovers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartFailover {
    service: String,
    target: String,
    #[serde(default)]
    reason: String,
}

/// `POST /api/v1/failovers`: `Admin/StartFailover`.
pub async fn start_failover(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    body: Result<Json<StartFailover>, JsonRejection>,
) -> ApiResult {
    let caller = dashboard.caller(&headers, "StartFailover")?;
    let Json(StartFailover {
        service,
        target,
        reason,
    }) = body?;
    let request = from(
        caller,
        pb::StartFailoverRequest {
            service,
            target,
            reason,
        },
    );
    let failover = within_timeout(dashboard.admin()?.start_failover(request)).await?;
    Ok(Json(json::failover(&failover)))
}

/// `POST /api/v1/failovers/{service}/clear`: `Admin/ClearFailover`.
pub async fn clear_failover(
    State(dashboard): State<Dashboard>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Reason>, JsonRejection>,
) -> ApiResult {
    let caller = dashboard.caller(&headers, "ClearFailover")?;
    let Json(Reason { reason }) = body?;
    let request = from(
        caller,
        pb::ClearFailoverRequest {
            service: service.clone(),
            reason,
        },
    );
    within_timeout(dashboard.admin()?.clear_failover(request)).await?;
    Ok(Json(json!({ "service": service, "cleared": true })))
}
