//! The last-known-good table on disk: after every applied update the proxy writes its
//! table as an encoded `RoutingTable` snapshot (temp file, fsync, rename: a crash leaves
//! the old file or the new one, never half of one), and at start it loads it, so a proxy
//! restarted while the control plane is down serves at once.

use std::io::Write;
use std::path::{Path, PathBuf};

use meridian_proto::v1 as pb;
use prost::Message;

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

/// Replaces the cached snapshot atomically.
pub fn store(path: &Path, table: &pb::RoutingTable) -> Result<(), CacheError> {
    let write_error = |source| CacheError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_error)?;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp).map_err(write_error)?;
    file.write_all(&table.encode_to_vec())
        .map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    std::fs::rename(&temp, path).map_err(write_error)?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_table_loads_back_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/table.bin");
        assert!(load(&path).unwrap().is_none());
        let table = pb::RoutingTable {
            version: 42,
            federation: "prod".into(),
            ..Default::default()
        };
        store(&path, &table).unwrap();
        assert_eq!(load(&path).unwrap(), Some(table));
        std::fs::write(&path, b"\xff\xff\xff not protobuf").unwrap();
        assert!(matches!(load(&path), Err(CacheError::Decode { .. })));
    }
}
