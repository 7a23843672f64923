//! `WatchEvents`: the stored history from a sequence number, then (with `follow`) new
//! events as the store reports them, filtered by kind. Sequence numbers follow store
//! revisions (see [`crate::events`]), so the watch, which reports changes in revision
//! order, continues the history in order.

use std::collections::HashSet;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use meridian_proto::v1 as pb;
use meridian_shared::Shutdown;
use meridian_shared::domain::EventKind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::errors::{event_read_status, store_status};
use crate::events::EventLog;
use crate::keys::Kind;
use crate::store::WatchEvent;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

pub async fn watch(
    log: EventLog,
    request: pb::WatchEventsRequest,
    shutdown: Shutdown,
) -> Result<EventStream, Status> {
    let kinds = request
        .kinds
        .iter()
        .map(|k| {
            k.parse::<EventKind>()
                .map_err(|_| Status::invalid_argument(format!("kinds: unknown event kind {k:?}")))
        })
        .collect::<Result<HashSet<_>, _>>()?;
    let wanted = move |kind: &EventKind| kinds.is_empty() || kinds.contains(kind);
    let (history, revision) = log
        .since(request.since_seq)
        .await
        .map_err(event_read_status)?;
    let mut live = if request.follow {
        let dir = log.keys().dir(Kind::Event);
        Some(
            log.store()
                .watch(&dir, revision + 1)
                .await
                .map_err(store_status)?,
        )
    } else {
        None
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut next_seq = request.since_seq;
        for event in history.into_iter().filter(|e| wanted(&e.kind)) {
            next_seq = event.seq + 1;
            if tx.send(Ok(event.into())).await.is_err() {
                return;
            }
        }
        let Some(stream) = live.as_mut() else {
            return;
        };
        loop {
            let batch = tokio::select! {
                _ = tx.closed() => return,
                _ = shutdown.wait() => return,
                batch = stream.next() => batch,
            };
            let events = match batch {
                Some(Ok(events)) => events,
                Some(Err(e)) => {
                    let _ = tx.send(Err(store_status(e))).await;
                    return;
                }
                None => return,
            };
            for change in events {
                let WatchEvent::Put(kv) = change else {
                    continue;
                };
                let Ok(event) = log.decode(&kv) else {
                    continue;
                };
                if event.seq < next_seq || !wanted(&event.kind) {
                    continue;
                }
                next_seq = event.seq + 1;
                if tx.send(Ok(event.into())).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}
