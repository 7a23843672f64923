//! RouteMessage deduplication for one service: messages with the same idempotency key
//! (from the same caller) are one message. While one is in flight, the others with its key
//! wait for its outcome instead of reaching a node again ([`Claim::Joined`]); its answer
//! is then kept for the service's `limits.dedup_ttl_ms` and replayed to a retry with the
//! same key ([`Claim::Replayed`]). Errors are never kept: the calls waiting for a failed
//! call get its status, and the next call with the key reaches a node. A first call that
//! goes away without an outcome (its caller cancelled) lets one of its waiters make the
//! call instead.
//!
//! What is kept is bounded in entries and in bytes (the answers' encoded size); the
//! oldest answers go first. All answers of a service share one TTL, so the oldest is also
//! the first to expire, and one queue in insertion order serves both expiry and eviction.
//!
//! One mutex guards the map. It is taken only by messages that carry a key, held for a
//! map operation (never across an await), and each service has its own.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::Counter;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

/// A message's identity for deduplication within one service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    /// Who sent it (a hash of its credential), 0 when anonymous.
    pub caller: u64,
    /// The idempotency key (or the id, when the service's ids are unique).
    pub key: String,
}

/// How long answers are kept, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupSettings {
    /// Zero keeps no answers; calls in flight are still joined.
    pub ttl: Duration,
    pub max_entries: usize,
    pub max_bytes: u64,
}

/// What a call with a key does.
pub enum Claim<T> {
    /// No call with the key is in flight and no answer is kept: this call makes it, and
    /// tells the others how it ended through [`FirstCall::finish`].
    First(FirstCall<T>),
    /// A call with the key is in flight: wait for its outcome.
    Joined(JoinedCall<T>),
    /// The kept answer of an earlier call with the key.
    Replayed(T),
}

/// The outcomes of one service's keyed messages.
#[derive(Debug)]
pub struct DedupCache<T> {
    settings: DedupSettings,
    state: Mutex<State<T>>,
    hits: Counter,
    joins: Counter,
    evictions: Counter,
}

#[derive(Debug)]
struct State<T> {
    entries: HashMap<DedupKey, Entry<T>>,
    /// Kept answers, oldest first, with their sequence numbers (an item whose entry has
    /// gone or changed is skipped).
    kept: VecDeque<(u64, DedupKey)>,
    kept_entries: usize,
    kept_bytes: u64,
    next_seq: u64,
}

#[derive(Debug)]
enum Entry<T> {
    InFlight {
        outcome: watch::Sender<Option<Result<T, Status>>>,
        seq: u64,
    },
    Kept {
        answer: T,
        bytes: u64,
        expires: Instant,
        seq: u64,
    },
}

impl<T: Clone> DedupCache<T> {
    pub fn new(service: &str, settings: DedupSettings) -> Self {
        let counter = |outcome: &'static str| {
            metrics::counter!(
                "meridian_proxy_dedup_total",
                "service" => service.to_owned(),
                "outcome" => outcome
            )
        };
        DedupCache {
            settings,
            state: Mutex::new(State {
                entries: HashMap::new(),
                kept: VecDeque::new(),
                kept_entries: 0,
                kept_bytes: 0,
                next_seq: 0,
            }),
            hits: counter("hit"),
            joins: counter("join"),
            evictions: counter("eviction"),
        }
    }

    pub fn settings(&self) -> DedupSettings {
        self.settings
    }

    /// Answers kept and their bytes, and calls in flight, for `/debug/table`.
    pub fn usage(&self) -> (usize, u64, usize) {
        let state = self.lock();
        let in_flight = state.entries.len() - state.kept_entries;
        (state.kept_entries, state.kept_bytes, in_flight)
    }

    /// What the call with `key` does now.
    pub fn claim(self: &Arc<Self>, key: &DedupKey) -> Claim<T> {
        let now = Instant::now();
        let mut state = self.lock();
        self.make_room(&mut state, now, 0);
        match state.entries.get(key) {
            Some(Entry::Kept { answer, .. }) => {
                self.hits.increment(1);
                return Claim::Replayed(answer.clone());
            }
            Some(Entry::InFlight { outcome, .. }) => {
                self.joins.increment(1);
                return Claim::Joined(JoinedCall {
                    outcome: outcome.subscribe(),
                });
            }
            None => {}
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let (outcome, _) = watch::channel(None);
        state
            .entries
            .insert(key.clone(), Entry::InFlight { outcome, seq });
        Claim::First(FirstCall {
            cache: Arc::clone(self),
            key: Some(key.clone()),
            seq,
        })
    }

    /// Drops expired answers, then the oldest until `incoming` more bytes and one more
    /// entry fit (`incoming` 0: only expired ones).
    fn make_room(&self, state: &mut State<T>, now: Instant, incoming: u64) {
        let needs_room = |state: &State<T>| {
            incoming > 0
                && (state.kept_entries + 1 > self.settings.max_entries
                    || state.kept_bytes + incoming > self.settings.max_bytes)
        };
        while let Some((seq, key)) = state.kept.front() {
            let expired = match state.entries.get(key) {
                Some(Entry::Kept {
                    expires, seq: kept, ..
                }) if kept == seq => Some(*expires <= now),
                // Gone or replaced: a stale item.
                _ => None,
            };
            let Some(expired) = expired else {
                state.kept.pop_front();
                continue;
            };
            if !expired && !needs_room(state) {
                break;
            }
            let (_, key) = state.kept.pop_front().expect("a front item");
            if let Some(Entry::Kept { bytes, .. }) = state.entries.remove(&key) {
                state.kept_entries -= 1;
                state.kept_bytes -= bytes;
            }
            if !expired {
                self.evictions.increment(1);
            }
        }
    }
}

impl<T> DedupCache<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding the lock leaves the map consistent (every change is one
        // map operation), so a poisoned lock is used as is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The call that reaches a node for its key.
#[derive(Debug)]
pub struct FirstCall<T> {
    cache: Arc<DedupCache<T>>,
    /// `None` once finished.
    key: Option<DedupKey>,
    seq: u64,
}

impl<T: Clone> FirstCall<T> {
    /// Tells the calls waiting how this one ended, and keeps an answer (`bytes` its size)
    /// for the TTL, within the bounds; errors are not kept.
    pub fn finish(mut self, outcome: Result<&T, &Status>, bytes: u64) {
        let Some(key) = self.key.take() else { return };
        let cache = &*self.cache;
        let settings = cache.settings;
        let now = Instant::now();
        let mut state = cache.lock();
        let Some(Entry::InFlight {
            outcome: sender, ..
        }) = remove_own(&mut state, &key, self.seq)
        else {
            return;
        };
        if sender.receiver_count() > 0 {
            sender.send_replace(Some(outcome.cloned().map_err(Clone::clone)));
        }
        let Ok(answer) = outcome else { return };
        if settings.ttl.is_zero() || settings.max_entries == 0 || bytes > settings.max_bytes {
            return;
        }
        cache.make_room(&mut state, now, bytes.max(1));
        let seq = self.seq;
        state.kept.push_back((seq, key.clone()));
        state.kept_entries += 1;
        state.kept_bytes += bytes;
        state.entries.insert(
            key,
            Entry::Kept {
                answer: answer.clone(),
                bytes,
                expires: now + settings.ttl,
                seq,
            },
        );
    }
}

impl<T> Drop for FirstCall<T> {
    /// Gone without an outcome: the waiters find the channel closed and claim again.
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut state = self.cache.lock();
            remove_own(&mut state, &key, self.seq);
        }
    }
}

/// Removes the in-flight entry of `key` if it is the one numbered `seq`.
fn remove_own<T>(state: &mut State<T>, key: &DedupKey, seq: u64) -> Option<Entry<T>> {
    match state.entries.get(key) {
        Some(Entry::InFlight { seq: own, .. }) if *own == seq => state.entries.remove(key),
        _ => None,
    }
}

/// A call waiting for the one in flight with its key.
#[derive(Debug)]
pub struct JoinedCall<T> {
    outcome: watch::Receiver<Option<Result<T, Status>>>,
}

impl<T: Clone> JoinedCall<T> {
    /// The first call's outcome; `None` if it went away without one (claim again).
    pub async fn wait(mut self) -> Option<Result<T, Status>> {
        match self.outcome.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> DedupKey {
        DedupKey {
            caller: 0,
            key: k.to_owned(),
        }
    }

    fn cache(ttl_ms: u64, max_entries: usize, max_bytes: u64) -> Arc<DedupCache<String>> {
        Arc::new(DedupCache::new(
            "demo.v1.Echo",
            DedupSettings {
                ttl: Duration::from_millis(ttl_ms),
                max_entries,
                max_bytes,
            },
        ))
    }

    fn first(claim: Claim<String>) -> FirstCall<String> {
        match claim {
            Claim::First(first) => first,
            Claim::Joined(_) => panic!("joined, expected the first call"),
            Claim::Replayed(a) => panic!("replayed {a:?}, expected the first call"),
        }
    }

    fn replayed(claim: Claim<String>) -> Option<String> {
        match claim {
            Claim::Replayed(answer) => Some(answer),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_flight_with_the_same_key_wait_for_the_first() {
        let cache = cache(0, 10, 1_000);
        let leader = first(cache.claim(&key("k")));
        let Claim::Joined(a) = cache.claim(&key("k")) else {
            panic!("joins the call in flight")
        };
        let Claim::Joined(b) = cache.claim(&key("k")) else {
            panic!("joins the call in flight")
        };
        // Another key, or the same key from another caller, is another message.
        first(cache.claim(&key("other")));
        let other_caller = DedupKey {
            caller: 7,
            ..key("k")
        };
        first(cache.claim(&other_caller));
        let waiting = tokio::spawn(async move { (a.wait().await, b.wait().await) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.finish(Ok(&"answer".to_owned()), 6);
        let (a, b) = waiting.await.unwrap();
        assert_eq!(a.unwrap().unwrap(), "answer");
        assert_eq!(b.unwrap().unwrap(), "answer");
        // TTL 0: nothing kept, the next call with the key reaches a node.
        first(cache.claim(&key("k")));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_replayed_within_the_ttl_only() {
        let cache = cache(1_000, 10, 1_000);
        first(cache.claim(&key("k"))).finish(Ok(&"answer".to_owned()), 6);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(replayed(cache.claim(&key("k"))).as_deref(), Some("answer"));
        tokio::time::advance(Duration::from_millis(1)).await;
        let _again = first(cache.claim(&key("k")));
        assert_eq!(cache.usage(), (0, 0, 1), "the expired answer is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_reach_the_waiters_and_are_not_kept() {
        let cache = cache(60_000, 10, 1_000);
        let leader = first(cache.claim(&key("k")));
        let Claim::Joined(waiter) = cache.claim(&key("k")) else {
            panic!("joins")
        };
        leader.finish(Err(&Status::unavailable("no node")), 0);
        let status = waiter.wait().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "no node");
        first(cache.claim(&key("k")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_call_that_goes_away_lets_a_waiter_call() {
        let cache = cache(60_000, 10, 1_000);
        let leader = first(cache.claim(&key("k")));
        let Claim::Joined(waiter) = cache.claim(&key("k")) else {
            panic!("joins")
        };
        drop(leader);
        assert!(waiter.wait().await.is_none(), "no outcome: claim again");
        first(cache.claim(&key("k")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_answers_are_evicted_past_the_entry_bound() {
        let cache = cache(60_000, 3, 1_000);
        for k in ["a", "b", "c", "d"] {
            first(cache.claim(&key(k))).finish(Ok(&k.to_owned()), 1);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(cache.usage(), (3, 3, 0));
        assert_eq!(replayed(cache.claim(&key("a"))), None, "the oldest went");
        for k in ["b", "c", "d"] {
            assert_eq!(replayed(cache.claim(&key(k))).as_deref(), Some(k));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_answers_are_evicted_past_the_byte_bound() {
        let cache = cache(60_000, 100, 100);
        for (k, bytes) in [("a", 40), ("b", 40), ("c", 40)] {
            first(cache.claim(&key(k))).finish(Ok(&k.to_owned()), bytes);
        }
        assert_eq!(cache.usage(), (2, 80, 0), "a went to make room for c");
        assert_eq!(replayed(cache.claim(&key("a"))), None);
        assert!(replayed(cache.claim(&key("b"))).is_some());
        // An answer larger than the whole bound is not kept, and evicts nothing.
        first(cache.claim(&key("huge"))).finish(Ok(&"huge".to_owned()), 101);
        assert_eq!(cache.usage(), (2, 80, 0));
    }
}
