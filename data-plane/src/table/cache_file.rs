//! The last-known-good table on disk: after every applied update the proxy writes its
//! table as an encoded `RoutingTable` snapshot, and at start it loads it, so a proxy
//! restarted while the control plane is down serves at once.
//!
//! A write goes to a temp file of its own in the cache's directory (a unique name, created
//! exclusively and with mode 0600: the table lists every node address of the federation),
//! which is fsynced, renamed over the cache, and the directory fsynced. A crash leaves the
//! old file or the new one, never half of one, and no two writers ever share a temp file.
//!
//! [`CacheWriter`] runs these writes off the async runtime (they block on the disk for as
//! long as it takes), one at a time and newest last: while one write runs, only the newest
//! table waits, replacing any older one still waiting. A burst of updates thus costs at
//! most two writes, and an older table never lands on disk after a newer one.

use std::ffi::OsStr;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use meridian_proto::v1 as pb;
use prost::Message;
use tokio::sync::watch;

/// Who may read and write the cache file and its temp files: the proxy's user only.
const FILE_MODE: u32 = 0o600;
/// The mode of directories the proxy creates for its cache.
const DIR_MODE: u32 = 0o700;
/// Attempts at a temp file name not taken yet (with 64 random bits, one suffices).
const TEMP_NAME_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read the table cache {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the table cache {path} is not a routing table: {source}")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
    #[error("cannot write the table cache {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the table cache {path} was replaced, but syncing its directory failed: {source}")]
    SyncDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The cached snapshot, `None` when there is no file yet.
pub fn load(path: &Path) -> Result<Option<pb::RoutingTable>, CacheError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    pb::RoutingTable::decode(bytes.as_slice())
        .map(Some)
        .map_err(|source| CacheError::Decode {
            path: path.to_owned(),
            source,
        })
}

/// Replaces the cached snapshot atomically (see the module doc). Blocks on the disk: on
/// the async runtime, use a [`CacheWriter`].
pub fn store(path: &Path, table: &pb::RoutingTable) -> Result<(), CacheError> {
    let write_error = |source| CacheError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = directory_of(path);
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(write_error)?;
    let (temp, file) = create_temp(path, dir).map_err(write_error)?;
    let replaced =
        write_synced(file, &table.encode_to_vec()).and_then(|()| std::fs::rename(&temp, path));
    if let Err(source) = replaced {
        let _ = std::fs::remove_file(&temp);
        return Err(write_error(source));
    }
    sync_directory(dir).map_err(|source| CacheError::SyncDir {
        path: path.to_owned(),
        source,
    })
}

fn directory_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A new, empty temp file next to `path`, named `.<file name>.<pid>.<random>.tmp`.
fn create_temp(path: &Path, dir: &Path) -> std::io::Result<(PathBuf, File)> {
    let name = path
        .file_name()
        .unwrap_or(OsStr::new("table"))
        .to_string_lossy();
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let temp = dir.join(format!(
            ".{name}.{}.{:016x}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&temp);
        match created {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("no unused temp file name in {}", dir.display()),
    ))
}

fn write_synced(mut file: File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a rename in `dir` durable.
fn sync_directory(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

// === impl CacheWriter ===

/// Writes the cache file on Tokio's blocking pool, newest table last (see the module doc).
#[derive(Debug, Clone)]
pub struct CacheWriter(Arc<WriterState>);

#[derive(Debug)]
struct WriterState {
    path: PathBuf,
    /// The table waiting to be written, if any.
    waiting: Mutex<Option<pb::RoutingTable>>,
    /// Whether a write is running or about to; changed only with `waiting` locked.
    busy: watch::Sender<bool>,
}

impl CacheWriter {
    pub fn new(path: PathBuf) -> Self {
        CacheWriter(Arc::new(WriterState {
            path,
            waiting: Mutex::new(None),
            busy: watch::Sender::new(false),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Queues `table` for writing, replacing any older table still waiting, and returns at
    /// once. Must be called within a Tokio runtime.
    pub fn persist(&self, table: pb::RoutingTable) {
        let mut waiting = self.lock();
        *waiting = Some(table);
        let already_busy = self.0.busy.send_replace(true);
        drop(waiting);
        if !already_busy {
            let writer = self.clone();
            tokio::task::spawn_blocking(move || writer.write_waiting());
        }
    }

    /// Returns once every table queued so far is on disk (or failed to be written).
    pub async fn flushed(&self) {
        let mut busy = self.0.busy.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = busy.wait_for(|busy| !busy).await;
    }

    /// Writes tables until none is waiting. A failed write is logged and routing goes on.
    fn write_waiting(&self) {
        while let Some(table) = self.take_waiting() {
            if let Err(e) = store(&self.0.path, &table) {
                tracing::warn!(
                    file = %self.0.path.display(),
                    version = table.version,
                    error = %e,
                    "could not save the routing table; routing goes on with the table in memory, \
                     but a restart without a control plane would start from an older table or none: \
                     let the proxy's user write to that directory, free disk space, or point \
                     --table-cache elsewhere"
                );
            }
        }
    }

    /// The table to write next; `None` (and no longer busy) when there is none.
    fn take_waiting(&self) -> Option<pb::RoutingTable> {
        let mut waiting = self.lock();
        let table = waiting.take();
        if table.is_none() {
            self.0.busy.send_replace(false);
        }
        table
    }

    /// The lock is held only to swap a table in or out, never across I/O; a panic while
    /// holding it cannot leave the slot half-updated, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Option<pb::RoutingTable>> {
        self.0
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn table(version: u64) -> pb::RoutingTable {
        pb::RoutingTable {
            version,
            federation: "prod".into(),
            ..Default::default()
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_stored_table_loads_back_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/table.bin");
        assert!(load(&path).unwrap().is_none());
        store(&path, &table(42)).unwrap();
        assert_eq!(load(&path).unwrap(), Some(table(42)));
        std::fs::write(&path, b"\xff\xff\xff not protobuf").unwrap();
        assert!(matches!(load(&path), Err(CacheError::Decode { .. })));
    }

    #[test]
    fn the_cache_file_is_readable_by_the_proxys_user_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.bin");
        std::fs::write(&path, b"an older, world-readable cache").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        store(&path, &table(1)).unwrap();
        assert_eq!(mode_of(&path), 0o600);

        let created = dir.path().join("new/dir/table.bin");
        store(&created, &table(1)).unwrap();
        assert_eq!(mode_of(&created), 0o600);
        assert_eq!(mode_of(created.parent().unwrap()), 0o700);
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file_and_the_old_entry_in_place() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory where the cache file should be: the rename fails.
        let path = dir.path().join("table.bin");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), b"").unwrap();
        let err = store(&path, &table(1)).unwrap_err();
        assert!(matches!(err, CacheError::Write { .. }), "{err}");
        assert_eq!(names_in(dir.path()), ["table.bin"]);
        assert!(path.join("keep").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rapid_persists_leave_the_newest_table_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let writer = CacheWriter::new(dir.path().join("table.bin"));
        for version in 1..=200 {
            writer.persist(table(version));
            if version % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        writer.flushed().await;
        assert_eq!(load(writer.path()).unwrap(), Some(table(200)));
        assert_eq!(names_in(dir.path()), ["table.bin"]);
        assert_eq!(mode_of(writer.path()), 0o600);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persists_from_many_tasks_serialise_and_the_last_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let writer = CacheWriter::new(dir.path().join("table.bin"));
        let tasks: Vec<_> = (0..8u64)
            .map(|task| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for round in 0..25 {
                        writer.persist(table(task * 100 + round));
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        writer.persist(table(10_000));
        writer.flushed().await;
        assert_eq!(load(writer.path()).unwrap(), Some(table(10_000)));
        assert_eq!(names_in(dir.path()), ["table.bin"]);
    }

    #[tokio::test]
    async fn a_failed_background_write_does_not_stop_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.bin");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), b"").unwrap();
        let writer = CacheWriter::new(path.clone());
        writer.persist(table(1));
        writer.flushed().await;
        std::fs::remove_dir_all(&path).unwrap();
        writer.persist(table(2));
        writer.flushed().await;
        assert_eq!(load(&path).unwrap(), Some(table(2)));
    }
}
