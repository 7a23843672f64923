//! A TLS configuration rebuilt when its files change. A background task looks at the size
//! and modification time of each file once a second ([`POLL_INTERVAL`]); when any of them
//! changed it rebuilds the configuration, and swaps it in only if the build succeeded.
//!
//! Polling rather than inotify: it behaves the same on every file system, follows the
//! symlink swap a Kubernetes Secret volume does, and costs a few `stat` calls a second. A
//! rotation is seen within a second. Writing a certificate and its key is two writes, so a
//! poll may fall between them: that build fails (key mismatch), is logged, and the next
//! poll, seeing the key changed too, succeeds.
//!
//! A failed build is not retried until the files change again, so a broken file is logged
//! once rather than every second. The watcher holds only a weak reference: it stops when
//! the last handle to the configuration is dropped.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::time::MissedTickBehavior;

use super::TlsConfigError;

/// How often the files are looked at.
pub(super) const POLL_INTERVAL: Duration = Duration::from_secs(1);

type Build<T> = Box<dyn Fn() -> Result<T, TlsConfigError> + Send + Sync>;

/// The configuration built from the files as they were at the last successful build.
pub(super) struct Reloading<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Reloading {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<T> {
    /// Names the configuration in logs.
    what: String,
    paths: Vec<PathBuf>,
    build: Build<T>,
    current: ArcSwap<T>,
    last: Mutex<Attempt>,
}

/// The last build attempt: which files it saw, and why it failed if it did.
struct Attempt {
    stamp: FileStamp,
    error: Option<String>,
}

/// Size and modification time of each file; `None` for a file that cannot be looked at.
/// Two stamps differ when any file was rewritten, replaced (a Secret's symlink swap) or
/// appeared or vanished; every file Meridian re-reads on change is watched with one.
#[derive(Debug, PartialEq)]
pub struct FileStamp(Vec<Option<(u64, SystemTime)>>);

// === impl Reloading ===

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the first configuration (an error here is the caller's to report) and starts
    /// watching `paths`. Outside a tokio runtime nothing watches, and a warning says so.
    pub(super) fn load(
        what: String,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsConfigError> + Send + Sync + 'static,
    ) -> Result<Self, TlsConfigError> {
        let stamp = FileStamp::of(&paths);
        let first = build()?;
        let shared = Arc::new(Shared {
            what,
            paths,
            build: Box::new(build),
            current: ArcSwap::from_pointee(first),
            last: Mutex::new(Attempt { stamp, error: None }),
        });
        spawn_watcher(Arc::downgrade(&shared));
        Ok(Reloading { shared })
    }

    pub(super) fn current(&self) -> Arc<T> {
        self.shared.current.load_full()
    }

    /// Why the files on disk are not in use, when the last rebuild failed.
    pub(super) fn error(&self) -> Option<String> {
        self.shared.lock_last().error.clone()
    }
}

// === impl Shared ===

impl<T> Shared<T> {
    /// Rebuilds if the files changed since the last attempt. Blocking: reads files.
    fn check(&self) {
        let stamp = FileStamp::of(&self.paths);
        if self.lock_last().stamp == stamp {
            return;
        }
        let built = (self.build)();
        let mut last = self.lock_last();
        last.stamp = stamp;
        match built {
            Ok(config) => {
                self.current.store(Arc::new(config));
                last.error = None;
                tracing::info!(tls = %self.what, "reloaded the changed TLS files");
            }
            Err(e) => {
                tracing::warn!(
                    tls = %self.what,
                    error = %e,
                    "cannot reload the changed TLS files; keeping the previous configuration"
                );
                last.error = Some(e.to_string());
            }
        }
    }

    fn lock_last(&self) -> std::sync::MutexGuard<'_, Attempt> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn spawn_watcher<T: Send + Sync + 'static>(shared: Weak<Shared<T>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        if let Some(shared) = shared.upgrade() {
            tracing::warn!(tls = %shared.what, "no tokio runtime: TLS files will not be reloaded");
        }
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await; // The first tick is immediate, and the files were just read.
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if tokio::task::spawn_blocking(move || shared.check())
                .await
                .is_err()
            {
                return; // The runtime is shutting down, or the build panicked.
            }
        }
    });
}

// === impl FileStamp ===

impl FileStamp {
    pub fn of(paths: &[PathBuf]) -> FileStamp {
        FileStamp(
            paths
                .iter()
                .map(|path| {
                    let meta = std::fs::metadata(path).ok()?;
                    Some((meta.len(), meta.modified().ok()?))
                })
                .collect(),
        )
    }
}
