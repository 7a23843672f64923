//! Debounced publication of routing tables. Store changes arrive in bursts (a deploy
//! registers fifty nodes); pushing each one would flood every proxy. The publisher waits
//! for a quiet period after the last change, bounded by a max delay after the first, then
//! rebuilds every federation's table and publishes the ones whose content changed, each
//! with a new version: the store revision the content was built at. Versions therefore
//! increase monotonically and agree across replicas following the same store.
//!
//! A few recent versions per federation are kept so a proxy reconnecting with one of
//! them gets a delta instead of a snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use meridian_shared::Shutdown;
use tokio::sync::watch;
use tokio::time::Instant;

use super::TableContent;
use super::encoded::{EncodedUpdate, SharedEncodings};
use crate::store::Revision;
use crate::topology::StateHandle;

/// Recent versions kept per federation for reconnect deltas.
const HISTORY: usize = 8;

/// One federation's table at one version.
#[derive(Debug, Clone)]
pub struct FederationTable {
    pub version: u64,
    pub content: Arc<TableContent>,
    encodings: Arc<SharedEncodings>,
}

impl FederationTable {
    pub fn new(version: u64, content: Arc<TableContent>) -> Self {
        FederationTable {
            version,
            content,
            encodings: Arc::default(),
        }
    }

    /// The update that brings a proxy holding `base` (or nothing) to this table, encoded
    /// once for every session that needs the same.
    pub fn update_from(&self, federation: &str, base: Option<&FederationTable>) -> EncodedUpdate {
        match base {
            Some(base) => self.encodings.update_from(
                &self.content,
                federation,
                self.version,
                &base.content,
                base.version,
            ),
            None => self
                .encodings
                .snapshot(&self.content, federation, self.version),
        }
    }
}

/// Everything published at one moment.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The state revision the tables were built from.
    pub revision: Revision,
    /// When the first change folded into this publication was seen (for push latency).
    pub changed_at: Option<Instant>,
    pub tables: BTreeMap<String, FederationTable>,
    /// Older versions, newest last.
    pub history: BTreeMap<String, VecDeque<FederationTable>>,
}

impl Published {
    /// A table of `federation` at exactly `version`, current or recent.
    pub fn at_version(&self, federation: &str, version: u64) -> Option<&FederationTable> {
        let current = self.tables.get(federation).filter(|t| t.version == version);
        current.or_else(|| {
            self.history
                .get(federation)?
                .iter()
                .find(|t| t.version == version)
        })
    }
}

pub struct TablePublisher {
    state: StateHandle,
    tx: watch::Sender<Arc<Published>>,
}

impl TablePublisher {
    pub fn new(state: StateHandle) -> (Self, watch::Receiver<Arc<Published>>) {
        let (tx, rx) = watch::channel(Arc::new(Published::default()));
        (TablePublisher { state, tx }, rx)
    }

    /// Publishes until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) {
        tokio::select! {
            _ = shutdown.wait() => {}
            _ = self.publish_forever() => {}
        }
    }

    async fn publish_forever(&self) {
        let mut changes = self.state.subscribe();
        if changes.wait_for(|s| s.revision > 0).await.is_err() {
            return;
        }
        changes.mark_unchanged();
        self.publish(None, 0);
        loop {
            if changes.changed().await.is_err() {
                return;
            }
            let first = Instant::now();
            let (quiet, max_delay) = {
                let config = &self.state.borrow().config.value;
                (config.debounce_quiet(), config.debounce_max_delay())
            };
            let deadline = first + max_delay;
            let mut folded = 1u64;
            loop {
                let wake = (Instant::now() + quiet).min(deadline);
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        folded += 1;
                    }
                    _ = tokio::time::sleep_until(wake) => break,
                }
            }
            self.publish(Some(first), folded);
        }
    }

    /// Rebuilds every table from the current state; publishes if any changed.
    fn publish(&self, changed_at: Option<Instant>, folded: u64) {
        let previous = self.tx.borrow().clone();
        let next = {
            let state = self.state.borrow();
            let mut next = Published {
                revision: state.revision,
                changed_at,
                tables: BTreeMap::new(),
                history: previous.history.clone(),
            };
            // Federations that disappeared keep an (empty) table so their proxies see it.
            let federations = state.federations.keys().chain(previous.tables.keys());
            for federation in federations {
                if next.tables.contains_key(federation) {
                    continue;
                }
                let content = TableContent::build(&state, federation);
                let table = match previous.tables.get(federation) {
                    Some(old) if *old.content == content => old.clone(),
                    old => {
                        if let Some(old) = old {
                            let history = next.history.entry(federation.clone()).or_default();
                            history.push_back(old.clone());
                            if history.len() > HISTORY {
                                history.pop_front();
                            }
                        }
                        FederationTable::new(
                            u64::try_from(state.revision).unwrap_or_default(),
                            Arc::new(content),
                        )
                    }
                };
                next.tables.insert(federation.clone(), table);
            }
            next
        };
        let changed = next.tables.len() != previous.tables.len()
            || next.tables.iter().any(|(f, t)| {
                previous
                    .tables
                    .get(f)
                    .is_none_or(|p| p.version != t.version)
            });
        metrics::histogram!("meridian_control_debounce_folded_changes").record(folded as f64);
        if changed || previous.revision == 0 {
            tracing::debug!(
                revision = next.revision,
                folded,
                "publishing routing tables"
            );
            metrics::counter!("meridian_control_table_publications_total").increment(1);
            for (federation, table) in &next.tables {
                metrics::gauge!("meridian_control_table_version", "federation" => federation.clone())
                    .set(table.version as f64);
            }
            self.tx.send_replace(Arc::new(next));
        } else {
            // Nothing a proxy routes with changed; remember how far the state has been
            // checked so reconnecting proxies can be told they are current.
            self.tx.send_if_modified(|p| {
                Arc::make_mut(p).revision = next.revision;
                false
            });
        }
    }
}
