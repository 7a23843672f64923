//! Group commit: transactions that wait for the store at the same moment are committed as
//! one. Registering thousands of nodes with many calls in flight would otherwise cost the
//! store one transaction (a raft round, a disk write, a watch notification) per node;
//! most of that cost is per transaction, not per key.
//!
//! **How.** A caller queues its transaction. While fewer than [`COMMITTERS`] commits are
//! under way, a committer task starts and takes the queue as it finds it; otherwise the
//! transaction waits for the next batch, which forms while the commits under way run. A
//! lone transaction is therefore committed at once, as it would be without batching, and
//! batches grow only when the store is the bottleneck.
//!
//! **What may share a batch.** A batch is one transaction: the union of its members'
//! compares and the concatenation of their operations. It holds exactly when every
//! member's compares hold, and then applies every member's writes. Members may compare
//! the same key only with the same compare (several nodes of one region all compare the
//! region's revision), and no member may write a key another member writes or compares:
//! etcd refuses a key written twice in one transaction, and a member must not see another
//! member's write as a change it raced with. A transaction that does not fit waits for a
//! later batch. Range deletions are never batched. Batches stay below etcd's default of
//! 128 operations (and 128 compares) per transaction.
//!
//! **Answers.** When the batch holds, every member gets its result (the batch's revision).
//! When it does not (one member's compares failed, or the store refused it), each member
//! is committed alone and gets its own answer, exactly as without batching. When the store
//! could not be reached, every member gets that error: the outcome is unknown to all of
//! them alike. Callers get their answer only once the write is durable.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{Compare, Op, Store, StoreError, Txn, TxnResult};

/// Commits under way at once. More commits mean smaller batches; fewer mean callers wait
/// longer for theirs to start.
const COMMITTERS: usize = 2;
/// Operations and compares per batch, below etcd's default `--max-txn-ops` of 128.
const MAX_OPS: usize = 120;

#[derive(Clone)]
pub struct GroupCommit {
    store: Arc<dyn Store>,
    queue: Arc<Mutex<Queue>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    committers: usize,
}

struct Waiting {
    txn: Txn,
    answer: oneshot::Sender<Result<TxnResult, StoreError>>,
}

impl GroupCommit {
    pub fn new(store: Arc<dyn Store>) -> Self {
        GroupCommit {
            store,
            queue: Arc::default(),
        }
    }

    /// Commits `txn`, possibly together with others; answers as [`Store::txn`] would.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let (answer, answered) = oneshot::channel();
        let start_committer = {
            let mut queue = self.lock();
            queue.waiting.push_back(Waiting { txn, answer });
            let start = queue.committers < COMMITTERS;
            if start {
                queue.committers += 1;
            }
            start
        };
        if start_committer {
            tokio::spawn(self.clone().commit_while_waiting());
        }
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the commit was abandoned (the control plane is stopping)".into(),
            ))
        })
    }

    /// Commits batches until the queue is empty.
    async fn commit_while_waiting(self) {
        loop {
            let batch = {
                let mut queue = self.lock();
                if queue.waiting.is_empty() {
                    queue.committers -= 1;
                    return;
                }
                take_batch(&mut queue.waiting)
            };
            self.commit(batch).await;
        }
    }

    async fn commit(&self, mut batch: Vec<Waiting>) {
        if batch.len() == 1 {
            let member = batch.pop().expect("a batch of one");
            let result = self.store.txn(member.txn).await;
            let _ = member.answer.send(result);
            return;
        }
        metrics::histogram!("meridian_control_group_commit_size").record(batch.len() as f64);
        let merged = merge(batch.iter().map(|m| &m.txn));
        match self.store.txn(merged).await {
            Ok(result) if result.succeeded => {
                for member in batch {
                    let _ = member.answer.send(Ok(result));
                }
            }
            Ok(_) | Err(StoreError::Rejected(_) | StoreError::LeaseNotFound(_)) => {
                metrics::counter!("meridian_control_group_commit_split_total").increment(1);
                let alone = batch.into_iter().map(|member| async move {
                    let result = self.store.txn(member.txn).await;
                    let _ = member.answer.send(result);
                });
                futures::future::join_all(alone).await;
            }
            Err(e) => {
                for member in batch {
                    let _ = member.answer.send(Err(e.clone()));
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().expect("group commit queue lock poisoned")
    }
}

/// Takes from `waiting`, oldest first, the transactions that can share one batch; leaves
/// the rest in order.
fn take_batch(waiting: &mut VecDeque<Waiting>) -> Vec<Waiting> {
    let mut batch = Vec::new();
    let mut shape = BatchShape::default();
    let mut left = VecDeque::with_capacity(waiting.len());
    while let Some(member) = waiting.pop_front() {
        if batch.is_empty() || shape.admits(&member.txn) {
            shape.add(&member.txn);
            batch.push(member);
        } else {
            left.push_back(member);
        }
        if shape.full() {
            break;
        }
    }
    left.append(waiting);
    *waiting = left;
    batch
}

/// The keys a batch touches so far, to decide whether another transaction may join it.
#[derive(Default)]
struct BatchShape {
    compares: HashMap<String, Compare>,
    written: HashSet<String>,
    ops: usize,
    unbatchable: bool,
}

impl BatchShape {
    fn admits(&self, txn: &Txn) -> bool {
        if self.unbatchable
            || self.ops + txn.ops.len() > MAX_OPS
            || self.compares.len() + txn.compares.len() > MAX_OPS
        {
            return false;
        }
        let compares_fit = txn.compares.iter().all(|c| {
            let key = compare_key(c);
            !self.written.contains(key) && self.compares.get(key).is_none_or(|seen| seen == c)
        });
        let writes_fit = txn.ops.iter().all(|op| match written_key(op) {
            Some(key) => !self.written.contains(key) && !self.compares.contains_key(key),
            None => false,
        });
        compares_fit && writes_fit && !has_duplicate_writes(txn)
    }

    fn add(&mut self, txn: &Txn) {
        for compare in &txn.compares {
            self.compares
                .insert(compare_key(compare).to_owned(), compare.clone());
        }
        for op in &txn.ops {
            match written_key(op) {
                Some(key) => drop(self.written.insert(key.to_owned())),
                None => self.unbatchable = true,
            }
        }
        self.ops += txn.ops.len();
        self.unbatchable |= has_duplicate_writes(txn);
    }

    fn full(&self) -> bool {
        self.unbatchable || self.ops >= MAX_OPS || self.compares.len() >= MAX_OPS
    }
}

/// A transaction that writes one key twice is left alone: etcd refuses it whether batched
/// or not, and it must get that answer by itself.
fn has_duplicate_writes(txn: &Txn) -> bool {
    let mut seen = HashSet::new();
    !txn.ops
        .iter()
        .filter_map(written_key)
        .all(|key| seen.insert(key))
}

fn compare_key(compare: &Compare) -> &str {
    match compare {
        Compare::ModRevision { key, .. } | Compare::Value { key, .. } => key,
    }
}

/// The one key `op` writes; `None` for a range deletion.
fn written_key(op: &Op) -> Option<&str> {
    match op {
        Op::Put { key, .. } | Op::Delete { key } => Some(key),
        Op::DeleteRange { .. } => None,
    }
}

/// One transaction holding every member's compares (each once) and operations.
fn merge<'a>(members: impl Iterator<Item = &'a Txn>) -> Txn {
    let mut merged = Txn::new();
    let mut compared = HashSet::new();
    for txn in members {
        for compare in &txn.compares {
            if compared.insert(compare_key(compare).to_owned()) {
                merged.compares.push(compare.clone());
            }
        }
        merged.ops.extend(txn.ops.iter().cloned());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    fn put(key: &str) -> Txn {
        Txn::new()
            .when(Compare::ModRevision {
                key: key.into(),
                revision: 0,
            })
            .put(key, "v")
    }

    /// Commits every transaction at once, each from its own task; the answers in order.
    async fn commit_together(group: &GroupCommit, txns: Vec<Txn>) -> Vec<TxnResult> {
        let calls: Vec<_> = txns
            .into_iter()
            .map(|txn| {
                let group = group.clone();
                tokio::spawn(async move { group.txn(txn).await })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(
                call.await
                    .expect("the call ran")
                    .expect("the store answered"),
            );
        }
        answers
    }

    #[tokio::test]
    async fn transactions_waiting_together_share_one_revision() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let group = GroupCommit::new(Arc::clone(&store));
        let txns = (0..20).map(|i| put(&format!("k{i}"))).collect();
        let answers = commit_together(&group, txns).await;
        assert!(answers.iter().all(|a| a.succeeded), "{answers:?}");
        let revisions: HashSet<_> = answers.iter().map(|a| a.revision).collect();
        assert!(
            revisions.len() < answers.len(),
            "no two commits shared a transaction: {answers:?}"
        );
        assert_eq!(store.list("k").await.unwrap().kvs.len(), 20);
    }

    #[tokio::test]
    async fn a_failed_compare_fails_only_its_own_transaction() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        store.txn(Txn::new().put("k7", "taken")).await.unwrap();
        let group = GroupCommit::new(Arc::clone(&store));
        let txns = (0..20).map(|i| put(&format!("k{i}"))).collect();
        let answers = commit_together(&group, txns).await;
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(answer.succeeded, i != 7, "transaction {i}: {answer:?}");
        }
        let stored = store.list("k").await.unwrap().kvs;
        assert_eq!(stored.len(), 20);
        let k7 = stored.iter().find(|kv| kv.key == "k7").unwrap();
        assert_eq!(k7.value, b"taken");
    }

    #[tokio::test]
    async fn writes_of_one_key_never_share_a_transaction() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let group = GroupCommit::new(Arc::clone(&store));
        // Both create "same": exactly one may win, whatever the batching.
        let txns = vec![put("a"), put("same"), put("b"), put("same"), put("c")];
        let answers = commit_together(&group, txns).await;
        let won: Vec<bool> = answers.iter().map(|a| a.succeeded).collect();
        assert_eq!(won, [true, true, true, false, true]);
        // A transaction refused by the store gets the refusal; the others still commit.
        let txns = vec![put("d"), Txn::new().put("e", "1").put("e", "2"), put("f")];
        let calls: Vec<_> = txns
            .into_iter()
            .map(|txn| {
                let group = group.clone();
                tokio::spawn(async move { group.txn(txn).await })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }
        assert!(answers[0].as_ref().is_ok_and(|a| a.succeeded));
        assert!(
            matches!(answers[1], Err(StoreError::Rejected(_))),
            "{answers:?}"
        );
        assert!(answers[2].as_ref().is_ok_and(|a| a.succeeded));
    }

    #[test]
    fn a_batch_takes_what_fits_and_leaves_the_rest_in_order() {
        let mut waiting: VecDeque<Waiting> = VecDeque::new();
        let shared_compare = Compare::ModRevision {
            key: "region".into(),
            revision: 3,
        };
        let txns = [
            put("a").when(shared_compare.clone()),
            put("b").when(shared_compare.clone()),
            // Another view of the region: waits for the next batch.
            put("c").when(Compare::ModRevision {
                key: "region".into(),
                revision: 4,
            }),
            // Compares a key the batch writes.
            put("a2").when(Compare::ModRevision {
                key: "a".into(),
                revision: 0,
            }),
            Txn::new().delete_range("x", "y"),
            put("d"),
        ];
        for txn in txns {
            let (answer, _) = oneshot::channel();
            waiting.push_back(Waiting { txn, answer });
        }
        let keys = |batch: &[Waiting]| -> Vec<String> {
            batch
                .iter()
                .map(|w| match &w.txn.ops[0] {
                    Op::Put { key, .. } | Op::Delete { key } => key.clone(),
                    Op::DeleteRange { start, .. } => format!("range {start}"),
                })
                .collect()
        };
        let first = take_batch(&mut waiting);
        assert_eq!(keys(&first), ["a", "b", "d"]);
        let second = take_batch(&mut waiting);
        assert_eq!(keys(&second), ["c", "a2"]);
        let third = take_batch(&mut waiting);
        assert_eq!(keys(&third), ["range x"]);
        assert!(waiting.is_empty());
    }
}
