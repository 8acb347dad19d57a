//! `mp4tomp3 backup` and `restore`: a node's data dir, copied while the node serves.
//!
//! The databases are copied with SQLite's `VACUUM INTO` (an online backup: one read
//! transaction, a consistent copy, writers go on), then the files (MP4s, MP3s, copies of
//! other pods' MP3s, unsent mail, unfinished resumable uploads, the generated JWT key). Files
//! are written once and never changed, so a file is either whole or absent in the copy; one
//! that appeared after the databases were copied is an orphan the node ignores, one deleted
//! meanwhile is skipped. Scratch space (`tmp/`), the disk reserves and the lock are not
//! copied.
//!
//! A restore needs the node stopped. In a cluster, `--without-metadata` leaves the
//! replicated metadata out: the pod comes back as an empty member and the others send it
//! their state (a voter's old Raft log must never come back: it may have promised votes and
//! entries since).

use std::path::{Path, PathBuf};

/// The databases, in the order they are copied.
const DATABASES: [&str; 2] = ["node.db", "meta.db"];
/// The replicated metadata's database (left out by `restore --without-metadata`).
const METADATA: &str = "meta.db";
/// What is never copied: scratch space, the disk reserves, the lock, SQLite's side files
/// (the databases are copied whole through SQLite).
fn skipped(name: &str) -> bool {
    name == "tmp"
        || name == "serve.lock"
        || name.ends_with(".reserve")
        || name.ends_with("-wal")
        || name.ends_with("-shm")
        || name.ends_with("-journal")
        || DATABASES.contains(&name)
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Bad input: a missing source, a target that is in use or not empty.
    #[error("{0}")]
    Refused(String),
    /// SQLite failed.
    #[error("{what}: {source}")]
    Sqlite {
        /// What was being copied.
        what: String,
        /// Why.
        source: rusqlite::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What a backup or restore copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Databases.
    pub databases: usize,
    /// Other files.
    pub files: u64,
    /// Their bytes (databases included).
    pub bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `dir` is absent or an empty directory.
fn empty(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Copies `data_dir` (served or not) into the new directory `to`.
pub fn backup(data_dir: &Path, to: &Path) -> Result<Copied, BackupError> {
    if !data_dir.join("node.db").exists() {
        return Err(BackupError::Refused(format!(
            "{} holds no mp4tomp3 data (no node.db)",
            data_dir.display()
        )));
    }
    if !empty(to)? {
        return Err(BackupError::Refused(format!(
            "{} exists and is not empty: back up into a new directory",
            to.display()
        )));
    }
    std::fs::create_dir_all(to).map_err(io(to))?;
    let mut copied = Copied::default();
    for name in DATABASES {
        let source = data_dir.join(name);
        if !source.exists() {
            continue;
        }
        let target = to.join(name);
        let sqlite = |source| BackupError::Sqlite {
            what: format!("copying {name}"),
            source,
        };
        let conn = rusqlite::Connection::open_with_flags(&source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sqlite)?;
        conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(sqlite)?;
        conn.execute("VACUUM INTO ?1", [target.to_string_lossy()])
            .map_err(sqlite)?;
        copied.databases += 1;
        copied.bytes += std::fs::metadata(&target).map_err(io(&target))?.len();
    }
    copy_tree(data_dir, to, &mut copied, true)?;
    Ok(copied)
}

/// Copies the backup `from` into `data_dir` (no node may be serving it). The data dir must
/// hold no data unless `force` (then its databases and files are replaced). Without
/// `with_metadata` the replicated metadata's database is left out.
pub fn restore(from: &Path, data_dir: &Path, with_metadata: bool, force: bool) -> Result<Copied, BackupError> {
    if !from.join("node.db").exists() {
        return Err(BackupError::Refused(format!(
            "{} is not an mp4tomp3 backup (no node.db)",
            from.display()
        )));
    }
    if crate::node::serving(data_dir) {
        return Err(BackupError::Refused(format!(
            "a node is serving {}: stop it first",
            data_dir.display()
        )));
    }
    if data_dir.join("node.db").exists() || data_dir.join(METADATA).exists() {
        if !force {
            return Err(BackupError::Refused(format!(
                "{} already holds data: restore into an empty directory, or pass --force to replace it",
                data_dir.display()
            )));
        }
        for entry in std::fs::read_dir(data_dir).map_err(io(data_dir))? {
            let path = entry.map_err(io(data_dir))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".reserve") {
                continue;
            }
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(io(&path))?;
        }
    }
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let mut copied = Copied::default();
    for name in DATABASES {
        if name == METADATA && !with_metadata {
            continue;
        }
        let source = from.join(name);
        if source.exists() {
            let target = data_dir.join(name);
            copied.bytes += std::fs::copy(&source, &target).map_err(io(&target))?;
            copied.databases += 1;
        }
    }
    copy_tree(from, data_dir, &mut copied, false)?;
    Ok(copied)
}

/// Copies the files under `from` into `to` (what [`skipped`] names excepted); with
/// `live`, a file that vanished meanwhile is skipped.
fn copy_tree(from: &Path, to: &Path, copied: &mut Copied, live: bool) -> Result<(), BackupError> {
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if live && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(from)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(from))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if skipped(&name) {
            continue;
        }
        let (source, target) = (entry.path(), to.join(&name));
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            Err(e) if live && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&source)(e)),
        };
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(io(&target))?;
            copy_tree(&source, &target, copied, live)?;
        } else if kind.is_file() {
            match std::fs::copy(&source, &target) {
                Ok(bytes) => {
                    copied.files += 1;
                    copied.bytes += bytes;
                }
                Err(e) if live && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&source)(e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_would_lose_data() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert!(matches!(
            backup(&data, &dir.path().join("b")),
            Err(BackupError::Refused(_))
        ));
        drop(
            crate::store::Store::open(&{
                std::fs::create_dir_all(&data).unwrap();
                data.join("node.db")
            })
            .unwrap(),
        );
        std::fs::create_dir_all(data.join("jobs/x")).unwrap();
        std::fs::write(data.join("jobs/x/out.mp3"), b"mp3").unwrap();
        std::fs::write(data.join("node.reserve"), b"r").unwrap();
        std::fs::create_dir_all(data.join("tmp")).unwrap();
        std::fs::write(data.join("tmp/part"), b"t").unwrap();
        let full = dir.path().join("full");
        std::fs::create_dir_all(&full).unwrap();
        std::fs::write(full.join("x"), b"x").unwrap();
        assert!(matches!(backup(&data, &full), Err(BackupError::Refused(m)) if m.contains("not empty")));
        let b = dir.path().join("b");
        let copied = backup(&data, &b).unwrap();
        assert_eq!((copied.databases, copied.files), (1, 1), "node.db and the MP3");
        assert!(!b.join("tmp").exists() && !b.join("node.reserve").exists());
        // Restoring over data needs --force; then it is replaced.
        assert!(matches!(restore(&b, &data, true, false), Err(BackupError::Refused(m)) if m.contains("--force")));
        std::fs::write(data.join("jobs/x/out.mp3"), b"changed").unwrap();
        restore(&b, &data, true, true).unwrap();
        assert_eq!(std::fs::read(data.join("jobs/x/out.mp3")).unwrap(), b"mp3");
        assert!(!data.join("tmp/part").exists());
        assert!(matches!(
            restore(&data.join("none"), &data, true, true),
            Err(BackupError::Refused(_))
        ));
    }
}
