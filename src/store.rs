//! Durable state of one node: SQLite (WAL, `synchronous=FULL`) under the data dir.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction, so a writer takes the lock up front
//! instead of failing half-way on a busy database. The schema is versioned with
//! `PRAGMA user_version` and migrated forward at open. Calls block: async callers run them
//! on a blocking thread (the actors that own a [`Store`] do).

pub mod files;
mod job;
mod jobs;
pub mod quota;
pub mod uploads;
mod users;
pub mod webhooks;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

pub use files::{Files, StagedInput};
pub use job::{Handover, Job, JobId, JobState, MailState, NewJob, OutboxMail, Produced, Source};
pub use quota::{Quota, Usage};
pub use uploads::{NewUpload, Upload};
pub use users::User;
pub use webhooks::{Attempt, Delivery, DeliveryState, DueDelivery, WebhookSettings};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (I/O, corruption, constraint).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer version of mp4tomp3.
    #[error(
        "database schema version {found} is newer than this build understands ({supported}) and needs at least \
         version {min_reader} to be read; run a newer mp4tomp3, or restore the backup taken before the upgrade \
         (mp4tomp3 restore)"
    )]
    TooNew {
        /// Version found in the file.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
        /// The oldest build's schema version that may read the file.
        min_reader: i64,
    },
    /// A job row holds a value this build does not know (e.g. an unknown state).
    #[error("job {job}: unreadable value {value:?} in column {column}")]
    BadRow {
        /// The job.
        job: String,
        /// The column.
        column: &'static str,
        /// The value found.
        value: String,
    },
    /// The blocking thread running the call failed.
    #[error("database worker failed: {0}")]
    Worker(String),
    /// The requested change does not apply to the job's current state.
    #[error("job {job} is {state}, cannot {action}")]
    Conflict {
        /// The job.
        job: String,
        /// Its current state.
        state: JobState,
        /// What was attempted.
        action: &'static str,
    },
}

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The schema's versions: `migrations[i]` takes the schema from version `i` to `i + 1`.
///
/// **Compatibility rule** (upgrades and rollbacks, README "Operating on Kubernetes"): a
/// migration *expands* (adds tables, columns with a default or NULL, indexes, triggers) so
/// that the build before it can still open and use the database it leaves; one that changes
/// or removes what an older build reads *contracts* and is listed in `contracts`. The
/// database records the oldest schema version whose build may open it (`schema_compat`): a
/// build older than the file opens it, without migrating, when it is at least that.
struct Schema {
    migrations: &'static [&'static str],
    /// The versions whose migration contracts.
    contracts: &'static [i64],
}

impl Schema {
    /// The version this schema writes.
    fn version(&self) -> i64 {
        self.migrations.len() as i64
    }

    /// The oldest schema version whose build can use a database of this schema: the last
    /// contracting version (a build from before it reads what that migration changed).
    fn min_reader(&self) -> i64 {
        let version = self.version();
        self.contracts
            .iter()
            .copied()
            .filter(|c| *c <= version)
            .max()
            .unwrap_or(1)
    }
}

/// This build's schema.
const SCHEMA: Schema = Schema {
    migrations: MIGRATIONS,
    // v11: users moved to the replicated metadata; a build before it would write them here.
    contracts: &[11],
};

/// Forward-only migrations; `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
/// Each expands unless [`SCHEMA`] lists it in `contracts` (see [`Schema`]).
const MIGRATIONS: &[&str] = &[
    // v1: users, jobs, and the transactional email outbox.
    "CREATE TABLE users (
        email         TEXT PRIMARY KEY COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        is_admin      INTEGER NOT NULL DEFAULT 0,
        updated_at_ms INTEGER NOT NULL
     );
     CREATE TABLE jobs (
        id              TEXT PRIMARY KEY,
        owner_email     TEXT NOT NULL,
        state           TEXT NOT NULL,
        progress        REAL NOT NULL DEFAULT 0,
        error_code      TEXT,
        error_message   TEXT,
        source_kind     TEXT NOT NULL,
        source_url      TEXT,
        file_name       TEXT NOT NULL,
        bitrate_kbps    INTEGER,
        vbr_quality     INTEGER,
        idempotency_key TEXT,
        attempt         INTEGER NOT NULL DEFAULT 0,
        created_at_ms   INTEGER NOT NULL,
        updated_at_ms   INTEGER NOT NULL,
        finished_at_ms  INTEGER,
        UNIQUE (owner_email, idempotency_key)
     );
     CREATE INDEX jobs_by_owner ON jobs (owner_email, created_at_ms);
     CREATE INDEX jobs_by_state ON jobs (state);
     CREATE TABLE outbox (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id           TEXT NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
        recipient        TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms  INTEGER NOT NULL,
        sent_at_ms       INTEGER,
        last_error       TEXT
     );",
    // v2: removed users stay as tombstones (so the removal replicates), and each user has a
    // token generation: a password change or removal bumps it, revoking older tokens.
    "ALTER TABLE users ADD COLUMN token_gen INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE users ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;",
    // v3: webhooks. Each user's default URL, events and signing secret (replicated with the
    // user); a job's own URL; the delivery outbox; and the jobs as the API shows them, with
    // their latest delivery.
    "ALTER TABLE users ADD COLUMN webhook_url TEXT;
     ALTER TABLE users ADD COLUMN webhook_events TEXT;
     ALTER TABLE users ADD COLUMN webhook_secret TEXT;
     ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
     CREATE TABLE webhooks (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id         TEXT NOT NULL UNIQUE,
        job_id           TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        event_type       TEXT NOT NULL,
        url              TEXT NOT NULL,
        created_at_ms    INTEGER NOT NULL,
        state            TEXT NOT NULL DEFAULT 'pending',
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms  INTEGER NOT NULL,
        last_status      INTEGER,
        last_error       TEXT,
        delivered_at_ms  INTEGER
     );
     CREATE INDEX webhooks_due ON webhooks (state, next_attempt_ms);
     CREATE INDEX webhooks_by_job ON webhooks (job_id);
     CREATE VIEW jobs_view AS
        SELECT j.*, w.event_id AS wh_event_id, w.event_type AS wh_event_type, w.url AS wh_url,
               w.created_at_ms AS wh_created_at_ms, w.state AS wh_state, w.attempts AS wh_attempts,
               w.next_attempt_ms AS wh_next_attempt_ms, w.last_status AS wh_last_status,
               w.last_error AS wh_last_error, w.delivered_at_ms AS wh_delivered_at_ms
        FROM jobs j LEFT JOIN webhooks w ON w.id = (SELECT max(id) FROM webhooks WHERE job_id = j.id);",
    // v4: resumable (tus) uploads: how much of each has arrived (fsynced), its settings for
    // the job it becomes (under the same id), and when it expires.
    "CREATE TABLE uploads (
        id              TEXT PRIMARY KEY,
        owner_email     TEXT NOT NULL,
        length          INTEGER NOT NULL,
        received        INTEGER NOT NULL DEFAULT 0,
        metadata        TEXT NOT NULL,
        file_name       TEXT NOT NULL,
        bitrate_kbps    INTEGER,
        vbr_quality     INTEGER,
        webhook_url     TEXT,
        idempotency_key TEXT,
        created_at_ms   INTEGER NOT NULL,
        expires_at_ms   INTEGER NOT NULL,
        completed       INTEGER NOT NULL DEFAULT 0,
        UNIQUE (owner_email, idempotency_key)
     );
     CREATE INDEX uploads_expiring ON uploads (expires_at_ms) WHERE completed = 0;",
    // v5: retention. Ended jobs are found by when they ended; an expired job leaves a
    // tombstone, so its id answers `410 expired` rather than `404`.
    "CREATE INDEX jobs_by_end ON jobs (finished_at_ms) WHERE finished_at_ms IS NOT NULL;
     CREATE TABLE expired_jobs (
        id             TEXT PRIMARY KEY,
        owner_email    TEXT NOT NULL,
        expired_at_ms  INTEGER NOT NULL
     );",
    // v6: per-user quotas (NULL: the configured default), replicated with the user; the
    // unfinished jobs of a user are counted by their owner and end.
    "ALTER TABLE users ADD COLUMN max_active INTEGER;
     ALTER TABLE users ADD COLUMN max_jobs_per_day INTEGER;
     ALTER TABLE users ADD COLUMN max_stored_bytes INTEGER;
     CREATE INDEX jobs_unfinished_by_owner ON jobs (owner_email) WHERE finished_at_ms IS NULL;
     CREATE INDEX uploads_by_owner ON uploads (owner_email) WHERE completed = 0;",
    // v7: what a done job produced: the MP3's size and duration, and what was recovered
    // from a damaged input (a warning for the user).
    "ALTER TABLE jobs ADD COLUMN mp3_bytes INTEGER;
     ALTER TABLE jobs ADD COLUMN duration_ms INTEGER;
     ALTER TABLE jobs ADD COLUMN warnings TEXT;",
    // v8: every job and resumable upload a user created, kept 48 hours: the day's count for
    // `max_jobs_per_day` (counting rows that still exist let a user delete jobs and go on).
    "CREATE TABLE creations (
        id            TEXT PRIMARY KEY,
        owner_email   TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
     );
     CREATE INDEX creations_by_owner ON creations (owner_email, created_at_ms);
     INSERT OR IGNORE INTO creations SELECT id, owner_email, created_at_ms FROM jobs;
     INSERT OR IGNORE INTO creations SELECT id, owner_email, created_at_ms FROM uploads;",
    // v9: sessions signed out before their token expires (`[[sid, expires_at_ms], ...]`),
    // replicated with the user: a signed-out token is refused like an old generation.
    "ALTER TABLE users ADD COLUMN revoked_sessions TEXT;",
    // v10: a feed of job changes for the replicated job directory (`meta/`): every insert,
    // delete and change of what the directory shows (not progress) records the job's id;
    // the node publishes the jobs named and clears the feed. Every existing job starts in
    // it, so a node's jobs reach the directory on the first start of this version.
    "CREATE TABLE job_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL);
     CREATE TRIGGER job_inserted AFTER INSERT ON jobs BEGIN
        INSERT INTO job_changes (id) VALUES (new.id);
     END;
     CREATE TRIGGER job_deleted AFTER DELETE ON jobs BEGIN
        INSERT INTO job_changes (id) VALUES (old.id);
     END;
     CREATE TRIGGER job_changed AFTER UPDATE OF state, error_code, error_message, attempt, finished_at_ms,
        mp3_bytes, duration_ms, warnings, owner_email, file_name ON jobs BEGIN
        INSERT INTO job_changes (id) VALUES (new.id);
     END;
     INSERT INTO job_changes (id) SELECT id FROM jobs ORDER BY created_at_ms;",
    // v11: users live in the replicated metadata (`meta/users.rs`); this table mirrors
    // them. Changes made beside a running node (`mp4tomp3 user add`, the first admin) wait
    // here as operations (JSON) until the node has committed them; an operation `NULL`
    // imports the user as this table has it. Every existing user starts in it, so this
    // node's users reach the metadata on the first start of this version.
    "CREATE TABLE user_ops (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL, op TEXT);
     INSERT INTO user_ops (email, op) SELECT email, NULL FROM users ORDER BY updated_at_ms;",
    // v12: an upload deleted (finished as a job, terminated, expired, its user removed)
    // goes through the job feed too: published as gone unless it became a job, which gives
    // its quota admission back (`meta/quota.rs`).
    "CREATE TRIGGER upload_deleted AFTER DELETE ON uploads BEGIN
        INSERT INTO job_changes (id) VALUES (old.id);
     END;",
];

/// One node's database.
pub struct Store {
    conn: Connection,
    /// The database's own reserve of disk space (file-backed stores only).
    reserve: Option<Reserve>,
}

/// Room kept for the database: a file of [`RESERVE_BYTES`] beside it, given up when a write
/// finds the volume full (so users, keys and job states can still be written while uploads
/// or something else filled it), and made again once there is room.
pub(crate) struct Reserve {
    path: PathBuf,
    /// When it was last found missing and not remade (remade at most once a minute).
    missing_since: Option<std::time::Instant>,
}

/// The size of the database's reserve.
pub(crate) const RESERVE_BYTES: u64 = 8 << 20;

impl Reserve {
    /// The reserve of the database at `db` (made now if there is room).
    pub(crate) fn at(db: &Path) -> Reserve {
        let mut reserve = Reserve {
            path: db.with_extension("reserve"),
            missing_since: None,
        };
        reserve.make();
        reserve
    }

    /// Makes the reserve if it is missing and the volume has room for it and as much again.
    fn make(&mut self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() == RESERVE_BYTES) {
            self.missing_since = None;
            return;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let room = rustix::fs::statvfs(dir).map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize));
        let made = room >= 2 * RESERVE_BYTES
            && std::fs::File::create(&self.path)
                .and_then(|f| {
                    use std::io::Write;
                    let mut w = std::io::BufWriter::new(f);
                    let zeros = vec![0u8; 1 << 20];
                    for _ in 0..RESERVE_BYTES / (1 << 20) {
                        w.write_all(&zeros)?;
                    }
                    w.into_inner().map_err(|e| e.into_error())?.sync_all()
                })
                .is_ok();
        if !made {
            let _ = std::fs::remove_file(&self.path);
            self.missing_since = Some(std::time::Instant::now());
        } else {
            self.missing_since = None;
        }
    }

    /// Gives the room up; `true` if there was any to give.
    pub(crate) fn release(&mut self) -> bool {
        let released = std::fs::remove_file(&self.path).is_ok();
        self.missing_since = Some(std::time::Instant::now());
        released
    }

    /// Remakes a missing reserve, at most once a minute.
    pub(crate) fn tend(&mut self) {
        if self
            .missing_since
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.make();
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self> {
        let mut store = Self::setup(Connection::open(path)?)?;
        store.reserve = Some(Reserve::at(path));
        Ok(store)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(conn: Connection) -> Result<Self> {
        conn.busy_timeout(Duration::from_secs(10))?;
        // journal_mode answers with a row, so it is read rather than executed.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        // Plans never depend on bound values: otherwise SQLite marks a statement whose plan
        // weighed a partial index against a parameter to be compiled again at every new
        // binding, and the cached status read (`Store::job`) was re-prepared on every call
        // (most of a status read's time, under `perf`).
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        let mut store = Store { conn, reserve: None };
        store.migrate(&SCHEMA)?;
        Ok(store)
    }

    /// The schema version this build writes.
    pub fn schema_version() -> i64 {
        SCHEMA.version()
    }

    /// Migrates the database forward to `schema`, recording the oldest build that may open
    /// it; a newer database opens as it is when `schema` is at least that.
    fn migrate(&mut self, schema: &Schema) -> Result<()> {
        let found: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let supported = schema.version();
        self.conn
            .execute_batch("CREATE TABLE IF NOT EXISTS schema_compat (min_reader INTEGER NOT NULL)")?;
        if found > supported {
            // Written by a newer build: it says who may still read it (a database from before
            // the rule existed says nothing: refused, as then).
            let min_reader: i64 = self
                .conn
                .query_row("SELECT max(min_reader) FROM schema_compat", [], |r| {
                    r.get::<_, Option<i64>>(0)
                })?
                .unwrap_or(found);
            if min_reader > supported {
                return Err(StoreError::TooNew {
                    found,
                    supported,
                    min_reader,
                });
            }
            tracing::warn!(
                found,
                supported,
                "the database was written by a newer mp4tomp3 whose changes this build can use; opened without migrating"
            );
            return Ok(());
        }
        for (version, sql) in schema.migrations.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version as i64 + 1)?;
            tx.commit()?;
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM schema_compat", [])?;
        tx.execute(
            "INSERT INTO schema_compat (min_reader) VALUES (?1)",
            [schema.min_reader()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The ids (first column) a query selects; ones that do not parse are skipped.
    fn ids(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<JobId>> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map(params, |r| r.get::<_, String>(0))?;
        let ids: Vec<String> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(ids.iter().filter_map(|id| JobId::parse(id)).collect())
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committed when `f` returns `Ok`. On a
    /// full volume, the database's reserve is given up and the write tried once more.
    fn write<T>(&mut self, f: impl Fn(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        if let Some(reserve) = &mut self.reserve {
            reserve.tend();
        }
        match self.try_write(&f) {
            Err(e) if is_full(&e) && self.reserve.as_mut().is_some_and(Reserve::release) => {
                tracing::warn!("the data volume is full: the database's reserve was given up for this write");
                self.try_write(&f)
            }
            other => other,
        }
    }

    fn try_write<T>(&mut self, f: &impl Fn(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

/// Whether SQLite failed for want of disk space.
fn is_full(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// A [`Store`] for async code: its calls run one at a time on a thread of its own, which
/// owns the connection.
///
/// One connection per `Db` is the point: SQLite writes are serialized anyway, and an actor
/// that owns a `Db` handles one message at a time. Every actor opens its own. A thread
/// that drains a queue (rather than a mutex taken from the runtime's blocking pool) keeps
/// many concurrent callers cheap: no lock convoy, no thread per call (status reads under
/// 32 connections went from ~8k to the figures in `benches/auth_read.py`).
#[derive(Clone)]
pub struct Db {
    calls: std::sync::mpsc::Sender<Call>,
}

/// One call to a [`Db`]'s thread.
type Call = Box<dyn FnOnce(&mut Store) + Send>;

impl Db {
    /// Opens the database at `path` for async use.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self::from(Store::open(path)?))
    }

    /// Runs `f` with the store on the store's thread.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce(&mut Store) -> Result<T> + Send + 'static) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let call: Call = Box::new(move |store| {
            // A panic in a call leaves SQLite consistent (its transaction rolled back): the
            // thread goes on with the next call.
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(store)))
                .unwrap_or_else(|_| Err(StoreError::Worker("a database call panicked".into())));
            let _ = tx.send(answer);
        });
        self.calls
            .send(call)
            .map_err(|_| StoreError::Worker("the database thread stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Worker("the database thread dropped a call".into()))?
    }
}

impl From<Store> for Db {
    fn from(mut store: Store) -> Self {
        let (calls, queue) = std::sync::mpsc::channel::<Call>();
        // Ends when the last `Db` clone is dropped (the queue closes), closing the store.
        let spawned = std::thread::Builder::new().name("db".into()).spawn(move || {
            while let Ok(call) = queue.recv() {
                call(&mut store);
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a database thread");
        }
        Db { calls }
    }
}

/// Milliseconds since the Unix epoch, the store's timestamp unit (this node's kept time,
/// which does not follow the wall clock's jumps: [`crate::clock`]).
pub use crate::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_in_wal_with_full_sync_and_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let store = Store::open(&path).unwrap();
        let mode: String = store.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "FULL");
        drop(store);
        // Reopening finds the current version and runs nothing again.
        let store = Store::open(&path).unwrap();
        let version: i64 = store.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, Store::schema_version());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        match Store::open(&path) {
            Err(StoreError::TooNew { found: 99, .. }) => {}
            other => panic!("expected TooNew, got {:?}", other.map(|_| ())),
        }
    }

    /// The next build's schema: this one and one more migration.
    fn next(extra: &'static str, contracts: bool) -> Schema {
        let migrations: Vec<&'static str> = MIGRATIONS.iter().copied().chain([extra]).collect();
        let version = migrations.len() as i64;
        let mut all: Vec<i64> = SCHEMA.contracts.to_vec();
        if contracts {
            all.push(version);
        }
        Schema {
            migrations: Vec::leak(migrations),
            contracts: Vec::leak(all),
        }
    }

    /// The rollback half of the upgrade contract: this build (N − 1) opens and uses what the
    /// next one (N) migrated when N only expanded, and refuses, saying why, when it
    /// contracted.
    #[test]
    fn a_database_the_next_build_expanded_opens_here_and_a_contracted_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        drop(Store::open(&path).unwrap());
        let expanded = next(
            "ALTER TABLE jobs ADD COLUMN loudness_lufs REAL; CREATE TABLE presets (name TEXT PRIMARY KEY);",
            false,
        );
        {
            let mut n = Store::setup(Connection::open(&path).unwrap()).unwrap();
            n.migrate(&expanded).unwrap();
            let version: i64 = n.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
            assert_eq!(version, Store::schema_version() + 1, "N migrated");
        }
        // N − 1 opens it, leaves it at N's version, and writes and reads as usual.
        let mut store = Store::open(&path).expect("N - 1 opens what N expanded");
        let version: i64 = store.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, Store::schema_version() + 1, "not touched");
        let job = NewJob {
            id: JobId::new("node-0"),
            owner_email: "a@example.com".into(),
            source: Source::Upload,
            file_name: "song.mp4".into(),
            bitrate_kbps: None,
            vbr_quality: None,
            idempotency_key: None,
            webhook_url: None,
        };
        let id = store.insert_job(&job).unwrap().0.id;
        assert!(store.job(&id).unwrap().is_some());
        drop(store);
        // N opens it again (what N − 1 wrote is there).
        let mut n = Store::setup(Connection::open(&path).unwrap()).unwrap();
        n.migrate(&expanded).unwrap();
        assert!(n.job(&id).unwrap().is_some());
        drop(n);

        let other = dir.path().join("contracted.db");
        drop(Store::open(&other).unwrap());
        let contracted = next("ALTER TABLE jobs DROP COLUMN warnings;", true);
        Store::setup(Connection::open(&other).unwrap())
            .unwrap()
            .migrate(&contracted)
            .unwrap();
        match Store::open(&other) {
            Err(e @ StoreError::TooNew { .. }) => {
                let text = e.to_string();
                assert!(text.contains("restore"), "{text}");
            }
            other => panic!("N - 1 opened a contracted database: {:?}", other.map(|_| ())),
        }
    }
}
