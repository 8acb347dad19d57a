//! Per-user limits and what a user uses on this node: unfinished jobs (and unfinished
//! uploads, which become jobs), jobs created in the last day, and bytes stored (their
//! jobs' files, and the full declared length of their unfinished uploads).

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Files, JobId, Result, Store};

/// A user's limits; `None`: the configured default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quota {
    /// Unfinished jobs at once.
    pub max_active: Option<i64>,
    /// Jobs created in any 24 hours.
    pub max_jobs_per_day: Option<i64>,
    /// Bytes stored: inputs, MP3s, unfinished uploads.
    pub max_stored_bytes: Option<i64>,
}

impl Quota {
    /// These limits, each unset one taken from `defaults`.
    pub fn or(self, defaults: Quota) -> Quota {
        Quota {
            max_active: self.max_active.or(defaults.max_active),
            max_jobs_per_day: self.max_jobs_per_day.or(defaults.max_jobs_per_day),
            max_stored_bytes: self.max_stored_bytes.or(defaults.max_stored_bytes),
        }
    }

    /// The first limit one more job of `incoming` bytes would pass, given usage `u`.
    pub fn first_over(&self, u: &Usage, incoming: i64) -> Option<&'static str> {
        if self.max_active.is_some_and(|max| u.active >= max) {
            Some("max_active")
        } else if self.max_jobs_per_day.is_some_and(|max| u.jobs_today >= max) {
            Some("max_jobs_per_day")
        } else if self
            .max_stored_bytes
            .is_some_and(|max| u.stored_bytes.saturating_add(incoming) > max)
        {
            Some("max_stored_bytes")
        } else {
            None
        }
    }
}

/// What a user uses (on one node, or summed over the cluster).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Unfinished jobs and uploads.
    pub active: i64,
    /// Jobs and unfinished uploads created since the day's start asked for.
    pub jobs_today: i64,
    /// The oldest of those (ms since the epoch), if any: when the count next drops.
    #[serde(skip)]
    pub oldest_today_ms: Option<i64>,
    /// Bytes stored.
    pub stored_bytes: i64,
    /// When the first of the ended jobs ended (ms since the epoch), if any: retention frees
    /// its files first.
    #[serde(skip)]
    pub first_end_ms: Option<i64>,
}

impl Usage {
    /// Both together (two nodes' usage).
    pub fn plus(self, other: Usage) -> Usage {
        let min = earliest;
        Usage {
            active: self.active + other.active,
            jobs_today: self.jobs_today + other.jobs_today,
            oldest_today_ms: min(self.oldest_today_ms, other.oldest_today_ms),
            stored_bytes: self.stored_bytes + other.stored_bytes,
            first_end_ms: min(self.first_end_ms, other.first_end_ms),
        }
    }
}

/// The earlier of two times, either of which may be missing.
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How long a creation is remembered: the day `max_jobs_per_day` looks at, and a day more
/// for clocks and Retry-After.
const CREATIONS_KEPT_MS: i64 = 48 * 3600 * 1000;

/// Records that `owner` created the job or upload `id` at `at_ms` (once per id: an upload
/// and the job it becomes are one creation), and forgets their creations older than
/// [`CREATIONS_KEPT_MS`].
pub(super) fn record_creation(tx: &rusqlite::Transaction<'_>, id: &str, owner: &str, at_ms: i64) -> Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO creations (id, owner_email, created_at_ms) VALUES (?1, ?2, ?3)",
        params![id, owner, at_ms],
    )?;
    tx.execute(
        "DELETE FROM creations WHERE owner_email = ?1 AND created_at_ms < ?2",
        params![owner, at_ms - CREATIONS_KEPT_MS],
    )?;
    Ok(())
}

impl Store {
    /// What `email` uses on this node; `since_ms`: the start of the last 24 hours. Blocking:
    /// one `stat` per file of the user's jobs.
    pub fn usage(&self, files: &Files, email: &str, since_ms: i64) -> Result<Usage> {
        let one = |sql: &str, since: bool| -> Result<(i64, Option<i64>)> {
            let row = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?));
            Ok(if since {
                self.conn.query_row(sql, params![email, since_ms], row)?
            } else {
                self.conn.query_row(sql, params![email], row)?
            })
        };
        let (jobs_active, _) = one(
            "SELECT count(*), NULL FROM jobs WHERE owner_email = ?1 AND finished_at_ms IS NULL",
            false,
        )?;
        let (uploads, upload_bytes) = one(
            "SELECT count(*), sum(length) FROM uploads WHERE owner_email = ?1 AND completed = 0",
            false,
        )?;
        // Creations, not rows that still exist: deleting jobs gives none of the day back.
        let (jobs_today, oldest_today_ms) = one(
            "SELECT count(*), min(created_at_ms) FROM creations WHERE owner_email = ?1 AND created_at_ms >= ?2",
            true,
        )?;
        let (_, first_end_ms) = one(
            "SELECT 0, min(finished_at_ms) FROM jobs WHERE owner_email = ?1 AND finished_at_ms IS NOT NULL",
            false,
        )?;
        let ids: Vec<JobId> = self.ids("SELECT id FROM jobs WHERE owner_email = ?1", [email])?;
        let size = |p: std::path::PathBuf| std::fs::metadata(p).map_or(0, |m| m.len() as i64);
        let job_bytes: i64 = ids
            .iter()
            .map(|id| size(files.input(id)) + size(files.output(id)))
            .sum();
        Ok(Usage {
            active: jobs_active + uploads,
            jobs_today,
            oldest_today_ms,
            stored_bytes: job_bytes + upload_bytes.unwrap_or(0),
            first_end_ms,
        })
    }
}
