//! Rotated etcd TLS files (store.etcd_tls: `--etcd-ca`, `--etcd-cert`, `--etcd-key`) put
//! to use without a restart, as every other TLS file in Meridian is
//! (`meridian_shared::tls`). etcd-client builds its TLS configuration once per channel, so
//! a rotation cannot be swapped into the running client: it takes a new client, connected
//! with the same options and checked like the first one, which then replaces the store's
//! ([`EtcdStore::use_client_of`]).
//!
//! The files are looked at once a second (size and modification time, as
//! `meridian_shared::tls` does: the same on every file system, and it follows a Kubernetes
//! Secret's symlink swap). A new client that cannot be built, or that etcd does not answer
//! or refuses, is logged with the reason and the previous client stays in use. That is not
//! retried until the files change again, so a broken file is logged once, not every
//! second; a certificate and its key written one after the other may fail once (key
//! mismatch) and succeed at the next poll, which sees the second write.

use std::path::PathBuf;
use std::time::Duration;

use meridian_shared::Shutdown;
use meridian_shared::config::StoreConfig;
use meridian_shared::tls::FileStamp;
use tokio::time::MissedTickBehavior;

use super::etcd::EtcdStore;
use super::etcd_access::{EtcdAccess, EtcdAccessError, EtcdConnectError};

/// How often the files are looked at.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why the rotated files are not in use.
#[derive(Debug, thiserror::Error)]
enum RotationError {
    #[error(transparent)]
    Files(#[from] EtcdAccessError),
    #[error(transparent)]
    Connect(#[from] EtcdConnectError),
}

/// Starts watching the TLS files of `config` for `store`, until `shutdown`; does nothing
/// when etcd is reached without TLS.
pub fn spawn(store: EtcdStore, config: &StoreConfig, shutdown: Shutdown) {
    let Some(tls) = &config.etcd_tls else {
        return;
    };
    let paths: Vec<PathBuf> = [&tls.ca, &tls.cert, &tls.key]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    tokio::spawn(watch(store, config.clone(), paths, shutdown));
}

async fn watch(store: EtcdStore, config: StoreConfig, paths: Vec<PathBuf>, shutdown: Shutdown) {
    let mut seen = FileStamp::of(&paths);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let stamp = FileStamp::of(&paths);
        if stamp == seen {
            continue;
        }
        seen = stamp;
        let reconnected = tokio::select! {
            _ = shutdown.wait() => return,
            reconnected = reconnect(&store, &config) => reconnected,
        };
        match reconnected {
            Ok(()) => tracing::info!("reconnected to etcd with the rotated TLS files"),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot use the changed etcd TLS files (store.etcd_tls); the previous etcd \
                 connection stays in use until they change again"
            ),
        }
    }
}

/// Connects a client with the files as they are now, checks that etcd answers it and
/// lets it read the prefix (as at start), and makes it the store's.
async fn reconnect(store: &EtcdStore, config: &StoreConfig) -> Result<(), RotationError> {
    let access = EtcdAccess::load(config)?;
    let timeout = Duration::from_millis(u64::from(config.dial_timeout_ms));
    let rotated = EtcdStore::connect_with(&config.etcd_endpoints, timeout, &access).await?;
    rotated.check_access(&config.prefix).await?;
    store.use_client_of(&rotated);
    Ok(())
}
