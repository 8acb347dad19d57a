//! Jobs and their email outbox.
//!
//! A job's life: `queued → fetching → converting → done | failed | canceled`. Finishing a
//! job (done or failed) writes its outbox row in the same transaction, so a crash can
//! neither lose the mail nor send one for a job that did not finish.

use rusqlite::{OptionalExtension, Row, params};

use super::job::{Handover, Job, JobId, JobState, MailState, NewJob, OutboxMail, Produced, Source};
use super::webhooks;
use super::{Result, Store, StoreError, now_ms};

/// The columns of `jobs_view` a [`Job`] is read from (`job_from_row`'s order).
const JOB_COLUMNS: &str = "id, owner_email, state, progress, error_code, error_message, source_kind, source_url, \
     file_name, bitrate_kbps, vbr_quality, attempt, created_at_ms, updated_at_ms, finished_at_ms, webhook_url, \
     wh_event_id, wh_event_type, wh_url, wh_created_at_ms, wh_state, wh_attempts, wh_next_attempt_ms, \
     wh_last_status, wh_last_error, wh_delivered_at_ms, mp3_bytes, duration_ms, warnings";
/// How many columns [`JOB_COLUMNS`] has.
const JOB_COLUMN_COUNT: usize = 29;

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<std::result::Result<Job, StoreError>> {
    let id: String = row.get(0)?;
    let state: String = row.get(2)?;
    let kind: String = row.get(6)?;
    let url: Option<String> = row.get(7)?;
    let bad = |column, value: String| StoreError::BadRow {
        job: id.clone(),
        column,
        value,
    };
    let Ok(state) = state.parse::<JobState>() else {
        return Ok(Err(bad("state", state)));
    };
    let source = match (kind.as_str(), url) {
        ("upload", _) => Source::Upload,
        ("url", Some(url)) => Source::Url(url),
        _ => return Ok(Err(bad("source_kind", kind))),
    };
    Ok(Ok(Job {
        id: JobId(id.clone()),
        owner_email: row.get(1)?,
        state,
        progress: row.get(3)?,
        error_code: row.get(4)?,
        error_message: row.get(5)?,
        source,
        file_name: row.get(8)?,
        bitrate_kbps: row.get(9)?,
        vbr_quality: row.get(10)?,
        attempt: row.get(11)?,
        created_at_ms: row.get(12)?,
        updated_at_ms: row.get(13)?,
        finished_at_ms: row.get(14)?,
        webhook_url: row.get(15)?,
        webhook: webhooks::latest_from(row, 16)?.map(Box::new),
        produced: match (row.get::<_, Option<i64>>(26)?, row.get::<_, Option<i64>>(27)?) {
            (Some(mp3_bytes), Some(duration_ms)) => Some(Produced {
                mp3_bytes,
                duration_ms,
                warnings: row.get(28)?,
            }),
            _ => None,
        },
    }))
}

fn keyed_job(conn: &rusqlite::Connection, owner: &str, key: &str) -> Result<Option<Job>> {
    conn.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs_view WHERE owner_email = ?1 AND idempotency_key = ?2"),
        params![owner, key],
        job_from_row,
    )
    .optional()?
    .transpose()
}

/// The row of the resumable upload a job came from (same id), kept after it became the job
/// (a retried `HEAD` still learns its job), goes with the job.
fn forget_upload(tx: &rusqlite::Transaction<'_>, id: &JobId) -> Result<()> {
    tx.execute("DELETE FROM uploads WHERE id = ?1", [id.as_str()])?;
    Ok(())
}

impl Store {
    /// Stores a new job as `queued`. With an idempotency key already used by the same user,
    /// stores nothing and returns the earlier job (`false` says it is not new).
    pub fn insert_job(&mut self, job: &NewJob) -> Result<(Job, bool)> {
        let now = now_ms();
        self.write(|tx| {
            if let Some(key) = &job.idempotency_key
                && let Some(earlier) = keyed_job(tx, &job.owner_email, key)?
            {
                return Ok((earlier, false));
            }
            let (kind, url) = match &job.source {
                Source::Upload => ("upload", None),
                Source::Url(url) => ("url", Some(url.as_str())),
            };
            tx.execute(
                "INSERT INTO jobs (id, owner_email, state, source_kind, source_url, file_name, bitrate_kbps, \
                 vbr_quality, idempotency_key, created_at_ms, updated_at_ms, webhook_url) \
                 VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
                params![
                    job.id.as_str(),
                    job.owner_email,
                    kind,
                    url,
                    job.file_name,
                    job.bitrate_kbps,
                    job.vbr_quality,
                    job.idempotency_key,
                    now,
                    job.webhook_url
                ],
            )?;
            webhooks::record(tx, &job.id, "job.created", now)?;
            super::quota::record_creation(tx, job.id.as_str(), &job.owner_email, now)?;
            let stored = stored_job(tx, &job.id)?;
            Ok((stored, true))
        })
    }

    /// The job `owner` submitted with Idempotency-Key `key`, if stored here.
    pub fn keyed_job(&self, owner: &str, key: &str) -> Result<Option<Job>> {
        keyed_job(&self.conn, owner, key)
    }

    /// The job with this id, if stored here.
    pub fn job(&self, id: &JobId) -> Result<Option<Job>> {
        // The most frequent read (every status request): its statement is kept prepared.
        self.conn
            .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs_view WHERE id = ?1"))?
            .query_row([id.as_str()], job_from_row)
            .optional()?
            .transpose()
    }

    /// Up to `limit` entries of the job change feed (oldest first): the last sequence number
    /// and each changed job as it is now with its Idempotency-Key (`None`: deleted), each id
    /// once.
    #[allow(clippy::type_complexity)]
    pub fn job_changes(&self, limit: u32) -> Result<Option<(i64, Vec<(JobId, Option<(Job, Option<String>)>)>)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, id FROM job_changes ORDER BY seq LIMIT ?1")?;
        let rows: Vec<(i64, String)> = stmt
            .query_map([limit], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let Some(last) = rows.last().map(|(seq, _)| *seq) else {
            return Ok(None);
        };
        let mut ids: Vec<String> = rows.into_iter().map(|(_, id)| id).collect();
        ids.sort();
        ids.dedup();
        let mut changed = Vec::with_capacity(ids.len());
        for id in ids {
            // An id that is not a job id (never written by us) is skipped, not published.
            if let Some(id) = JobId::parse(&id) {
                let job = match self.job(&id)? {
                    Some(job) => {
                        let key: Option<String> = self.conn.query_row(
                            "SELECT idempotency_key FROM jobs WHERE id = ?1",
                            [id.as_str()],
                            |r| r.get(0),
                        )?;
                        Some((job, key))
                    }
                    None => None,
                };
                changed.push((id, job));
            }
        }
        Ok(Some((last, changed)))
    }

    /// Clears the change feed up to `seq` (those changes are published).
    pub fn forget_changes(&mut self, seq: i64) -> Result<()> {
        self.conn.execute("DELETE FROM job_changes WHERE seq <= ?1", [seq])?;
        Ok(())
    }

    /// A user's jobs (or everyone's, with `None`), newest first, `limit` from `offset`.
    pub fn list_jobs(&self, owner_email: Option<&str>, limit: u32, offset: u32) -> Result<Vec<Job>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs_view WHERE (?1 IS NULL OR owner_email = ?1) \
             ORDER BY created_at_ms DESC, id DESC LIMIT ?2 OFFSET ?3"
        ))?;
        let rows = stmt.query_map(params![owner_email, limit, offset], job_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// Jobs that were accepted but not finished: what a restarted node resumes.
    pub fn unfinished_jobs(&self) -> Result<Vec<Job>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs_view WHERE state IN ('queued', 'fetching', 'converting') ORDER BY created_at_ms"
        ))?;
        let rows = stmt.query_map([], job_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// Moves an unfinished job to `state` (fetching or converting), bumping the attempt
    /// (fencing token) when a conversion starts. Returns the new attempt.
    pub fn start(&mut self, id: &JobId, state: JobState) -> Result<i64> {
        self.write(|tx| {
            let current = current_state(tx, id)?;
            if current.is_final() {
                return Err(StoreError::Conflict {
                    job: id.to_string(),
                    state: current,
                    action: "start",
                });
            }
            let bump = i64::from(state == JobState::Converting);
            tx.execute(
                "UPDATE jobs SET state = ?2, attempt = attempt + ?3, progress = 0, updated_at_ms = ?4 WHERE id = ?1",
                params![id.as_str(), state.as_str(), bump, now_ms()],
            )?;
            Ok(tx.query_row("SELECT attempt FROM jobs WHERE id = ?1", [id.as_str()], |r| r.get(0))?)
        })
    }

    /// How many jobs are in each state.
    pub fn count_by_state(&self) -> Result<Vec<(JobState, u64)>> {
        let mut stmt = self.conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (state, n) = row?;
            if let Ok(state) = state.parse::<JobState>() {
                out.push((state, u64::try_from(n).unwrap_or(0)));
            }
        }
        Ok(out)
    }

    /// Records progress of the conversion attempt `attempt`; stale attempts change nothing.
    pub fn set_progress(&mut self, id: &JobId, attempt: i64, progress: f64) -> Result<bool> {
        let changed = self.conn.execute(
            "UPDATE jobs SET progress = ?3, updated_at_ms = ?4 WHERE id = ?1 AND attempt = ?2 AND state = 'converting'",
            params![id.as_str(), attempt, progress.clamp(0.0, 1.0), now_ms()],
        )?;
        Ok(changed == 1)
    }

    /// Ends attempt `attempt` of a job as done (`Ok(what it produced)`) or failed
    /// (`Err((code, message))`) and queues its email in the same transaction. A stale
    /// attempt (the job was re-placed since) or an already finished job is refused with
    /// `Conflict`.
    pub fn finish(
        &mut self,
        id: &JobId,
        attempt: i64,
        ended: std::result::Result<&Produced, (&str, &str)>,
    ) -> Result<Job> {
        let now = now_ms();
        self.write(|tx| {
            let (state, current_attempt, owner): (String, i64, String) = tx.query_row(
                "SELECT state, attempt, owner_email FROM jobs WHERE id = ?1",
                [id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let state = state.parse::<JobState>().map_err(|()| StoreError::BadRow {
                job: id.to_string(),
                column: "state",
                value: state.clone(),
            })?;
            if state.is_final() || current_attempt != attempt {
                return Err(StoreError::Conflict {
                    job: id.to_string(),
                    state,
                    action: "finish a stale attempt",
                });
            }
            let (new_state, code, message, progress, produced) = match ended {
                Ok(produced) => (JobState::Done, None, None, 1.0, Some(produced)),
                Err((code, message)) => (JobState::Failed, Some(code), Some(message), 0.0, None),
            };
            tx.execute(
                "UPDATE jobs SET state = ?2, error_code = ?3, error_message = ?4, progress = ?5, \
                 updated_at_ms = ?6, finished_at_ms = ?6, mp3_bytes = ?7, duration_ms = ?8, warnings = ?9 \
                 WHERE id = ?1",
                params![
                    id.as_str(),
                    new_state.as_str(),
                    code,
                    message,
                    progress,
                    now,
                    produced.map(|p| p.mp3_bytes),
                    produced.map(|p| p.duration_ms),
                    produced.and_then(|p| p.warnings.as_deref())
                ],
            )?;
            tx.execute(
                "INSERT INTO outbox (job_id, recipient, next_attempt_ms) VALUES (?1, ?2, ?3)",
                params![id.as_str(), owner, now],
            )?;
            let event = if new_state == JobState::Done {
                "job.finished"
            } else {
                "job.failed"
            };
            webhooks::record(tx, id, event, now)?;
            stored_job(tx, id)
        })
    }

    /// Cancels an unfinished job (no email: the user asked for it).
    pub fn cancel(&mut self, id: &JobId) -> Result<Job> {
        let now = now_ms();
        self.write(|tx| {
            let state = current_state(tx, id)?;
            if state.is_final() {
                return Err(StoreError::Conflict {
                    job: id.to_string(),
                    state,
                    action: "cancel",
                });
            }
            tx.execute(
                "UPDATE jobs SET state = 'canceled', updated_at_ms = ?2, finished_at_ms = ?2 WHERE id = ?1",
                params![id.as_str(), now],
            )?;
            stored_job(tx, id)
        })
    }

    /// Deletes a finished job and its outbox row. Unfinished jobs are canceled first.
    pub fn delete_job(&mut self, id: &JobId) -> Result<bool> {
        self.write(|tx| {
            let state = current_state(tx, id)?;
            if !state.is_final() {
                return Err(StoreError::Conflict {
                    job: id.to_string(),
                    state,
                    action: "delete an unfinished job",
                });
            }
            forget_upload(tx, id)?;
            Ok(tx.execute("DELETE FROM jobs WHERE id = ?1", [id.as_str()])? == 1)
        })
    }

    /// Every job here with what another node needs to take it over, in the order to hand
    /// them over: unfinished jobs (oldest first), then jobs whose email is still pending,
    /// then the rest (newest first).
    pub fn handovers(&self) -> Result<Vec<Handover>> {
        let columns = JOB_COLUMNS
            .split(", ")
            .map(|c| format!("j.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {columns}, j.idempotency_key, o.id IS NOT NULL, o.sent_at_ms IS NOT NULL \
             FROM jobs_view j LEFT JOIN outbox o ON o.job_id = j.id"
        ))?;
        let rows = stmt.query_map([], |r| {
            let n = JOB_COLUMN_COUNT;
            let mail = match (r.get::<_, bool>(n + 1)?, r.get::<_, bool>(n + 2)?) {
                (false, _) => MailState::None,
                (true, false) => MailState::Pending,
                (true, true) => MailState::Sent,
            };
            let idempotency_key = r.get(n)?;
            Ok(job_from_row(r)?.map(|job| Handover {
                job,
                idempotency_key,
                mail,
                webhooks: Vec::new(),
            }))
        })?;
        let mut all = rows.map(|r| r?).collect::<Result<Vec<_>>>()?;
        for h in &mut all {
            h.webhooks = webhooks::of_job(&self.conn, &h.job.id)?;
        }
        let rank = |h: &Handover| match (h.job.state.is_final(), h.mail) {
            (false, _) => 0,
            (true, MailState::Pending) => 1,
            (true, _) => 2,
        };
        all.sort_by(|a, b| {
            rank(a).cmp(&rank(b)).then_with(|| match rank(a) {
                0 => a.job.created_at_ms.cmp(&b.job.created_at_ms),
                _ => b.job.created_at_ms.cmp(&a.job.created_at_ms),
            })
        });
        Ok(all)
    }

    /// Takes over a job handed over by another node: stored as it was, except that an
    /// unfinished job starts again from `queued` (its conversion elsewhere was stopped).
    /// Returns the stored job, or `None` when it is already here (a retried handover). An
    /// idempotency key this user already used here is dropped rather than refusing the job.
    pub fn adopt(&mut self, h: &Handover) -> Result<Option<Job>> {
        let job = &h.job;
        self.write(|tx| {
            let known: bool = tx.query_row("SELECT COUNT(*) > 0 FROM jobs WHERE id = ?1", [job.id.as_str()], |r| {
                r.get(0)
            })?;
            if known {
                return Ok(None);
            }
            let key = match &h.idempotency_key {
                Some(key) => keyed_job(tx, &job.owner_email, key)?.is_none().then_some(key.as_str()),
                None => None,
            };
            let (state, progress, produced) = if job.state.is_final() {
                (job.state, job.progress, job.produced.as_ref())
            } else {
                (JobState::Queued, 0.0, None)
            };
            let (kind, url) = match &job.source {
                Source::Upload => ("upload", None),
                Source::Url(url) => ("url", Some(url.as_str())),
            };
            tx.execute(
                "INSERT INTO jobs (id, owner_email, state, progress, error_code, error_message, source_kind, \
                 source_url, file_name, bitrate_kbps, vbr_quality, idempotency_key, attempt, created_at_ms, \
                 updated_at_ms, finished_at_ms, webhook_url, mp3_bytes, duration_ms, warnings) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
                params![
                    job.id.as_str(),
                    job.owner_email,
                    state.as_str(),
                    progress,
                    job.error_code,
                    job.error_message,
                    kind,
                    url,
                    job.file_name,
                    job.bitrate_kbps,
                    job.vbr_quality,
                    key,
                    job.attempt,
                    job.created_at_ms,
                    now_ms(),
                    job.finished_at_ms,
                    job.webhook_url,
                    produced.map(|p| p.mp3_bytes),
                    produced.map(|p| p.duration_ms),
                    produced.and_then(|p| p.warnings.as_deref())
                ],
            )?;
            webhooks::adopt(tx, &job.id, &h.webhooks)?;
            // A job handed over still counts for its owner's day, here now.
            super::quota::record_creation(tx, job.id.as_str(), &job.owner_email, job.created_at_ms)?;
            let sent = match h.mail {
                MailState::None => None,
                MailState::Pending => Some(None),
                MailState::Sent => Some(Some(now_ms())),
            };
            if let Some(sent_at) = sent {
                tx.execute(
                    "INSERT INTO outbox (job_id, recipient, next_attempt_ms, sent_at_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![job.id.as_str(), job.owner_email, now_ms(), sent_at],
                )?;
            }
            stored_job(tx, &job.id).map(Some)
        })
    }

    /// Jobs that ended before `before_ms`, oldest first (retention).
    pub fn jobs_ended_before(&self, before_ms: i64, limit: u32) -> Result<Vec<JobId>> {
        self.ids(
            "SELECT id FROM jobs WHERE finished_at_ms IS NOT NULL AND finished_at_ms < ?1 \
             ORDER BY finished_at_ms LIMIT ?2",
            params![before_ms, limit],
        )
    }

    /// Replaces an ended job by its tombstone (its outbox rows go with it). `false` if it
    /// was not there.
    pub fn expire_job(&mut self, id: &JobId) -> Result<bool> {
        let now = now_ms();
        self.write(|tx| {
            let kept = tx.execute(
                "INSERT OR IGNORE INTO expired_jobs (id, owner_email, expired_at_ms) \
                 SELECT id, owner_email, ?2 FROM jobs WHERE id = ?1",
                params![id.as_str(), now],
            )?;
            tx.execute("DELETE FROM jobs WHERE id = ?1", [id.as_str()])?;
            forget_upload(tx, id)?;
            Ok(kept == 1)
        })
    }

    /// The owner of an expired job, if `id` is one.
    pub fn expired_job(&self, id: &JobId) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT owner_email FROM expired_jobs WHERE id = ?1")?
            .query_row([id.as_str()], |r| r.get(0))
            .optional()?)
    }

    /// Removes a job and its outbox row whatever its state (it was handed over).
    pub fn forget_job(&mut self, id: &JobId) -> Result<bool> {
        self.write(|tx| {
            forget_upload(tx, id)?;
            Ok(tx.execute("DELETE FROM jobs WHERE id = ?1", [id.as_str()])? == 1)
        })
    }

    /// Mails due for sending now.
    pub fn due_mail(&self, limit: u32) -> Result<Vec<OutboxMail>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, job_id, recipient, attempts FROM outbox \
             WHERE sent_at_ms IS NULL AND next_attempt_ms <= ?1 ORDER BY next_attempt_ms LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now_ms(), limit], |r| {
            Ok(OutboxMail {
                id: r.get(0)?,
                job_id: JobId(r.get(1)?),
                recipient: r.get(2)?,
                attempts: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Marks a mail sent.
    pub fn mail_sent(&mut self, mail_id: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE outbox SET sent_at_ms = ?2, attempts = attempts + 1 WHERE id = ?1",
                params![mail_id, now_ms()],
            )?;
            Ok(())
        })
    }

    /// Records a failed send and when to retry.
    pub fn mail_failed(&mut self, mail_id: i64, error: &str, retry_at_ms: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_ms = ?3 WHERE id = ?1",
                params![mail_id, error, retry_at_ms],
            )?;
            Ok(())
        })
    }
}

/// The job `id`, which the caller knows exists (it just wrote it).
fn stored_job(conn: &rusqlite::Connection, id: &JobId) -> Result<Job> {
    conn.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs_view WHERE id = ?1"),
        [id.as_str()],
        job_from_row,
    )?
}

fn current_state(tx: &rusqlite::Transaction<'_>, id: &JobId) -> Result<JobState> {
    let state: String = tx.query_row("SELECT state FROM jobs WHERE id = ?1", [id.as_str()], |r| r.get(0))?;
    state.parse().map_err(|()| StoreError::BadRow {
        job: id.to_string(),
        column: "state",
        value: state,
    })
}

#[cfg(test)]
mod tests;
