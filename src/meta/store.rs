//! The metadata group's storage on one node: one SQLite file (`DATA/meta.db`, WAL mode)
//! holds the Raft log, the vote, the committed id and the state machine. The vote and log
//! appends are written with `synchronous=FULL`: what openraft is told is stored is on disk.
//! The rest (applying entries, the committed id, truncating and purging the log) is written
//! with `synchronous=NORMAL`, without a sync of its own: the WAL keeps transactions in order,
//! so the next appended entry's sync makes them durable too, and a power loss can only take
//! the newest of them, which openraft applies again from the durable log on restart (a
//! state machine may fall back, the log may not). One sync per member per entry instead of
//! three: the machine's disk is shared by every pod of a benchmark on one host.
//!
//! - Log: `raft_log(idx, entry)`, each entry as JSON; `purge` records the last purged id.
//! - State machine: its tables (`claims`: Idempotency-Key claims; `directory`: every job,
//!   which node has it and its record) and, in the same transactions, the last applied log
//!   id and membership, so a restart resumes exactly where it stopped.
//! - Snapshots: built from the tables ([`State`] as JSON), kept in the file until the next
//!   one; installing one replaces the tables in one transaction.
//!
//! Every SQLite call runs on a blocking thread, never on the async runtime.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::users::{UsersView, change};
use super::{Admission, Command, Listed, Outcome, TypeConfig};
use crate::store::User;

type NodeId = u64;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// The replicated state as a snapshot carries it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// `(email, key, job)` Idempotency-Key claims.
    claims: Vec<(String, String, String)>,
    /// The job directory.
    #[serde(default)]
    directory: Vec<Listed>,
    /// `(job, node)`: the nodes that hold a copy of a done job's MP3.
    #[serde(default)]
    copies: Vec<(String, String)>,
    /// `(user, log index of its last change)`, tombstones included.
    #[serde(default)]
    users: Vec<(User, u64)>,
    /// The quota counters' rows.
    #[serde(default)]
    usage: Vec<super::quota::Counted>,
}

/// One node's metadata file, shared by its log store and its state machine.
#[derive(Clone)]
pub struct MetaDb {
    /// The connection that writes (the log, the vote, applied commands, snapshots).
    conn: Arc<Mutex<Connection>>,
    /// A second connection for the state machine's reads (claims, the directory): they
    /// see what was committed and never wait behind a log append.
    reader: Arc<Mutex<Connection>>,
    /// The users as applied, in memory (token checks read them).
    users: UsersView,
    /// Room kept beside the file, given up when the volume is nearly full: openraft stops
    /// at a failed write, so the log must never meet a full disk (something else filling
    /// the volume must not stop the metadata).
    reserve: Arc<Mutex<crate::store::Reserve>>,
    /// The newest log entries, in memory ([`Recent`]).
    recent: Arc<Mutex<Recent>>,
}

/// The newest log entries (up to [`Recent::KEEP`], contiguous), as appended: the leader
/// reads each new entry once per follower and learner to replicate it, which from SQLite
/// was a blocking task per target per entry, queued on the writing connection in front of
/// the entry's own apply. Entries go in when their append starts (a replication may read
/// an entry whose local write is still under way, as openraft allows), and out with the
/// log's truncation and purge; a range not all here is read from the file as before.
#[derive(Default)]
struct Recent {
    entries: std::collections::VecDeque<Entry<TypeConfig>>,
}

impl Recent {
    /// Entries kept.
    const KEEP: usize = 4096;

    /// The index of the first entry kept.
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    /// Takes in `new` (contiguous, as openraft appends): what follows its first index goes.
    fn push(&mut self, new: &[Entry<TypeConfig>]) {
        let Some(start) = new.first().map(|e| e.log_id.index) else {
            return;
        };
        self.truncate(start);
        let next = self.first().map(|f| f + self.entries.len() as u64);
        if next.is_some_and(|n| n != start) {
            self.entries.clear();
        }
        self.entries.extend(new.iter().cloned());
        while self.entries.len() > Self::KEEP {
            self.entries.pop_front();
        }
    }

    /// Drops the entries from index `from` on.
    fn truncate(&mut self, from: u64) {
        if let Some(first) = self.first() {
            let keep = usize::try_from(from.saturating_sub(first)).unwrap_or(usize::MAX);
            self.entries.truncate(keep);
        }
    }

    /// Drops the entries up to index `upto`.
    fn purge(&mut self, upto: u64) {
        while self.first().is_some_and(|f| f <= upto) {
            self.entries.pop_front();
        }
    }

    /// Entries `start..end`, if every one of them is here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.first()?;
        let last = first + self.entries.len() as u64; // exclusive
        if start < first || end > last || start > end {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let take = usize::try_from(end - start).ok()?;
        Some(self.entries.iter().skip(skip).take(take).cloned().collect())
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS raft_log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS raft_kv (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    email TEXT NOT NULL, key TEXT NOT NULL, job TEXT NOT NULL, PRIMARY KEY (email, key)
);
CREATE INDEX IF NOT EXISTS claims_by_job ON claims (job);
CREATE TABLE IF NOT EXISTS directory (
    id TEXT PRIMARY KEY, node TEXT NOT NULL, owner_email TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL, record TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT '', seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS directory_by_owner ON directory (owner_email, created_at_ms);
CREATE INDEX IF NOT EXISTS directory_by_seq ON directory (seq);
CREATE INDEX IF NOT EXISTS directory_by_node ON directory (node, state, created_at_ms);
CREATE TABLE IF NOT EXISTS copies (id TEXT NOT NULL, node TEXT NOT NULL, PRIMARY KEY (id, node));
CREATE TABLE IF NOT EXISTS users (email TEXT PRIMARY KEY, record TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS users_by_seq ON users (seq);
";

impl MetaDb {
    /// Opens (or creates) the file at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<MetaDb> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(super::quota::SCHEMA)?;
        conn.execute_batch(super::quota::SEED)?;
        let reader = Connection::open(path)?;
        let users = UsersView::default();
        users.replace(all_users(&conn).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?);
        Ok(MetaDb {
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
            users,
            reserve: Arc::new(Mutex::new(crate::store::Reserve::at(path))),
            recent: Arc::default(),
        })
    }

    /// The newest log entries.
    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The users as this replica has applied them, in memory.
    pub fn users(&self) -> UsersView {
        self.users.clone()
    }

    /// The log store and the state machine over this file.
    pub fn stores(&self) -> (LogStore, StateMachine) {
        (LogStore(self.clone()), StateMachine(self.clone()))
    }

    /// Runs `f` on a blocking thread with the writing connection (after giving up the
    /// reserve if the volume is nearly full).
    async fn run<T, F>(&self, f: F) -> Result<T, anyhow::Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
    {
        let reserve = self.reserve.clone();
        Self::on(self.conn.clone(), move |conn| {
            let mut reserve = reserve.lock().unwrap_or_else(|p| p.into_inner());
            reserve.tend();
            let dir = conn.path().and_then(|p| Path::new(p).parent().map(Path::to_path_buf));
            let room = dir.map_or(u64::MAX, |d| {
                rustix::fs::statvfs(&d).map_or(u64::MAX, |s| s.f_bavail.saturating_mul(s.f_frsize))
            });
            // Under 128 KiB: the next writes (log entries of a few KiB, WAL pages) could fail.
            if room < (128 << 10) && reserve.release() {
                tracing::warn!(room, "the metadata database's reserve was given up: the volume is full");
            }
            drop(reserve);
            f(conn)
        })
        .await
    }

    /// [`MetaDb::run`] for a write that need not be synced by itself (see the module's doc).
    async fn run_unsynced<T, F>(&self, f: F) -> Result<T, anyhow::Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
    {
        self.run(move |conn| {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let done = f(conn);
            conn.pragma_update(None, "synchronous", "FULL")?;
            done
        })
        .await
    }

    /// Runs `f` on a blocking thread with the reading connection.
    async fn read<T, F>(&self, f: F) -> Result<T, anyhow::Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
    {
        Self::on(self.reader.clone(), f).await
    }

    async fn on<T, F>(db: Arc<Mutex<Connection>>, f: F) -> Result<T, anyhow::Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
    {
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await?
    }
}

fn get_kv<T: for<'a> Deserialize<'a>>(conn: &Connection, key: &str) -> anyhow::Result<Option<T>> {
    let raw: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM raft_kv WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    Ok(raw.map(|v| serde_json::from_slice(&v)).transpose()?)
}

fn set_kv<T: Serialize>(conn: &Connection, key: &str, value: &T) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO raft_kv (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, serde_json::to_vec(value)?],
    )?;
    Ok(())
}

/// Keeps `meta` and `data` as the current snapshot.
fn keep_snapshot(
    conn: &Connection,
    meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
    data: &[u8],
) -> anyhow::Result<()> {
    set_kv(conn, "snapshot_meta", meta)?;
    conn.execute(
        "INSERT INTO raft_kv (key, value) VALUES ('snapshot_data', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [data],
    )?;
    Ok(())
}

fn io(e: anyhow::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// `e` as openraft's error, about `what`.
fn failed(what: fn(&std::io::Error) -> StorageIOError<NodeId>, e: anyhow::Error) -> StorageError<NodeId> {
    what(&io(e)).into()
}

/// The Raft log and the vote.
#[derive(Clone)]
pub struct LogStore(MetaDb);

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i as i64,
            Bound::Excluded(i) => *i as i64 + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => (*i as i64).saturating_add(1),
            Bound::Excluded(i) => *i as i64,
            Bound::Unbounded => i64::MAX,
        };
        if let Some(hit) = self.0.recent().get(start.max(0) as u64, end.max(0) as u64) {
            return Ok(hit);
        }
        self.0
            .run(move |conn| {
                let mut q =
                    conn.prepare_cached("SELECT entry FROM raft_log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")?;
                let rows = q.query_map(params![start, end], |r| r.get::<_, Vec<u8>>(0))?;
                let mut out = Vec::new();
                for row in rows {
                    out.push(serde_json::from_slice(&row?)?);
                }
                Ok(out)
            })
            .await
            .map_err(|e| failed(|e| StorageIOError::read_logs(e), e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.0
            .run(|conn| {
                let purged: Option<LogId<NodeId>> = get_kv(conn, "purged")?;
                let last: Option<Vec<u8>> = conn
                    .query_row("SELECT entry FROM raft_log ORDER BY idx DESC LIMIT 1", [], |r| r.get(0))
                    .optional()?;
                let last = match last {
                    Some(raw) => Some(serde_json::from_slice::<Entry<TypeConfig>>(&raw)?.log_id),
                    None => purged,
                };
                Ok(LogState {
                    last_purged_log_id: purged,
                    last_log_id: last,
                })
            })
            .await
            .map_err(|e| failed(|e| StorageIOError::read_logs(e), e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.0
            .run(move |conn| set_kv(conn, "vote", &vote))
            .await
            .map_err(|e| failed(|e| StorageIOError::write_vote(e), e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.0
            .run(|conn| get_kv(conn, "vote"))
            .await
            .map_err(|e| failed(|e| StorageIOError::read_vote(e), e))
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        self.0
            .run_unsynced(move |conn| set_kv(conn, "committed", &committed))
            .await
            .map_err(|e| failed(|e| StorageIOError::write_logs(e), e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.0
            .run(|conn| Ok(get_kv::<Option<LogId<NodeId>>>(conn, "committed")?.flatten()))
            .await
            .map_err(|e| failed(|e| StorageIOError::read_logs(e), e))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        self.0.recent().push(&entries);
        let rows = entries
            .iter()
            .map(|e| Ok((e.log_id.index as i64, serde_json::to_vec(e)?)))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| failed(|e| StorageIOError::write_logs(e), e))?;
        let written = self
            .0
            .run(move |conn| {
                let tx = conn.transaction()?;
                {
                    let mut q = tx.prepare_cached("INSERT OR REPLACE INTO raft_log (idx, entry) VALUES (?1, ?2)")?;
                    for (idx, entry) in &rows {
                        q.execute(params![idx, entry])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        match written {
            Ok(()) => {
                // Committed with synchronous=FULL: on disk.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io(anyhow::anyhow!("{e}"))));
                Err(failed(|e| StorageIOError::write_logs(e), e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let from = log_id.index as i64;
        self.0.recent().truncate(log_id.index);
        self.0
            .run_unsynced(move |conn| {
                conn.execute("DELETE FROM raft_log WHERE idx >= ?1", [from])?;
                Ok(())
            })
            .await
            .map_err(|e| failed(|e| StorageIOError::write_logs(e), e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.0.recent().purge(log_id.index);
        self.0
            .run_unsynced(move |conn| {
                let tx = conn.transaction()?;
                set_kv(&tx, "purged", &Some(log_id))?;
                tx.execute("DELETE FROM raft_log WHERE idx <= ?1", [log_id.index as i64])?;
                tx.commit()?;
                Ok(())
            })
            .await
            .map_err(|e| failed(|e| StorageIOError::write_logs(e), e))
    }
}

/// The state machine: the replicated tables.
#[derive(Clone)]
pub struct StateMachine(MetaDb);

/// Applies one command inside the caller's transaction.
fn apply_command(tx: &rusqlite::Transaction<'_>, index: u64, command: &Command) -> anyhow::Result<Outcome> {
    match command {
        Command::ClaimKey { email, key, job, stale } => {
            if let Some(stale) = stale {
                tx.execute(
                    "UPDATE claims SET job = ?3 WHERE email = ?1 AND key = ?2 AND job = ?4",
                    params![email, key, job, stale],
                )?;
            }
            tx.execute(
                "INSERT OR IGNORE INTO claims (email, key, job) VALUES (?1, ?2, ?3)",
                params![email, key, job],
            )?;
            let job: String = tx.query_row(
                "SELECT job FROM claims WHERE email = ?1 AND key = ?2",
                params![email, key],
                |r| r.get(0),
            )?;
            Ok(Outcome::Claimed { job })
        }
        Command::ReleaseKey { email, key, job } => {
            tx.execute(
                "DELETE FROM claims WHERE email = ?1 AND key = ?2 AND job = ?3",
                params![email, key, job],
            )?;
            Ok(Outcome::None)
        }
        Command::Publish {
            node,
            put,
            gone,
            only_new,
        } => {
            publish(tx, index, node, put, gone, *only_new)?;
            Ok(Outcome::None)
        }
        Command::User { email, op, at_ms } => {
            let old: Option<User> = tx
                .query_row("SELECT record FROM users WHERE email = ?1", [email], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?
                .map(|raw| serde_json::from_str(&raw))
                .transpose()?;
            let changed = change(email, old.as_ref(), op, *at_ms);
            if let Ok(user) = &changed
                && old.as_ref() != Some(user)
            {
                tx.execute(
                    "INSERT INTO users (email, record, seq) VALUES (?1, ?2, ?3)
                     ON CONFLICT (email) DO UPDATE SET record = excluded.record, seq = excluded.seq",
                    params![email, serde_json::to_string(user)?, index as i64],
                )?;
                if matches!(op, super::users::UserOp::Remove) {
                    super::quota::forget_user(tx, email)?;
                }
            }
            Ok(Outcome::User(changed))
        }
        Command::Admit(admission) => Ok(Outcome::Admitted(admit(tx, index, admission)?)),
        Command::KeyedAdmit { key, stale, admission } => {
            let (id, email) = (&admission.id, &admission.email);
            let held: Option<String> = tx
                .query_row(
                    "SELECT job FROM claims WHERE email = ?1 AND key = ?2",
                    params![email, key],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(held) = held
                && held != *id
                && Some(&held) != stale.as_ref()
            {
                return Ok(Outcome::Claimed { job: held });
            }
            let admitted = admit(tx, index, admission)?;
            if admitted.is_ok() {
                tx.execute(
                    "INSERT INTO claims (email, key, job) VALUES (?1, ?2, ?3)
                     ON CONFLICT (email, key) DO UPDATE SET job = excluded.job",
                    params![email, key, id],
                )?;
            }
            Ok(Outcome::Admitted(admitted))
        }
        Command::Copied { id, node } => {
            // Only a copy of a job still in the directory is recorded.
            tx.execute(
                "INSERT OR IGNORE INTO copies (id, node) SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM directory WHERE id = ?1)",
                params![id, node],
            )?;
            Ok(Outcome::None)
        }
    }
}

/// Admits `a` (see [`Admission`]): counted, and its entry in the directory, or the limit
/// that refuses it.
fn admit(tx: &rusqlite::Transaction<'_>, index: u64, a: &Admission) -> anyhow::Result<Result<(), super::quota::Over>> {
    let admitted = super::quota::admit(tx, &a.id, &a.email, a.bytes, a.limits.as_ref(), a.at_ms)?;
    if let (Ok(()), Some(entry)) = (&admitted, &a.entry) {
        publish(tx, index, &a.node, std::slice::from_ref(entry), &[], true)?;
    }
    Ok(admitted)
}

/// Applies node `node`'s publication of `put` and `gone` (see [`Command::Publish`]).
fn publish(
    tx: &rusqlite::Transaction<'_>,
    index: u64,
    node: &str,
    put: &[Listed],
    gone: &[String],
    only_new: bool,
) -> anyhow::Result<()> {
    let mut insert = tx.prepare_cached(if only_new {
        "INSERT OR IGNORE INTO directory (id, node, owner_email, created_at_ms, record, state, seq)
                    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    } else {
        "INSERT INTO directory (id, node, owner_email, created_at_ms, record, state, seq)
                    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET node = excluded.node, owner_email = excluded.owner_email,
                    created_at_ms = excluded.created_at_ms, record = excluded.record, state = excluded.state,
                    seq = excluded.seq"
    })?;
    let mut claim = tx.prepare_cached("INSERT OR IGNORE INTO claims (email, key, job) VALUES (?1, ?2, ?3)")?;
    for job in put {
        insert.execute(params![
            job.id,
            node,
            job.owner_email,
            job.created_at_ms,
            job.record,
            job.state,
            index as i64
        ])?;
        if let Some(key) = &job.key {
            claim.execute(params![job.owner_email, key, job.id])?;
        }
        super::quota::put(tx, job, only_new)?;
    }
    // Only the node that has a job removes it: a job handed over is published by its
    // new node, and the old node's removal must not erase that. A removed job frees
    // the key it held (a deleted job's key may be used again).
    let mut remove = tx.prepare_cached("DELETE FROM directory WHERE id = ?1 AND node = ?2")?;
    let mut free = tx.prepare_cached("DELETE FROM claims WHERE job = ?1")?;
    let mut uncopy = tx.prepare_cached("DELETE FROM copies WHERE id = ?1")?;
    for id in gone {
        if remove.execute(params![id, node])? > 0 {
            free.execute([id])?;
            uncopy.execute([id])?;
        }
        super::quota::gone(tx, id)?;
    }
    Ok(())
}

fn read_state(conn: &Connection) -> anyhow::Result<State> {
    let mut q = conn.prepare("SELECT email, key, job FROM claims ORDER BY email, key")?;
    let claims = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut q = conn.prepare(&format!("SELECT {LISTED} FROM directory ORDER BY id"))?;
    let directory = q.query_map([], listed)?.collect::<rusqlite::Result<Vec<_>>>()?;
    let mut q = conn.prepare("SELECT id, node FROM copies ORDER BY id, node")?;
    let copies = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut q = conn.prepare("SELECT record, seq FROM users ORDER BY email")?;
    let users = q
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .map(|row| {
            let (raw, seq) = row?;
            Ok((serde_json::from_str(&raw)?, seq as u64))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let usage = super::quota::rows(conn)?;
    Ok(State {
        claims,
        directory,
        copies,
        users,
        usage,
    })
}

/// Every user in the table, tombstones included.
fn all_users(conn: &Connection) -> anyhow::Result<Vec<User>> {
    let mut q = conn.prepare("SELECT record FROM users")?;
    let rows = q.query_map([], |r| r.get::<_, String>(0))?;
    rows.map(|raw| Ok(serde_json::from_str(&raw?)?)).collect()
}

/// The directory's columns as [`listed`] reads them.
const LISTED: &str = "id, node, owner_email, created_at_ms, record, state, seq";

fn listed(r: &rusqlite::Row<'_>) -> rusqlite::Result<Listed> {
    Ok(Listed {
        id: r.get(0)?,
        node: r.get(1)?,
        owner_email: r.get(2)?,
        created_at_ms: r.get(3)?,
        key: None,
        record: r.get(4)?,
        state: r.get(5)?,
        seq: r.get::<_, i64>(6)? as u64,
        bytes: 0,
        ended_at_ms: None,
    })
}

fn write_state(tx: &rusqlite::Transaction<'_>, state: &State) -> anyhow::Result<()> {
    tx.execute("DELETE FROM claims", [])?;
    tx.execute("DELETE FROM directory", [])?;
    tx.execute("DELETE FROM copies", [])?;
    let mut q = tx.prepare_cached("INSERT INTO claims (email, key, job) VALUES (?1, ?2, ?3)")?;
    for (email, key, job) in &state.claims {
        q.execute(params![email, key, job])?;
    }
    let mut q = tx.prepare_cached(&format!(
        "INSERT INTO directory ({LISTED}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?;
    for j in &state.directory {
        q.execute(params![
            j.id,
            j.node,
            j.owner_email,
            j.created_at_ms,
            j.record,
            j.state,
            j.seq as i64
        ])?;
    }
    let mut q = tx.prepare_cached("INSERT INTO copies (id, node) VALUES (?1, ?2)")?;
    for (id, node) in &state.copies {
        q.execute(params![id, node])?;
    }
    tx.execute("DELETE FROM users", [])?;
    let mut q = tx.prepare_cached("INSERT INTO users (email, record, seq) VALUES (?1, ?2, ?3)")?;
    for (user, seq) in &state.users {
        q.execute(params![user.email, serde_json::to_string(user)?, *seq as i64])?;
    }
    super::quota::write_rows(tx, &state.usage)?;
    Ok(())
}

impl StateMachine {
    /// What `email` uses at `now_ms`, as this replica counts it.
    pub async fn used(&self, email: &str, now_ms: i64) -> anyhow::Result<super::quota::Used> {
        let email = email.to_string();
        self.0
            .read(move |conn| Ok(super::quota::used(conn, &email, now_ms)?))
            .await
    }

    /// The job holding Idempotency-Key `key` of `email` here (this node's replica).
    pub async fn claim(&self, email: &str, key: &str) -> anyhow::Result<Option<String>> {
        let (email, key) = (email.to_string(), key.to_string());
        self.0
            .read(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT job FROM claims WHERE email = ?1 AND key = ?2",
                        params![email, key],
                        |r| r.get(0),
                    )
                    .optional()?)
            })
            .await
    }

    /// Job `id` as this node's replica of the directory has it.
    pub async fn listed(&self, id: &str) -> anyhow::Result<Option<Listed>> {
        let id = id.to_string();
        self.0
            .read(move |conn| {
                Ok(conn
                    .query_row(&format!("SELECT {LISTED} FROM directory WHERE id = ?1"), [id], listed)
                    .optional()?)
            })
            .await
    }

    /// Up to `limit` done jobs changed after `seq` (oldest change first).
    pub async fn done_since(&self, seq: u64, limit: u32) -> anyhow::Result<Vec<Listed>> {
        self.0
            .read(move |conn| {
                let mut q = conn.prepare_cached(&format!(
                    "SELECT {LISTED} FROM directory WHERE seq > ?1 AND state = 'done' ORDER BY seq LIMIT ?2"
                ))?;
                let rows = q.query_map(params![seq as i64, limit], listed)?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
    }

    /// How many done jobs of `node` have fewer than `want` copies.
    pub async fn uncopied(&self, node: &str, want: u32) -> anyhow::Result<u64> {
        let node = node.to_string();
        self.0
            .read(move |conn| {
                let n: i64 = conn.query_row(
                    "SELECT count(*) FROM directory d WHERE d.node = ?1 AND d.state = 'done'
                       AND (SELECT count(*) FROM copies c WHERE c.id = d.id) < ?2",
                    params![node, want],
                    |r| r.get(0),
                )?;
                Ok(n as u64)
            })
            .await
    }

    /// The nodes that hold a copy of job `id`'s MP3.
    pub async fn copies(&self, id: &str) -> anyhow::Result<Vec<String>> {
        let id = id.to_string();
        self.0
            .read(move |conn| {
                let mut q = conn.prepare_cached("SELECT node FROM copies WHERE id = ?1 ORDER BY node")?;
                let rows = q.query_map([id], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
            })
            .await
    }

    /// Up to `limit` users changed after log index `seq` (oldest change first), with the
    /// index of each one's change.
    pub async fn users_since(&self, seq: u64, limit: u32) -> anyhow::Result<Vec<(User, u64)>> {
        self.0
            .read(move |conn| {
                let mut q =
                    conn.prepare_cached("SELECT record, seq FROM users WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
                let rows = q.query_map(params![seq as i64, limit], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })?;
                rows.map(|row| {
                    let (raw, seq) = row?;
                    Ok((serde_json::from_str(&raw)?, seq as u64))
                })
                .collect()
            })
            .await
    }

    /// The users as applied, in memory.
    pub fn users(&self) -> UsersView {
        self.0.users()
    }

    /// Up to `limit` jobs the directory says node `node` has, still `queued` and created
    /// before `before_ms` (the node checks that it has them).
    pub async fn queued_of(&self, node: &str, before_ms: i64, limit: u32) -> anyhow::Result<Vec<String>> {
        let node = node.to_string();
        self.0
            .read(move |conn| {
                let mut q = conn.prepare_cached(
                    "SELECT id FROM directory WHERE node = ?1 AND state = 'queued' AND created_at_ms < ?2 LIMIT ?3",
                )?;
                let rows = q.query_map(params![node, before_ms, limit], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
            })
            .await
    }

    /// Up to `limit` jobs of `email` (everyone's with `None`) that node `not` does not have,
    /// newest first, from this node's replica.
    pub async fn list(&self, email: Option<&str>, not: &str, limit: u32) -> anyhow::Result<Vec<Listed>> {
        let (email, not) = (email.map(str::to_string), not.to_string());
        self.0
            .read(move |conn| {
                let mut q = conn.prepare_cached(&format!(
                    "SELECT {LISTED} FROM directory
                     WHERE (?1 IS NULL OR owner_email = ?1) AND node != ?3
                     ORDER BY created_at_ms DESC, id DESC LIMIT ?2"
                ))?;
                let rows = q.query_map(params![email, limit, not], listed)?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.0
            .run(|conn| {
                let tx = conn.transaction()?;
                let applied: Option<LogId<NodeId>> = get_kv::<Option<LogId<NodeId>>>(&tx, "applied")?.flatten();
                let membership: Membership = get_kv(&tx, "membership")?.unwrap_or_default();
                let data = serde_json::to_vec(&read_state(&tx)?)?;
                let id = match applied {
                    Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, crate::store::now_ms()),
                    None => format!("0-0-{}", crate::store::now_ms()),
                };
                let meta = SnapshotMeta {
                    last_log_id: applied,
                    last_membership: membership,
                    snapshot_id: id,
                };
                keep_snapshot(&tx, &meta, &data)?;
                tx.commit()?;
                Ok(Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data)),
                })
            })
            .await
            .map_err(|e| failed(|e| StorageIOError::write_snapshot(None, e), e))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        self.0
            .run(|conn| {
                let applied = get_kv::<Option<LogId<NodeId>>>(conn, "applied")?.flatten();
                let membership: Membership = get_kv(conn, "membership")?.unwrap_or_default();
                Ok((applied, membership))
            })
            .await
            .map_err(|e| failed(|e| StorageIOError::read_state_machine(e), e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let view = self.0.users.clone();
        self.0
            .run_unsynced(move |conn| {
                let tx = conn.transaction()?;
                let mut out = Vec::with_capacity(entries.len());
                for entry in &entries {
                    set_kv(&tx, "applied", &Some(entry.log_id))?;
                    out.push(match &entry.payload {
                        EntryPayload::Blank => Outcome::None,
                        EntryPayload::Normal(command) => apply_command(&tx, entry.log_id.index, command)?,
                        EntryPayload::Membership(m) => {
                            set_kv(&tx, "membership", &Membership::new(Some(entry.log_id), m.clone()))?;
                            Outcome::None
                        }
                    });
                }
                // Users changed: in memory before the transaction that writes them is
                // visible, so the view is never older than the file (the node's mirror
                // writes the view's version, see `UsersView::latest`); a failed commit
                // stops the member's Raft, and a restart reloads the view from the file.
                let changed = view.put(out.iter().filter_map(|o| match o {
                    Outcome::User(Ok(user)) => Some(user.clone()),
                    _ => None,
                }));
                tx.commit()?;
                // Woken once the file shows it too (the mirror reads the file).
                if changed {
                    view.notify();
                }
                Ok(out)
            })
            .await
            .map_err(|e| failed(|e| StorageIOError::write_state_machine(e), e))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let (meta, data) = (meta.clone(), snapshot.into_inner());
        let view = self.0.users.clone();
        self.0
            .run(move |conn| {
                let state: State = serde_json::from_slice(&data)?;
                let tx = conn.transaction()?;
                write_state(&tx, &state)?;
                set_kv(&tx, "applied", &meta.last_log_id)?;
                set_kv(&tx, "membership", &meta.last_membership)?;
                keep_snapshot(&tx, &meta, &data)?;
                // In memory before the file, as in `apply`.
                view.replace(state.users.into_iter().map(|(user, _)| user));
                tx.commit()?;
                view.notify();
                Ok(())
            })
            .await
            .map_err(|e| failed(|e| StorageIOError::write_snapshot(None, e), e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.0
            .run(|conn| {
                let Some(meta) = get_kv(conn, "snapshot_meta")? else {
                    return Ok(None);
                };
                let data: Vec<u8> =
                    conn.query_row("SELECT value FROM raft_kv WHERE key = 'snapshot_data'", [], |r| {
                        r.get(0)
                    })?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data)),
                }))
            })
            .await
            .map_err(|e| failed(|e| StorageIOError::read_snapshot(None, e), e))
    }
}

#[cfg(test)]
mod tests;
