//! Quota counters in the replicated state: one row per job or upload a user was admitted
//! for, kept by the state machine in log order.
//!
//! A new job (or resumable upload) is admitted by committing [`super::Command::Admit`]:
//! applying it counts the user's rows and refuses what would pass a limit, so requests on
//! every node are checked one after another against the same counters (no N − 1
//! overshoot) and a node that is away still counts. A row is active until its job ends;
//! its bytes are the upload's length while it is active, the MP3's size once done (the
//! owner publishes it), 0 once the job or upload is gone. Rows are kept 48 hours after
//! their creation (the day `max_jobs_per_day` looks at, and a day for clocks), and as
//! long as their job is in the directory.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::Listed;
use crate::store::{Quota, Usage};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    id TEXT PRIMARY KEY, email TEXT NOT NULL, created_at_ms INTEGER NOT NULL,
    active INTEGER NOT NULL, bytes INTEGER NOT NULL, ended_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS usage_by_email ON usage (email, created_at_ms);
";

/// A directory made before the counters existed: its jobs are counted (bytes unknown until
/// their node publishes them again). Only while the table is empty, so once.
pub(super) const SEED: &str = "
INSERT OR IGNORE INTO usage (id, email, created_at_ms, active, bytes, ended_at_ms)
    SELECT id, owner_email, created_at_ms, state NOT IN ('done', 'failed', 'canceled'), 0, NULL
    FROM directory WHERE NOT EXISTS (SELECT 1 FROM usage);
";

const DAY_MS: i64 = 24 * 3600 * 1000;
/// How long a row outlives its creation when its job is no longer in the directory.
const KEPT_MS: i64 = 2 * DAY_MS;

/// One admitted job or upload, as a snapshot carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counted {
    id: String,
    email: String,
    created_at_ms: i64,
    active: bool,
    bytes: i64,
    ended_at_ms: Option<i64>,
}

/// What a user uses as the replicated counters have it (the wire form of [`Usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Used {
    /// Unfinished jobs and uploads.
    pub active: i64,
    /// Jobs and uploads created in the 24 hours before the time asked about.
    pub jobs_today: i64,
    /// The oldest of those.
    pub oldest_today_ms: Option<i64>,
    /// Bytes stored.
    pub stored_bytes: i64,
    /// When the first ended job still kept ended (retention frees it first).
    pub first_end_ms: Option<i64>,
}

impl From<Used> for Usage {
    fn from(u: Used) -> Usage {
        Usage {
            active: u.active,
            jobs_today: u.jobs_today,
            oldest_today_ms: u.oldest_today_ms,
            stored_bytes: u.stored_bytes,
            first_end_ms: u.first_end_ms,
        }
    }
}

/// Why an admission was refused: the limit (`max_active`, `max_jobs_per_day`,
/// `max_stored_bytes`) and the usage it was checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Over {
    /// The limit.
    pub limit: String,
    /// The usage then.
    pub used: Used,
}

/// What `email` uses at `now_ms`.
pub(super) fn used(conn: &Connection, email: &str, now_ms: i64) -> rusqlite::Result<Used> {
    conn.query_row(
        "SELECT coalesce(sum(active), 0), coalesce(sum(created_at_ms >= ?2), 0),
                min(CASE WHEN created_at_ms >= ?2 THEN created_at_ms END), coalesce(sum(bytes), 0),
                min(ended_at_ms)
         FROM usage WHERE email = ?1",
        params![email, now_ms - DAY_MS],
        |r| {
            Ok(Used {
                active: r.get(0)?,
                jobs_today: r.get(1)?,
                oldest_today_ms: r.get(2)?,
                stored_bytes: r.get(3)?,
                first_end_ms: r.get(4)?,
            })
        },
    )
}

/// Admits job or upload `id` of `email` bringing `bytes`, under `limits` (`None`: no
/// limits), at `at_ms` (the proposer's clock). An id already admitted is admitted again
/// (a retried command).
pub(super) fn admit(
    tx: &Transaction<'_>,
    id: &str,
    email: &str,
    bytes: i64,
    limits: Option<&Quota>,
    at_ms: i64,
) -> rusqlite::Result<Result<(), Over>> {
    let known = tx
        .query_row("SELECT 1 FROM usage WHERE id = ?1", [id], |_| Ok(()))
        .optional()?;
    if known.is_some() {
        return Ok(Ok(()));
    }
    tx.execute(
        "DELETE FROM usage WHERE email = ?1 AND created_at_ms < ?2
            AND NOT EXISTS (SELECT 1 FROM directory d WHERE d.id = usage.id)",
        params![email, at_ms - KEPT_MS],
    )?;
    if let Some(limits) = limits {
        let used = used(tx, email, at_ms)?;
        if let Some(limit) = limits.first_over(&used.into(), bytes) {
            return Ok(Err(Over {
                limit: limit.to_string(),
                used,
            }));
        }
    }
    tx.execute(
        "INSERT INTO usage (id, email, created_at_ms, active, bytes, ended_at_ms) VALUES (?1, ?2, ?3, 1, ?4, NULL)",
        params![id, email, at_ms, bytes.max(0)],
    )?;
    Ok(Ok(()))
}

/// A job published as `job` now is: active until it ends, then its MP3's bytes. `only_new`:
/// a row that exists is left as it is (an announcement never overwrites a later state).
pub(super) fn put(tx: &Transaction<'_>, job: &Listed, only_new: bool) -> rusqlite::Result<()> {
    let active = !matches!(job.state.as_str(), "done" | "failed" | "canceled");
    let mut q = tx.prepare_cached(if only_new {
        "INSERT OR IGNORE INTO usage (id, email, created_at_ms, active, bytes, ended_at_ms)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    } else {
        // An unfinished job's own record does not know its input's size: the admitted
        // bytes stay until it ends.
        "INSERT INTO usage (id, email, created_at_ms, active, bytes, ended_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO UPDATE SET email = excluded.email, active = excluded.active,
            bytes = CASE WHEN excluded.active THEN max(usage.bytes, excluded.bytes) ELSE excluded.bytes END,
            ended_at_ms = excluded.ended_at_ms"
    })?;
    q.execute(params![
        job.id,
        job.owner_email,
        job.created_at_ms,
        active,
        job.bytes.max(0),
        if active { None } else { job.ended_at_ms }
    ])?;
    Ok(())
}

/// Job or upload `id` is gone (deleted, expired, or never made): it holds nothing any more
/// but still counts for its day. A job the directory still lists (handed to another node)
/// keeps its row.
pub(super) fn gone(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE usage SET active = 0, bytes = 0, ended_at_ms = NULL WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM directory WHERE id = ?1)",
    )?
    .execute([id])?;
    Ok(())
}

/// A removed user's rows go with them (an account made again under that email starts
/// from nothing).
pub(super) fn forget_user(tx: &Transaction<'_>, email: &str) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM usage WHERE email = ?1", [email])?;
    Ok(())
}

/// Every row, for a snapshot.
pub(super) fn rows(conn: &Connection) -> rusqlite::Result<Vec<Counted>> {
    let mut q = conn.prepare("SELECT id, email, created_at_ms, active, bytes, ended_at_ms FROM usage ORDER BY id")?;
    q.query_map([], |r| {
        Ok(Counted {
            id: r.get(0)?,
            email: r.get(1)?,
            created_at_ms: r.get(2)?,
            active: r.get(3)?,
            bytes: r.get(4)?,
            ended_at_ms: r.get(5)?,
        })
    })?
    .collect()
}

/// Replaces every row with a snapshot's.
pub(super) fn write_rows(tx: &Transaction<'_>, rows: &[Counted]) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM usage", [])?;
    let mut q = tx.prepare_cached(
        "INSERT INTO usage (id, email, created_at_ms, active, bytes, ended_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for c in rows {
        q.execute(params![
            c.id,
            c.email,
            c.created_at_ms,
            c.active,
            c.bytes,
            c.ended_at_ms
        ])?;
    }
    Ok(())
}
