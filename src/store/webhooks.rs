//! Webhooks: each user's settings (default URL, events, signing secret; replicated with the
//! user) and the delivery outbox.
//!
//! A delivery row is written in the transaction that records its event (`finish` for
//! `job.finished`/`job.failed`, `insert_job` for `job.created`), like the email outbox, so a
//! crash can neither lose a webhook nor send one for a change that did not happen. Rows
//! move with their job on a scale-down handoff and go with it when it is deleted.

use rusqlite::{OptionalExtension, Row, params};

use super::{JobId, Result, Store, now_ms};

/// The events a user's webhooks get when they did not choose.
pub const DEFAULT_EVENTS: &[&str] = &["job.finished", "job.failed"];
/// The events a webhook may ask for.
pub const EVENTS: &[&str] = &["job.created", "job.finished", "job.failed"];

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet: due at its next attempt.
    Pending,
    /// A 2xx answer came.
    Delivered,
    /// Given up: a 4xx answer other than 408/410/429, or 24 h of failures.
    Failed,
    /// The receiver answered 410 Gone: the URL is disabled.
    Disabled,
}

impl DeliveryState {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Disabled => "disabled",
        }
    }

    /// From its stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
            DeliveryState::Disabled,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

/// One webhook delivery (an event for one URL) and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event's id (the body's `id`): `<job id>.<type>`, the same on every attempt.
    pub event_id: String,
    /// `job.created`, `job.finished` or `job.failed`.
    pub event_type: String,
    /// Where it goes.
    pub url: String,
    /// When the event happened (ms since the epoch).
    pub created_at_ms: i64,
    /// Where it is.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: i64,
    /// When the next attempt is due (pending only).
    pub next_attempt_ms: i64,
    /// The last HTTP status received.
    pub last_status: Option<i64>,
    /// The last error (connection, timeout, status).
    pub last_error: Option<String>,
    /// When a 2xx came.
    pub delivered_at_ms: Option<i64>,
}

/// A delivery due now, with what sending it needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The outbox row.
    pub row: i64,
    /// The job.
    pub job_id: JobId,
    /// Its owner (whose secret signs it).
    pub owner_email: String,
    /// The delivery.
    pub delivery: Delivery,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx.
    Delivered {
        /// The status.
        status: u16,
    },
    /// A connection error, a timeout, 408, 429 or 5xx: try again at `retry_at_ms` (or give
    /// up, `None`: the event is older than the retry window).
    Retry {
        /// The status, if one came.
        status: Option<u16>,
        /// What went wrong.
        error: String,
        /// When to try again.
        retry_at_ms: Option<i64>,
    },
    /// 410 Gone: this URL is disabled (a user's default URL is removed from their settings).
    Gone,
    /// Another 4xx (or a refused address): failed for good.
    Refused {
        /// The status, if one came.
        status: Option<u16>,
        /// What went wrong.
        error: String,
    },
}

/// A user's webhook settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebhookSettings {
    /// Where their jobs' events go unless a job names its own URL.
    pub url: Option<String>,
    /// Which events (comma-separated in the store); empty: [`DEFAULT_EVENTS`].
    pub events: Vec<String>,
    /// The signing secret, if one was made.
    pub secret: Option<String>,
}

impl WebhookSettings {
    /// The events asked for, or the default ones.
    pub fn wanted(&self) -> Vec<String> {
        if self.events.is_empty() {
            DEFAULT_EVENTS.iter().map(|e| e.to_string()).collect()
        } else {
            self.events.clone()
        }
    }
}

pub(super) const DELIVERY_COLUMNS: &str = "event_id, event_type, url, created_at_ms, state, attempts, next_attempt_ms, last_status, last_error, delivered_at_ms";

fn delivery_from(r: &Row<'_>, first: usize) -> rusqlite::Result<Delivery> {
    let state: String = r.get(first + 4)?;
    Ok(Delivery {
        event_id: r.get(first)?,
        event_type: r.get(first + 1)?,
        url: r.get(first + 2)?,
        created_at_ms: r.get(first + 3)?,
        state: DeliveryState::parse(&state).unwrap_or(DeliveryState::Failed),
        attempts: r.get(first + 5)?,
        next_attempt_ms: r.get(first + 6)?,
        last_status: r.get(first + 7)?,
        last_error: r.get(first + 8)?,
        delivered_at_ms: r.get(first + 9)?,
    })
}

/// The job's latest delivery from a row whose columns from `first` on are the view's
/// `wh_*` columns (all NULL when there is none).
pub(super) fn latest_from(r: &Row<'_>, first: usize) -> rusqlite::Result<Option<Delivery>> {
    let event_id: Option<String> = r.get(first)?;
    event_id.map(|_| delivery_from(r, first)).transpose()
}

fn settings_of(tx: &rusqlite::Connection, email: &str) -> Result<Option<WebhookSettings>> {
    Ok(tx
        .query_row(
            "SELECT webhook_url, webhook_events, webhook_secret FROM users WHERE email = ?1 AND removed = 0",
            [email],
            |r| {
                let events: Option<String> = r.get(1)?;
                Ok(WebhookSettings {
                    url: r.get(0)?,
                    events: events
                        .unwrap_or_default()
                        .split(',')
                        .filter(|e| !e.is_empty())
                        .map(str::to_string)
                        .collect(),
                    secret: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// Queues `event_type` for the job's webhook (its own URL, else its owner's default) if
/// its owner asked for that event: called inside the transaction that records the event.
pub(super) fn record(tx: &rusqlite::Connection, id: &JobId, event_type: &str, now: i64) -> Result<()> {
    let (owner, job_url): (String, Option<String>) = tx.query_row(
        "SELECT owner_email, webhook_url FROM jobs WHERE id = ?1",
        [id.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let settings = settings_of(tx, &owner)?.unwrap_or_default();
    let Some(url) = job_url.or(settings.url.clone()) else {
        return Ok(());
    };
    if !settings.wanted().iter().any(|e| e == event_type) {
        return Ok(());
    }
    tx.execute(
        "INSERT OR IGNORE INTO webhooks (event_id, job_id, event_type, url, created_at_ms, next_attempt_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![format!("{id}.{event_type}"), id.as_str(), event_type, url, now],
    )?;
    Ok(())
}

/// Inserts deliveries handed over with their job (inside the adopting transaction).
pub(super) fn adopt(tx: &rusqlite::Connection, id: &JobId, deliveries: &[Delivery]) -> Result<()> {
    for d in deliveries {
        tx.execute(
            &format!("INSERT OR IGNORE INTO webhooks (job_id, {DELIVERY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
            params![
                id.as_str(),
                d.event_id,
                d.event_type,
                d.url,
                d.created_at_ms,
                d.state.as_str(),
                d.attempts,
                d.next_attempt_ms,
                d.last_status,
                d.last_error,
                d.delivered_at_ms
            ],
        )?;
    }
    Ok(())
}

/// Every delivery of a job (for a handoff), oldest first.
pub(super) fn of_job(conn: &rusqlite::Connection, id: &JobId) -> Result<Vec<Delivery>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhooks WHERE job_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([id.as_str()], |r| delivery_from(r, 0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Store {
    /// A live user's webhook settings.
    pub fn webhook_settings(&self, email: &str) -> Result<Option<WebhookSettings>> {
        settings_of(&self.conn, email)
    }

    /// Sets (or with `url = None` removes) a live user's default webhook and its events, and
    /// stores `new_secret` if they had none. Returns the settings, or `None` for no such
    /// user. The change replicates like any change of the user.
    pub fn set_webhook(
        &mut self,
        email: &str,
        url: Option<&str>,
        events: &[String],
        new_secret: Option<&str>,
    ) -> Result<Option<WebhookSettings>> {
        let now = now_ms();
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE users SET webhook_url = ?2, webhook_events = ?3, \
                 webhook_secret = coalesce(webhook_secret, ?4), updated_at_ms = max(?5, updated_at_ms + 1) \
                 WHERE email = ?1 AND removed = 0",
                params![email, url, events.join(","), new_secret, now],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            settings_of(tx, email)
        })
    }

    /// Deliveries due now, oldest first.
    pub fn due_webhooks(&self, limit: u32) -> Result<Vec<DueDelivery>> {
        let columns = DELIVERY_COLUMNS
            .split(", ")
            .map(|c| format!("w.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = self.conn.prepare(&format!(
            "SELECT w.id, w.job_id, j.owner_email, {columns} FROM webhooks w JOIN jobs j ON j.id = w.job_id \
             WHERE w.state = 'pending' AND w.next_attempt_ms <= ?1 ORDER BY w.next_attempt_ms LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now_ms(), limit], |r| {
            let job: String = r.get(1)?;
            Ok((r.get(0)?, job, r.get(2)?, delivery_from(r, 3)?))
        })?;
        let mut due = Vec::new();
        for row in rows {
            let (row, job, owner_email, delivery) = row?;
            if let Some(job_id) = JobId::parse(&job) {
                due.push(DueDelivery {
                    row,
                    job_id,
                    owner_email,
                    delivery,
                });
            }
        }
        Ok(due)
    }

    /// Records how an attempt of delivery `row` ended. A 410 also removes the URL from its
    /// owner's settings if it is their default.
    pub fn webhook_attempted(&mut self, row: i64, attempt: &Attempt) -> Result<()> {
        let now = now_ms();
        self.write(|tx| {
            let status = |s: &Option<u16>| s.map(i64::from);
            match attempt {
                Attempt::Delivered { status } => tx.execute(
                    "UPDATE webhooks SET state = 'delivered', attempts = attempts + 1, last_status = ?2, \
                     last_error = NULL, delivered_at_ms = ?3 WHERE id = ?1",
                    params![row, i64::from(*status), now],
                )?,
                Attempt::Retry {
                    status: s,
                    error,
                    retry_at_ms,
                } => tx.execute(
                    "UPDATE webhooks SET state = ?5, attempts = attempts + 1, last_status = ?2, last_error = ?3, \
                     next_attempt_ms = ?4 WHERE id = ?1",
                    params![
                        row,
                        status(s),
                        error,
                        retry_at_ms.unwrap_or(now),
                        if retry_at_ms.is_some() { "pending" } else { "failed" }
                    ],
                )?,
                Attempt::Gone => {
                    let (url, owner): (String, String) = tx.query_row(
                        "SELECT w.url, j.owner_email FROM webhooks w JOIN jobs j ON j.id = w.job_id WHERE w.id = ?1",
                        [row],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    tx.execute(
                        "UPDATE users SET webhook_url = NULL, updated_at_ms = max(?3, updated_at_ms + 1) \
                         WHERE email = ?1 AND webhook_url = ?2",
                        params![owner, url, now],
                    )?;
                    // Other events still queued for that URL are not sent either.
                    tx.execute(
                        "UPDATE webhooks SET state = 'disabled', last_error = '410 Gone: the receiver disabled this URL' \
                         WHERE url = ?1 AND state = 'pending' AND id != ?2",
                        params![url, row],
                    )?;
                    tx.execute(
                        "UPDATE webhooks SET state = 'disabled', attempts = attempts + 1, last_status = 410, \
                         last_error = '410 Gone: the receiver disabled this URL' WHERE id = ?1",
                        [row],
                    )?
                }
                Attempt::Refused { status: s, error } => tx.execute(
                    "UPDATE webhooks SET state = 'failed', attempts = attempts + 1, last_status = ?2, last_error = ?3 \
                     WHERE id = ?1",
                    params![row, status(s), error],
                )?,
            };
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewJob, Produced, Source};

    fn submit(store: &mut Store, owner: &str, url: Option<&str>) -> JobId {
        let job = NewJob {
            id: JobId::new("node-0"),
            owner_email: owner.into(),
            source: Source::Upload,
            file_name: "a.mp4".into(),
            bitrate_kbps: None,
            vbr_quality: None,
            idempotency_key: None,
            webhook_url: url.map(str::to_string),
        };
        store.insert_job(&job).unwrap();
        job.id
    }

    fn row_of(store: &Store, id: &JobId) -> i64 {
        store
            .due_webhooks(100)
            .unwrap()
            .iter()
            .find(|d| &d.job_id == id)
            .unwrap()
            .row
    }

    #[test]
    fn the_event_that_ends_a_job_queues_its_call_in_the_same_write() {
        let mut store = Store::open_in_memory().unwrap();
        store.add_user("ann@example.com", "h", false).unwrap();
        // No URL anywhere: nothing is queued.
        let quiet = submit(&mut store, "ann@example.com", None);
        store.finish(&quiet, 0, Ok(&Produced::default())).unwrap();
        assert!(store.due_webhooks(10).unwrap().is_empty());
        // A default URL: `job.finished` and `job.failed` by default, not `job.created`.
        let set = store
            .set_webhook(
                "ann@example.com",
                Some("https://hooks.example.org/a"),
                &[],
                Some("whsec_1"),
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            (set.secret.as_deref(), set.wanted()),
            (
                Some("whsec_1"),
                vec!["job.finished".to_string(), "job.failed".to_string()]
            )
        );
        let done = submit(&mut store, "ann@example.com", None);
        assert!(
            store.due_webhooks(10).unwrap().is_empty(),
            "job.created was not asked for"
        );
        store.finish(&done, 0, Ok(&Produced::default())).unwrap();
        let failed = submit(&mut store, "ann@example.com", Some("https://own.example.org/b"));
        store.finish(&failed, 0, Err(("not_mp4", "no"))).unwrap();
        let due = store.due_webhooks(10).unwrap();
        let calls: Vec<(&str, &str, &str)> = due
            .iter()
            .map(|d| {
                (
                    d.delivery.event_id.as_str(),
                    d.delivery.event_type.as_str(),
                    d.delivery.url.as_str(),
                )
            })
            .collect();
        let (done_event, failed_event) = (format!("{done}.job.finished"), format!("{failed}.job.failed"));
        assert_eq!(
            calls,
            [
                (done_event.as_str(), "job.finished", "https://hooks.example.org/a"),
                (failed_event.as_str(), "job.failed", "https://own.example.org/b"),
            ],
            "a job's own URL wins"
        );
        // The job shows its latest call; a second secret does not replace the first.
        assert_eq!(
            store.job(&done).unwrap().unwrap().webhook.unwrap().state,
            DeliveryState::Pending
        );
        let again = store
            .set_webhook(
                "ann@example.com",
                Some("https://hooks.example.org/a"),
                &["job.created".into()],
                Some("whsec_2"),
            )
            .unwrap()
            .unwrap();
        assert_eq!(again.secret.as_deref(), Some("whsec_1"));
        let created = submit(&mut store, "ann@example.com", None);
        let d = store.job(&created).unwrap().unwrap().webhook.unwrap();
        assert_eq!(
            (d.event_type.as_str(), d.state),
            ("job.created", DeliveryState::Pending)
        );
        // Deleting a job drops its calls.
        store.delete_job(&done).unwrap();
        assert!(store.due_webhooks(10).unwrap().iter().all(|d| d.job_id != done));
    }

    #[test]
    fn answers_move_a_call_to_delivered_retry_failed_or_disabled() {
        let mut store = Store::open_in_memory().unwrap();
        store.add_user("ann@example.com", "h", false).unwrap();
        store
            .set_webhook("ann@example.com", Some("https://hooks.example.org/a"), &[], Some("s"))
            .unwrap();
        let ids: Vec<JobId> = (0..4).map(|_| submit(&mut store, "ann@example.com", None)).collect();
        for id in &ids {
            store.finish(id, 0, Ok(&Produced::default())).unwrap();
        }
        let later = now_ms() + 60_000;
        let retry = Attempt::Retry {
            status: Some(503),
            error: "503".into(),
            retry_at_ms: Some(later),
        };
        store.webhook_attempted(row_of(&store, &ids[0]), &retry).unwrap();
        let d = store.job(&ids[0]).unwrap().unwrap().webhook.unwrap();
        assert_eq!(
            (d.state, d.attempts, d.last_status, d.next_attempt_ms),
            (DeliveryState::Pending, 1, Some(503), later)
        );
        assert!(
            store.due_webhooks(10).unwrap().iter().all(|d| d.job_id != ids[0]),
            "not due before its time"
        );
        store
            .webhook_attempted(row_of(&store, &ids[1]), &Attempt::Delivered { status: 204 })
            .unwrap();
        let d = store.job(&ids[1]).unwrap().unwrap().webhook.unwrap();
        assert_eq!(
            (d.state, d.attempts, d.last_status),
            (DeliveryState::Delivered, 1, Some(204))
        );
        assert!(d.delivered_at_ms.is_some());
        let give_up = Attempt::Retry {
            status: None,
            error: "timed out".into(),
            retry_at_ms: None,
        };
        store.webhook_attempted(row_of(&store, &ids[2]), &give_up).unwrap();
        assert_eq!(
            store.job(&ids[2]).unwrap().unwrap().webhook.unwrap().state,
            DeliveryState::Failed
        );
        // 410: this call and every other pending one for the URL are disabled, and the
        // user's default URL is removed.
        store
            .webhook_attempted(row_of(&store, &ids[3]), &Attempt::Gone)
            .unwrap();
        for id in [&ids[0], &ids[3]] {
            assert_eq!(
                store.job(id).unwrap().unwrap().webhook.unwrap().state,
                DeliveryState::Disabled
            );
        }
        let settings = store.webhook_settings("ann@example.com").unwrap().unwrap();
        assert_eq!((settings.url, settings.secret.as_deref()), (None, Some("s")));
        assert!(store.due_webhooks(10).unwrap().is_empty());
    }
}
