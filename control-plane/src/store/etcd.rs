//! The etcd backend: the [`Store`] interface over etcd's v3 API (`etcd-client`), for
//! production and every multi-replica setup.
//!
//! The interface already has etcd's semantics, so this is mostly translation; what it
//! adds is the edges:
//! - **Errors** become [`StoreError`] in one place ([`EtcdStore::error`]), by gRPC code
//!   rather than by message: connection and availability problems are `Unavailable`
//!   (naming the endpoints), "lease not found" is `LeaseNotFound`, invalid requests are
//!   `Rejected`. Every unary call is bounded by [`REQUEST_TIMEOUT`].
//! - **Watches** are split into one batch per revision (etcd may pack several revisions
//!   into one response while catching up), skip progress notifications, turn a
//!   compaction cancel into `Compacted`, and end with `Unavailable` when the stream
//!   breaks.
//! - **The channel**: connect timeout from the caller, HTTP/2 keep-alive pings every
//!   [`KEEPALIVE_INTERVAL`] only while streams are open. etcd answers pings more often
//!   than every 5 s, or pings on an idle connection, with GOAWAY ("too many pings"),
//!   which would break every open watch.
//!
//! - **Leaderless members**: requests carry etcd's "require leader" flag, so a member cut
//!   off from its quorum fails requests and cancels watches (`Unavailable`) instead of
//!   leaving a watcher silently waiting for changes it will never see.
//! - **Message sizes**: a gRPC client decodes at most 4 MiB per response by default, and
//!   a federation at its limits is far larger (10,000 nodes of up to ~15 KiB each). Lists
//!   are read in pages of [`LIST_PAGE_KEYS`] keys, all at the revision of the first page
//!   so the listing is one consistent snapshot (a page too large to decode is read again
//!   in halves; a revision compacted between pages restarts the listing). A watch that
//!   catches up gets up to 1,000 revisions in one response; with topology writes bounded
//!   by the limits (a node write is a few tens of KiB at most) that stays well within
//!   [`MAX_RESPONSE_BYTES`], the decode limit of both clients.
//!
//! - **TLS and etcd users** come from [`EtcdAccess`]; a connection that etcd refuses (bad
//!   password, missing permission, untrusted certificate) is told apart from an etcd that
//!   does not answer ([`EtcdConnectError::is_retryable`]), so a misconfigured control
//!   plane stops at start instead of waiting forever.
//!
//! `etcd_client::Client` is a cheap handle over one shared channel that reconnects by
//! itself, so each call clones the sub-client it needs instead of locking. The client sits
//! behind a swap point shared by every clone of the store, so that a client connected with
//! rotated TLS files ([`super::etcd_rotation`]) replaces it: each request, and each watch
//! or lease keep-alive when it is (re)opened, takes the current one; streams already open
//! keep the client they were opened on until they end.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, PutOptions, ResponseHeader, Txn as EtcdTxn, TxnOp, WatchOptions, WatchResponse,
};
use tonic::Code;

use super::etcd_access::{EtcdAccess, EtcdConnectError, Stage};
use super::etcd_keepers::{Keeper, Keepers};
use super::{
    Compare, KeyValue, LeaseId, Listing, Op, Revision, Store, StoreError, Txn, TxnResult,
    WatchEvent, WatchStream,
};

/// How long any single request may take before it counts as `Unavailable`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive ping interval; at or above etcd's 5 s enforcement minimum.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a keep-alive ping may go unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// etcd's message for a compaction request at or below the last compaction; the error
/// shares its gRPC code (OutOfRange) with "future revision", so only the text tells them
/// apart (etcd's own Go client compares this text too).
const ALREADY_COMPACTED: &str = "required revision has been compacted";
/// tonic's message for a response over the decode limit (code OutOfRange, like the above).
const TOO_LARGE: &str = "decoded message length too large";
/// Keys per page of a list.
pub const LIST_PAGE_KEYS: i64 = 1_000;
/// The largest response the etcd clients decode.
pub const MAX_RESPONSE_BYTES: usize = 128 * 1024 * 1024;
/// Listings restarted because compaction removed their revision between two pages.
const LIST_ATTEMPTS: usize = 3;

/// A store backed by an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    /// The current client, shared by every clone of the store.
    client: Arc<ArcSwap<Client>>,
    /// The endpoints, comma-separated, for error messages.
    endpoints: String,
    /// Keys per page of a list.
    page_keys: i64,
    /// TLS and user, to explain a refusal.
    access: EtcdAccess,
    /// Lease keep-alive streams kept open between renewals.
    keepers: Arc<Keepers>,
}

impl EtcdStore {
    /// Connects to `endpoints` without TLS or a user and checks that one of them answers
    /// within `dial_timeout`.
    pub async fn connect(endpoints: &[String], dial_timeout: Duration) -> Result<Self, StoreError> {
        Self::connect_with(endpoints, dial_timeout, &EtcdAccess::default())
            .await
            .map_err(|e| match e {
                EtcdConnectError::Unreachable(e) => e,
                refused => StoreError::Unavailable(refused.to_string()),
            })
    }

    /// Connects to `endpoints` with `access` (TLS, a user) and checks that one of them
    /// answers within `dial_timeout`. With a user, connecting authenticates.
    pub async fn connect_with(
        endpoints: &[String],
        dial_timeout: Duration,
        access: &EtcdAccess,
    ) -> Result<Self, EtcdConnectError> {
        if endpoints.is_empty() {
            return Err(EtcdConnectError::Unreachable(StoreError::Unavailable(
                "no etcd endpoints were given".to_owned(),
            )));
        }
        access.check_handshake(endpoints, dial_timeout).await?;
        let named = endpoints.join(",");
        let no_answer = || {
            EtcdConnectError::Unreachable(StoreError::Unavailable(format!(
                "no etcd endpoint of {named} answered within {dial_timeout:?}"
            )))
        };
        let options = connect_options(dial_timeout, access);
        let client =
            match tokio::time::timeout(dial_timeout, Client::connect(endpoints, Some(options)))
                .await
            {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => {
                    return Err(access.connect_error(&named, Stage::Authenticate, e, |e| {
                        StoreError::Unavailable(format!("etcd at {named}: {e}"))
                    }));
                }
                Err(_) => return Err(no_answer()),
            };
        let store = EtcdStore {
            client: Arc::new(ArcSwap::from_pointee(client)),
            endpoints: named.clone(),
            page_keys: LIST_PAGE_KEYS,
            access: access.clone(),
            keepers: Arc::default(),
        };
        // The channel connects lazily; one status request proves that an endpoint answers.
        let mut maintenance = store.client().maintenance_client();
        match tokio::time::timeout(dial_timeout, maintenance.status()).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => {
                Err(access.connect_error(&named, Stage::Request, e, |e| store.error(e, None)))
            }
            Err(_) => Err(no_answer()),
        }
    }

    /// Makes `other`'s client the one this store (and every clone of it) uses from now
    /// on; streams already open keep theirs.
    pub fn use_client_of(&self, other: &EtcdStore) {
        self.client.store(other.client.load_full());
    }

    /// Checks that this client may read under `prefix`: etcd answers a status request
    /// without looking at credentials, so a missing user or role shows only here.
    pub async fn check_access(&self, prefix: &str) -> Result<(), EtcdConnectError> {
        let options = GetOptions::new()
            .with_range(super::prefix_end(prefix).as_bytes())
            .with_count_only();
        let mut kv = self.kv_client();
        match tokio::time::timeout(REQUEST_TIMEOUT, kv.get(prefix, Some(options))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self
                .access
                .connect_error(&self.endpoints, Stage::Request, e, |e| self.error(e, None))),
            Err(_) => Err(EtcdConnectError::Unreachable(self.timed_out("a read"))),
        }
    }

    /// Reads lists in pages of `keys` keys instead of [`LIST_PAGE_KEYS`] (at least one).
    pub fn with_page_keys(mut self, keys: i64) -> Self {
        self.page_keys = keys.max(1);
        self
    }

    /// The current client (a cheap clone: a handle on its channel).
    /// One keep-alive on an open stream; returns the lease's TTL.
    async fn renew(&self, keeper: &mut Keeper, lease: LeaseId) -> Result<i64, StoreError> {
        self.call(
            "a lease keep-alive",
            Some(lease),
            keeper.keeper.keep_alive(),
        )
        .await?;
        let response = self
            .call(
                "a lease keep-alive",
                Some(lease),
                keeper.responses.message(),
            )
            .await?
            .ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "etcd at {} closed the lease keep-alive stream",
                    self.endpoints
                ))
            })?;
        if response.ttl() <= 0 {
            return Err(StoreError::LeaseNotFound(lease));
        }
        Ok(response.ttl())
    }

    fn client(&self) -> Client {
        Client::clone(&self.client.load())
    }

    fn kv_client(&self) -> etcd_client::KvClient {
        self.client()
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// Every key under `prefix`, page by page at the first page's revision.
    async fn list_pages(&self, prefix: &str) -> Result<Listing, StoreError> {
        let end = super::prefix_end(prefix);
        let mut kv = self.kv_client();
        let mut listing = Listing::default();
        let mut from = prefix.as_bytes().to_vec();
        let mut page_keys = self.page_keys;
        loop {
            let options = GetOptions::new()
                .with_range(end.as_bytes())
                .with_limit(page_keys)
                .with_revision(listing.revision);
            let mut response = match self
                .call("a list", None, kv.get(from.clone(), Some(options)))
                .await
            {
                Ok(response) => response,
                Err(StoreError::Rejected(message))
                    if message.contains(TOO_LARGE) && page_keys > 1 =>
                {
                    page_keys = (page_keys / 2).max(1);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if listing.revision == 0 {
                listing.revision = self.header_revision(response.header())?;
            }
            let more = response.more();
            let kvs = response.take_kvs();
            if let Some(last) = kvs.last() {
                // The smallest key after the last one read.
                from = [last.key(), &[0]].concat();
            }
            listing.kvs.extend(kvs.iter().map(key_value));
            if !more || kvs.is_empty() {
                return Ok(listing);
            }
        }
    }

    /// Runs one request with [`REQUEST_TIMEOUT`]; `lease` names the lease a "not found"
    /// refers to.
    async fn call<T>(
        &self,
        what: &str,
        lease: Option<LeaseId>,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(self.error(e, lease)),
            Err(_) => Err(self.timed_out(what)),
        }
    }

    fn timed_out(&self, what: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "etcd at {} did not answer {what} within {REQUEST_TIMEOUT:?}",
            self.endpoints
        ))
    }

    /// The one place etcd errors become store errors.
    fn error(&self, error: etcd_client::Error, lease: Option<LeaseId>) -> StoreError {
        use etcd_client::Error;
        match error {
            Error::GRpcStatus(status) => match (status.code(), lease) {
                // etcd's only NotFound is "requested lease not found".
                (Code::NotFound, Some(lease)) => StoreError::LeaseNotFound(lease),
                (
                    Code::InvalidArgument
                    | Code::FailedPrecondition
                    | Code::OutOfRange
                    | Code::AlreadyExists
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::NotFound,
                    _,
                ) => StoreError::Rejected(status.message().to_owned()),
                _ => StoreError::Unavailable(format!(
                    "etcd at {}: {} ({:?})",
                    self.endpoints,
                    status.message(),
                    status.code()
                )),
            },
            Error::InvalidArgs(message) => StoreError::Rejected(message),
            other => StoreError::Unavailable(format!("etcd at {}: {other}", self.endpoints)),
        }
    }

    fn header_revision(&self, header: Option<&ResponseHeader>) -> Result<Revision, StoreError> {
        header.map(ResponseHeader::revision).ok_or_else(|| {
            StoreError::Unavailable(format!(
                "etcd at {} answered without a response header",
                self.endpoints
            ))
        })
    }
}

/// How every client of the store connects: `dial_timeout`, keep-alive pings only while
/// streams are open, the "require leader" flag, and `access`'s TLS and user.
fn connect_options(dial_timeout: Duration, access: &EtcdAccess) -> ConnectOptions {
    access.apply(
        ConnectOptions::new()
            .with_connect_timeout(dial_timeout)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
            .with_require_leader(true),
    )
}

fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        // Every key is written through this interface, from a String.
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

fn etcd_txn(txn: Txn) -> EtcdTxn {
    let compares: Vec<EtcdCompare> = txn
        .compares
        .into_iter()
        .map(|compare| match compare {
            // A missing key's mod revision is 0 in etcd, so 0 means "absent" there too.
            Compare::ModRevision { key, revision } => {
                EtcdCompare::mod_revision(key, CompareOp::Equal, revision)
            }
            // etcd fails a value compare on a missing key, as the interface requires.
            Compare::Value { key, value } => EtcdCompare::value(key, CompareOp::Equal, value),
        })
        .collect();
    let ops: Vec<TxnOp> = txn
        .ops
        .into_iter()
        .map(|op| match op {
            // A put without a lease carries lease 0, which detaches the key from its old
            // lease, as in the embedded store.
            Op::Put { key, value, lease } => {
                let options = PutOptions::new().with_lease(lease.unwrap_or(0));
                TxnOp::put(key, value, Some(options))
            }
            Op::Delete { key } => TxnOp::delete(key, None),
            Op::DeleteRange { start, end } => {
                TxnOp::delete(start, Some(DeleteOptions::new().with_range(end)))
            }
        })
        .collect();
    EtcdTxn::new().when(compares).and_then(ops)
}

#[tonic::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self.kv_client();
        let response = self.call("a get", None, kv.get(key, None)).await?;
        Ok(response.kvs().first().map(key_value))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let mut attempt = 1;
        loop {
            match self.list_pages(prefix).await {
                Err(StoreError::Rejected(message))
                    if message.contains(ALREADY_COMPACTED) && attempt < LIST_ATTEMPTS =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        // etcd says only "requested lease not found"; with several leases in one
        // transaction, the first one is named.
        let lease = txn.ops.iter().find_map(|op| match op {
            Op::Put {
                lease: Some(lease), ..
            } if *lease != 0 => Some(*lease),
            _ => None,
        });
        let mut kv = self.kv_client();
        let response = self
            .call("a transaction", lease, kv.txn(etcd_txn(txn)))
            .await?;
        Ok(TxnResult {
            succeeded: response.succeeded(),
            revision: self.header_revision(response.header())?,
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from.max(0));
        let mut watch_client = self
            .client()
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let mut stream = self
            .call("a watch", None, watch_client.watch(prefix, Some(options)))
            .await?;
        let mut watcher = EtcdWatcher {
            stream: None,
            next: from,
            pending: VecDeque::new(),
            endpoints: self.endpoints.clone(),
        };
        // Waits for etcd to confirm the watch, so that a watch it refuses fails here.
        let created = self
            .call("a watch", None, stream.message())
            .await?
            .ok_or_else(|| watcher.ended())?;
        watcher.take(created)?;
        watcher.stream = Some(stream);
        Ok(Box::pin(futures::stream::unfold(
            watcher,
            |mut watcher| async move {
                let item = watcher.next_batch().await?;
                Some((item, watcher))
            },
        )))
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseId, StoreError> {
        let mut lease = self.client().lease_client();
        let response = self
            .call("a lease grant", None, lease.grant(ttl_seconds, None))
            .await?;
        if !response.error().is_empty() {
            return Err(StoreError::Rejected(response.error().to_owned()));
        }
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<i64, StoreError> {
        if let Some(keeper) = self.keepers.get(lease) {
            let renewed = self.renew(&mut *keeper.lock().await, lease).await;
            match renewed {
                Ok(ttl) => return Ok(ttl),
                Err(StoreError::LeaseNotFound(lease)) => {
                    self.keepers.remove(lease);
                    return Err(StoreError::LeaseNotFound(lease));
                }
                // The stream broke (etcd restarted, the client was replaced): open anew.
                Err(_) => self.keepers.remove(lease),
            }
        }
        let mut lease_client = self.client().lease_client();
        // Opening the keeper already sends one keep-alive and reads its answer; that
        // answer is not returned, so a second one reads the TTL.
        let opened = tokio::time::timeout(REQUEST_TIMEOUT, lease_client.keep_alive(lease)).await;
        let (keeper, responses) = match opened {
            Ok(Ok(opened)) => opened,
            // The keeper's own check failed: etcd answered with a TTL <= 0.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => {
                return Err(StoreError::LeaseNotFound(lease));
            }
            Ok(Err(e)) => return Err(self.error(e, Some(lease))),
            Err(_) => return Err(self.timed_out("a lease keep-alive")),
        };
        let mut keeper = Keeper { keeper, responses };
        let ttl = self.renew(&mut keeper, lease).await?;
        self.keepers.insert(lease, keeper);
        Ok(ttl)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.keepers.remove(lease);
        let mut lease_client = self.client().lease_client();
        match self
            .call("a lease revoke", Some(lease), lease_client.revoke(lease))
            .await
        {
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut kv = self.kv_client();
        match self
            .call("a compaction", None, kv.compact(revision, None))
            .await
        {
            Ok(_) => Ok(()),
            // Compacting to a revision already compacted is done already.
            Err(StoreError::Rejected(message)) if message.contains(ALREADY_COMPACTED) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let mut kv = self.kv_client();
        // A count-only read of one key: linearizable, and carries the revision.
        let options = GetOptions::new().with_count_only();
        let response = self
            .call("a revision read", None, kv.get(vec![0u8], Some(options)))
            .await?;
        self.header_revision(response.header())
    }
}

// === impl EtcdWatcher ===

/// One etcd watch turned into batches of one revision each.
struct EtcdWatcher {
    /// `None` only while the watch is being created, and once it has ended.
    stream: Option<etcd_client::WatchStream>,
    /// The next revision this watcher has not seen.
    next: Revision,
    pending: VecDeque<Vec<WatchEvent>>,
    endpoints: String,
}

impl EtcdWatcher {
    async fn next_batch(&mut self) -> Option<Result<Vec<WatchEvent>, StoreError>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            let stream = self.stream.as_mut()?;
            let result = match stream.message().await {
                Ok(Some(response)) => self.take(response),
                Ok(None) => Err(self.ended()),
                Err(e) => Err(StoreError::Unavailable(format!(
                    "the watch on etcd at {} failed: {e}",
                    self.endpoints
                ))),
            };
            if let Err(error) = result {
                // Dropping the stream cancels the watch on the server.
                self.stream = None;
                return Some(Err(error));
            }
        }
    }

    /// Queues a response's events, one batch per revision; fails when etcd ended the
    /// watch.
    fn take(&mut self, response: WatchResponse) -> Result<(), StoreError> {
        if response.compact_revision() > 0 {
            return Err(StoreError::Compacted {
                requested: self.next,
                compacted: response.compact_revision(),
            });
        }
        if response.canceled() {
            return Err(StoreError::Unavailable(format!(
                "etcd at {} cancelled the watch: {}",
                self.endpoints,
                response.cancel_reason()
            )));
        }
        // Creation confirmations and progress notifications carry no events.
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let event = match event.event_type() {
                EventType::Put => WatchEvent::Put(key_value(kv)),
                EventType::Delete => WatchEvent::Delete {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    mod_revision: kv.mod_revision(),
                },
            };
            let revision = event.revision();
            match self.pending.back_mut() {
                Some(batch) if batch.last().is_some_and(|e| e.revision() == revision) => {
                    batch.push(event)
                }
                _ => self.pending.push_back(vec![event]),
            }
            self.next = self.next.max(revision + 1);
        }
        Ok(())
    }

    fn ended(&self) -> StoreError {
        StoreError::Unavailable(format!("etcd at {} ended the watch stream", self.endpoints))
    }
}
