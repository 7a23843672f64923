//! The webhook actuator: an HTTP/1.1 POST of the decision as JSON, with
//! `Authorization: Bearer <token>` when the policy names a token file (read at every
//! call, so a rotated token is used at once). Each attempt has the policy's timeout;
//! transport errors, timeouts, 5xx, 408 and 429 are retried up to `max_attempts` with
//! jittered exponential backoff; any 2xx succeeds; other statuses fail at once (the
//! receiver refused the request, and sending it again would not change its mind).
//!
//! `https://` needs the CA of the receivers' certificates (`--scaling-webhook-ca`): the
//! control plane trusts that CA alone, never the system roots, as for every other TLS
//! connection it makes. It offers ALPN `h2` and speaks HTTP/2 when the receiver picks it,
//! HTTP/1.1 otherwise. Without the CA, `https://` URLs fail (and the configuration refuses
//! `https://` allowlist prefixes).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use meridian_shared::Backoff;
use meridian_shared::domain::WebhookActuator;
use meridian_shared::tls::ClientTls;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{Actuation, payload};
use crate::scaling::record::Decision;

/// Bounds of the backoff between attempts.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why one attempt failed, and whether another may succeed.
struct AttemptError {
    message: String,
    retryable: bool,
}

pub async fn run(
    webhook: &WebhookActuator,
    decision: &Decision,
    tls: Option<&ClientTls>,
) -> Actuation {
    let uri = match target(&webhook.url, tls.is_some()) {
        Ok(uri) => uri,
        Err(problem) => return Actuation::Failed(format!("{}: {problem}", webhook.url)),
    };
    let body = Bytes::from(payload(decision));
    let attempts = webhook.effective_max_attempts();
    let timeout = webhook.effective_timeout();
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
    let mut last = String::new();
    for attempt in 1..=attempts {
        let outcome =
            match tokio::time::timeout(timeout, attempt_once(webhook, &uri, body.clone(), tls))
                .await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(AttemptError {
                    message: format!("no answer within {} ms", timeout.as_millis()),
                    retryable: true,
                }),
            };
        match outcome {
            Ok(status) => {
                return Actuation::Executed(format!(
                    "{} answered {status} (attempt {attempt} of {attempts})",
                    webhook.url
                ));
            }
            Err(e) if !e.retryable => {
                return Actuation::Failed(format!(
                    "{}: {} (attempt {attempt} of {attempts}; not retried)",
                    webhook.url, e.message
                ));
            }
            Err(e) => last = e.message,
        }
        if attempt < attempts {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
    Actuation::Failed(format!(
        "{}: all {attempts} attempts failed; the last: {last}",
        webhook.url
    ))
}

/// The URL as a request target: `http://host[:port]/path`, or `https://` when the
/// control plane has a webhook CA (`with_tls`).
fn target(url: &str, with_tls: bool) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a valid URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") if with_tls => {}
        Some("https") => {
            return Err(
                "https webhooks need the CA of the receiver's certificate: start the control plane with --scaling-webhook-ca".into(),
            );
        }
        _ => return Err("expected an http:// or https:// URL".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(uri)
}

/// One POST; a 2xx status, or why not.
async fn attempt_once(
    webhook: &WebhookActuator,
    uri: &Uri,
    body: Bytes,
    tls: Option<&ClientTls>,
) -> Result<StatusCode, AttemptError> {
    let transport = |message: String| AttemptError {
        message,
        retryable: true,
    };
    let mut request = Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, uri.authority().map_or("", |a| a.as_str()))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "meridian-control");
    if !webhook.bearer_token_file.is_empty() {
        let token = read_token(&webhook.bearer_token_file).await?;
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(body)).map_err(|e| AttemptError {
        message: format!("could not build the request: {e}"),
        retryable: false,
    })?;

    let host = uri.host().unwrap_or_default();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| transport(format!("cannot connect to {host}:{port}: {e}")))?;
    let response = match tls.filter(|_| https) {
        None => send_http1(TokioIo::new(tcp), request).await,
        Some(tls) => {
            let stream = tls
                .connect(tcp, host)
                .await
                .map_err(|e| transport(format!("TLS handshake with {host}:{port} failed: {e}")))?;
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                // HTTP/2 takes the scheme and authority from the request's URI.
                let (mut parts, body) = request.into_parts();
                parts.uri = uri.clone();
                send_http2(
                    TokioIo::new(stream),
                    hyper::Request::from_parts(parts, body),
                )
                .await
            } else {
                send_http1(TokioIo::new(stream), request).await
            }
        }
    }
    .map_err(transport)?;
    let status = response.status();
    if status.is_success() {
        return Ok(status);
    }
    let retryable = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    Err(AttemptError {
        message: format!("answered {status}"),
        retryable,
    })
}

/// One request on a new HTTP/1.1 connection over `io`.
async fn send_http1<IO>(
    io: TokioIo<IO>,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let _connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("the request failed: {e}"))
}

/// One request on a new HTTP/2 connection over `io`.
async fn send_http2<IO>(
    io: TokioIo<IO>,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    let _connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("the request failed: {e}"))
}

/// The token in `path`, trimmed; an unreadable or unsendable token fails the attempt (it
/// may be being rotated, so it is retried).
async fn read_token(path: &str) -> Result<String, AttemptError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| AttemptError {
            message: format!("cannot read the bearer token file {path}: {e}"),
            retryable: true,
        })?;
    let token = text.trim().to_owned();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AttemptError {
            message: format!(
                "the bearer token file {path} must hold one token of visible ASCII characters"
            ),
            retryable: true,
        });
    }
    Ok(token)
}

/// Stops the connection task when the attempt ends (or is abandoned at its timeout).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;
    use crate::scaling::record::{Outcome, Source};

    /// What the test server saw: each request's authorization header and JSON body.
    type Seen = Arc<Mutex<Vec<(Option<String>, serde_json::Value)>>>;

    /// An HTTP server answering with `statuses` in turn (the last one repeated).
    async fn server(statuses: Vec<u16>) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/scale", listener.local_addr().unwrap());
        let seen = Seen::default();
        let recorded = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, statuses) = (Arc::clone(&recorded), statuses.clone());
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let (seen, statuses) = (Arc::clone(&seen), statuses.clone());
                    async move {
                        let auth = request
                            .headers()
                            .get(header::AUTHORIZATION)
                            .map(|v| v.to_str().unwrap().to_owned());
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let json = serde_json::from_slice(&body).unwrap();
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            seen.push((auth, json));
                            seen.len()
                        };
                        let status = statuses[(n - 1).min(statuses.len() - 1)];
                        let response = hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (url, seen)
    }

    fn decision() -> Decision {
        Decision {
            seq: 1,
            service: "demo.v1.Echo".into(),
            current_nodes: 2,
            desired_nodes: 4,
            utilization_percent: None,
            reason: "operator".into(),
            source: Source::Manual,
            decided_by: "alice".into(),
            decided_at: SystemTime::now(),
            rule: "manual".into(),
            metrics: Vec::new(),
            outcome: Outcome::Pending,
            outcome_detail: String::new(),
        }
    }

    fn webhook(url: &str, max_attempts: u32) -> WebhookActuator {
        WebhookActuator {
            url: url.into(),
            bearer_token_file: String::new(),
            timeout_ms: 2_000,
            max_attempts,
        }
    }

    #[tokio::test]
    async fn a_2xx_answer_executes_with_the_token_from_the_file() {
        let (url, seen) = server(vec![204]).await;
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "s3cret-token\n").unwrap();
        let mut hook = webhook(&url, 3);
        hook.bearer_token_file = token_file.to_str().unwrap().into();
        let result = run(&hook, &decision(), None).await;
        assert!(matches!(result, Actuation::Executed(_)), "{result:?}");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0.as_deref(), Some("Bearer s3cret-token"));
        assert_eq!(seen[0].1["desired_nodes"], 4);
        assert_eq!(seen[0].1["decided_by"], "alice");
    }

    #[tokio::test]
    async fn a_5xx_is_retried_until_it_succeeds() {
        let (url, seen) = server(vec![500, 503, 200]).await;
        let result = run(&webhook(&url, 3), &decision(), None).await;
        let Actuation::Executed(detail) = result else {
            panic!("expected success on the third attempt: {result:?}");
        };
        assert!(detail.contains("attempt 3 of 3"), "{detail}");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter().all(|(auth, _)| auth.is_none()),
            "no token file, no header"
        );
    }

    #[tokio::test]
    async fn all_attempts_failing_fails_after_max_attempts() {
        let (url, seen) = server(vec![502]).await;
        let Actuation::Failed(detail) = run(&webhook(&url, 2), &decision(), None).await else {
            panic!("a webhook answering 502 must fail");
        };
        assert!(detail.contains("all 2 attempts failed"), "{detail}");
        assert!(detail.contains("502"), "{detail}");
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_4xx_is_not_retried() {
        let (url, seen) = server(vec![403, 200]).await;
        let Actuation::Failed(detail) = run(&webhook(&url, 3), &decision(), None).await else {
            panic!("a webhook answering 403 must fail");
        };
        assert!(
            detail.contains("403") && detail.contains("not retried"),
            "{detail}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn https_receivers_are_trusted_through_the_configured_ca_only() {
        use meridian_shared::tls::testing::TestCa;
        use meridian_shared::tls::{ClientTlsFiles, ServerTls, ServerTlsFiles};

        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("webhook CA");
        let ca_file = ca.write(dir.path(), "ca");
        let server = ca.server_cert(&["127.0.0.1"]).write(dir.path(), "server");
        let acceptor = ServerTls::load(ServerTlsFiles {
            cert: server.cert,
            key: server.key,
            client_ca: None,
            require_client_cert: false,
        })
        .unwrap()
        .acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/scale", listener.local_addr().unwrap());
        let seen = Seen::default();
        let recorded = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(stream) = acceptor.accept(tcp).await else {
                    continue;
                };
                let seen = Arc::clone(&recorded);
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let json = serde_json::from_slice(&body).unwrap();
                        seen.lock().unwrap().push((None, json));
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });

        let trusted = ClientTls::load(ClientTlsFiles {
            ca: ca_file,
            cert: None,
            key: None,
            server_name: None,
        })
        .unwrap();
        let result = run(&webhook(&url, 1), &decision(), Some(&trusted)).await;
        assert!(matches!(result, Actuation::Executed(_)), "{result:?}");
        assert_eq!(seen.lock().unwrap()[0].1["desired_nodes"], 4);

        // A receiver whose certificate another CA signed is refused.
        let other = TestCa::new("another CA").write(dir.path(), "other");
        let untrusting = ClientTls::load(ClientTlsFiles {
            ca: other,
            cert: None,
            key: None,
            server_name: None,
        })
        .unwrap();
        let Actuation::Failed(detail) =
            run(&webhook(&url, 1), &decision(), Some(&untrusting)).await
        else {
            panic!("an untrusted receiver must fail");
        };
        assert!(detail.contains("TLS handshake"), "{detail}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn nobody_listening_fails_and_https_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let Actuation::Failed(detail) = run(&webhook(&url, 2), &decision(), None).await else {
            panic!("nothing listening must fail");
        };
        assert!(detail.contains("cannot connect"), "{detail}");
        let Actuation::Failed(detail) =
            run(&webhook("https://hooks.example/", 1), &decision(), None).await
        else {
            panic!("https must be refused");
        };
        assert!(detail.contains("https"), "{detail}");
    }
}
