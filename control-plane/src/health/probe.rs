//! One health check of one node: `grpc.health.v1.Health/Check` for the policy's
//! `grpc_service` name, or a bare TCP connect when the policy says `tcp_only` (nodes that
//! do not serve the health protocol). The whole check, connecting included, must finish
//! within the policy's timeout.
//!
//! A [`Probe`] keeps its HTTP/2 connection between checks, as a client would: connecting
//! anew every check would leave a socket in TIME_WAIT per check on the leader (thousands
//! with many nodes). After a failed check the connection is dropped, so the next one
//! connects afresh and reports precisely why it cannot ("connection refused").

use std::error::Error as _;
use std::time::Duration;

use meridian_shared::domain::HealthCheckPolicy;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Why a check failed; its text becomes the node's status reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The node's address is not a valid `host:port`.
    #[error("invalid address {0:?}")]
    Address(String),
    /// Connecting failed (e.g. "connection refused").
    #[error("{0}")]
    Connect(String),
    /// The node answered, but not SERVING (e.g. "NOT_SERVING").
    #[error("{0}")]
    NotServing(&'static str),
    /// The Check call failed (e.g. the node does not know the service name).
    #[error("Check failed with {code:?}: {message}")]
    Rpc { code: tonic::Code, message: String },
}

/// Checks one node, keeping its connection between checks.
#[derive(Debug, Default)]
pub struct Probe {
    /// The address it was made for, and a client on it.
    client: Option<(String, HealthClient<Channel>)>,
}

impl Probe {
    /// Runs one check of the node at `address` (`host:port`) as `policy` says.
    pub async fn check(
        &mut self,
        address: &str,
        policy: &HealthCheckPolicy,
    ) -> Result<(), ProbeFailure> {
        let timeout = policy.effective_timeout();
        let check = async {
            if policy.tcp_only {
                tcp_connect(address).await
            } else {
                self.grpc_check(address, &policy.grpc_service, timeout)
                    .await
            }
        };
        let result = tokio::time::timeout(timeout, check)
            .await
            .unwrap_or(Err(ProbeFailure::TimedOut(timeout)));
        if result.is_err() {
            self.client = None;
        }
        result
    }

    async fn grpc_check(
        &mut self,
        address: &str,
        service: &str,
        timeout: Duration,
    ) -> Result<(), ProbeFailure> {
        let client = match &mut self.client {
            Some((for_address, client)) if for_address == address => client,
            _ => {
                let client = HealthClient::new(connect(address, timeout).await?);
                &mut self.client.insert((address.to_owned(), client)).1
            }
        };
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        let response = client.check(request).await.map_err(rpc_failure)?;
        match ServingStatus::try_from(response.into_inner().status) {
            Ok(ServingStatus::Serving) => Ok(()),
            Ok(other) => Err(ProbeFailure::NotServing(other.as_str_name())),
            Err(_) => Err(ProbeFailure::NotServing("an unknown serving status")),
        }
    }
}

async fn connect(address: &str, timeout: Duration) -> Result<Channel, ProbeFailure> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|_| ProbeFailure::Address(address.to_owned()))?
        .connect_timeout(timeout);
    endpoint
        .connect()
        .await
        .map_err(|e| ProbeFailure::Connect(root_cause(&e)))
}

async fn tcp_connect(address: &str) -> Result<(), ProbeFailure> {
    tokio::net::TcpStream::connect(address)
        .await
        .map(drop)
        .map_err(|e| ProbeFailure::Connect(describe_io(&e)))
}

/// A failed call: transport errors (the connection broke) by their cause, others by code.
fn rpc_failure(status: tonic::Status) -> ProbeFailure {
    match status.source() {
        Some(source) if status.code() == tonic::Code::Unavailable => {
            ProbeFailure::Connect(root_cause(source))
        }
        _ => ProbeFailure::Rpc {
            code: status.code(),
            message: status.message().to_owned(),
        },
    }
}

/// The innermost cause of a transport error, which says what happened ("connection
/// refused"), where the outer ones only say where ("transport error").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    loop {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return describe_io(io);
        }
        match cause.source() {
            Some(inner) => cause = inner,
            None => return cause.to_string(),
        }
    }
}

fn describe_io(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        std::io::ErrorKind::TimedOut => "connect timed out".into(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tcp_only: bool) -> HealthCheckPolicy {
        HealthCheckPolicy {
            tcp_only,
            timeout_ms: 500,
            ..Default::default()
        }
    }

    /// A loopback port with nothing listening: bound but not listening, held by the
    /// caller so no other test's listener can be given the port meanwhile.
    fn closed_port() -> (String, tokio::net::TcpSocket) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        (socket.local_addr().unwrap().to_string(), socket)
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_for_grpc_and_tcp_checks() {
        let (address, _closed) = closed_port();
        for tcp_only in [false, true] {
            let failure = Probe::default()
                .check(&address, &policy(tcp_only))
                .await
                .unwrap_err();
            assert_eq!(
                failure.to_string(),
                "connection refused",
                "tcp_only {tcp_only}"
            );
        }
    }

    #[tokio::test]
    async fn a_listener_that_never_answers_times_out_the_grpc_check() {
        // Accepts (the kernel completes the handshake) but never speaks HTTP/2.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let failure = Probe::default()
            .check(&address, &policy(false))
            .await
            .unwrap_err();
        assert_eq!(failure, ProbeFailure::TimedOut(Duration::from_millis(500)));
        assert_eq!(failure.to_string(), "timed out after 500ms");
        // The TCP check only needs the handshake.
        assert_eq!(
            Probe::default().check(&address, &policy(true)).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn a_health_server_is_checked_for_the_policy_service_name() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("demo.v1.Echo", tonic_health::ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let echo = HealthCheckPolicy {
            grpc_service: "demo.v1.Echo".into(),
            ..policy(false)
        };
        let mut probe = Probe::default();
        assert_eq!(probe.check(&address, &echo).await, Ok(()));
        assert_eq!(
            probe.check(&address, &policy(false)).await,
            Ok(()),
            "the server as a whole"
        );

        reporter
            .set_service_status("demo.v1.Echo", tonic_health::ServingStatus::NotServing)
            .await;
        let failure = probe.check(&address, &echo).await.unwrap_err();
        assert_eq!(failure.to_string(), "NOT_SERVING");

        let unknown = HealthCheckPolicy {
            grpc_service: "no.such.Service".into(),
            ..policy(false)
        };
        let failure = probe.check(&address, &unknown).await.unwrap_err();
        assert!(
            matches!(
                failure,
                ProbeFailure::Rpc {
                    code: tonic::Code::NotFound,
                    ..
                }
            ),
            "{failure:?}"
        );

        server.abort();
        let _ = server.await;
        let failure = probe.check(&address, &echo).await.unwrap_err();
        assert_eq!(failure.to_string(), "connection refused");
    }
}
