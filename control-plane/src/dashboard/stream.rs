//! `GET /api/v1/stream`: the page's one live connection, newline-delimited JSON read with
//! `fetch` (an `EventSource` cannot send the `Authorization` header). Each line is one of
//!
//! - `{"type":"snapshot","overview":{...}}`: what `/api/v1/overview` answers; first at
//!   once, then after every topology change or event (coalesced over
//!   [`SNAPSHOT_COALESCE`], and at most one per [`SNAPSHOT_GAP`], so a busy federation
//!   costs each stream at most one snapshot a second) and every [`SNAPSHOT_EVERY`]
//!   (proxies and traffic change without an event);
//! - `{"type":"event","event":{...}}`: an event from `Admin/WatchEvents`, the kept history
//!   from `?since=SEQ` (default: all of it) and then each new one as it happens;
//! - `{"type":"error","error":"...","code":"..."}`: the last line when the stream ends
//!   on a failure, e.g. a token that was revoked (every snapshot admits the caller again).
//!
//! At most [`super::MAX_STREAMS`] streams are open at once; each ends when its client goes,
//! or when the control plane shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use meridian_proto::v1 as pb;
use meridian_proto::v1::admin_server::Admin;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::Dashboard;
use super::api::{ApiError, read_overview};
use crate::admin::AdminService;
use crate::ctl::json;

/// A fresh snapshot at least this often.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
/// Changes within this window share one snapshot.
pub const SNAPSHOT_COALESCE: Duration = Duration::from_millis(200);
/// Shortest time between two snapshots of one stream.
pub const SNAPSHOT_GAP: Duration = Duration::from_secs(1);

/// Opens a stream for a caller who may watch events and read the overview.
pub async fn open(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let credential = credential_only(&headers);
    let events_request = dashboard.admit(
        &credential,
        "WatchEvents",
        pb::WatchEventsRequest {
            since_seq: since_seq(uri.query()),
            follow: true,
            kinds: Vec::new(),
        },
    )?;
    let permit = dashboard
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::from(Status::resource_exhausted(format!(
                "{} dashboard streams are open on this control plane, the most it serves; close a dashboard tab or use another replica",
                super::MAX_STREAMS
            )))
        })?;
    let admin = dashboard.admin()?;
    let first = read_overview(&dashboard, &credential).await?;
    let events = admin.watch_events(events_request).await?.into_inner();
    let (lines, body) = mpsc::channel::<Bytes>(16);
    let _ = lines.try_send(line(&json!({ "type": "snapshot", "overview": first })));
    tokio::spawn(feed(
        Feed {
            dashboard,
            credential,
            admin,
            lines,
            _permit: permit,
        },
        events,
    ));
    let body = Body::from_stream(ReceiverStream::new(body).map(Ok::<_, Infallible>));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response())
}

/// What one open stream holds; the permit goes back when the stream ends.
struct Feed {
    dashboard: Dashboard,
    credential: HeaderMap,
    admin: std::sync::Arc<AdminService>,
    lines: mpsc::Sender<Bytes>,
    _permit: OwnedSemaphorePermit,
}

async fn feed(feed: Feed, mut events: <AdminService as Admin>::WatchEventsStream) {
    let mut topology = feed.admin.state.subscribe();
    let shutdown = feed.admin.shutdown.clone();
    let mut last_snapshot = Instant::now();
    let mut next_snapshot = last_snapshot + SNAPSHOT_EVERY;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = feed.lines.closed() => return,
            event = events.next() => match event {
                Some(Ok(event)) => {
                    if !send(&feed, json!({ "type": "event", "event": json::event(&event) })).await {
                        return;
                    }
                    next_snapshot = soon(next_snapshot, last_snapshot);
                }
                Some(Err(status)) => {
                    end_with(&feed, ApiError::from(status)).await;
                    return;
                }
                None => return,
            },
            changed = topology.changed() => {
                if changed.is_err() {
                    return;
                }
                next_snapshot = soon(next_snapshot, last_snapshot);
            }
            _ = tokio::time::sleep_until(next_snapshot) => {
                match read_overview(&feed.dashboard, &feed.credential).await {
                    Ok(overview) => {
                        if !send(&feed, json!({ "type": "snapshot", "overview": overview })).await {
                            return;
                        }
                    }
                    Err(error) => {
                        end_with(&feed, error).await;
                        return;
                    }
                }
                last_snapshot = Instant::now();
                next_snapshot = last_snapshot + SNAPSHOT_EVERY;
            }
        }
    }
}

/// When to send the snapshot after a change: after the coalescing window, but not sooner
/// than [`SNAPSHOT_GAP`] after the last one, and never later than already planned.
fn soon(planned: Instant, last: Instant) -> Instant {
    planned.min((Instant::now() + SNAPSHOT_COALESCE).max(last + SNAPSHOT_GAP))
}

async fn send(feed: &Feed, value: Value) -> bool {
    feed.lines.send(line(&value)).await.is_ok()
}

async fn end_with(feed: &Feed, error: ApiError) {
    let _ = feed.lines.send(line(&error.to_json())).await;
}

fn line(value: &Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Only the `Authorization` header, kept to admit the caller again for each snapshot.
fn credential_only(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        kept.insert(header::AUTHORIZATION, value.clone());
    }
    kept
}

/// `since=SEQ` from the query string; 0 (all kept history) when absent or not a number.
fn since_seq(query: Option<&str>) -> u64 {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("since="))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn snapshots_after_a_change_are_coalesced_and_spaced() {
        let now = Instant::now();
        let planned = now + SNAPSHOT_EVERY;
        // Quiet for a while: the change shows after the coalescing window.
        let long_ago = now - Duration::from_secs(10);
        assert_eq!(soon(planned, long_ago), now + SNAPSHOT_COALESCE);
        // Right after a snapshot: not before the gap.
        assert_eq!(soon(planned, now), now + SNAPSHOT_GAP);
        // Already due sooner: stays.
        assert_eq!(
            soon(now + Duration::from_millis(50), long_ago),
            now + Duration::from_millis(50)
        );
    }

    #[test]
    fn since_comes_from_the_query() {
        assert_eq!(since_seq(None), 0);
        assert_eq!(since_seq(Some("since=42")), 42);
        assert_eq!(since_seq(Some("x=1&since=7")), 7);
        assert_eq!(since_seq(Some("since=-1")), 0);
    }

    #[test]
    fn only_the_credential_is_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        let kept = credential_only(&headers);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[header::AUTHORIZATION], "Bearer t");
    }
}
