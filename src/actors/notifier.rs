//! The notifier: drains the outboxes into emails and webhook calls.
//!
//! Rows enter the outboxes in the transaction that finishes a job, so every finished job
//! gets its mail (and its webhook) even across crashes. The notifier wakes when told and
//! every few seconds, sends what is due, and reschedules failures with exponential backoff
//! (5 s doubling to an hour). A row is marked sent only after the transport accepted the
//! mail, or the receiver answered 2xx. Webhook calls run as tasks, at most
//! [`MAX_CALLS`] at a time, so a slow receiver holds up neither mail nor other receivers;
//! each attempt's end comes back as [`NotifierMsg::Attempted`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::config::Config;
use crate::fetch::Fetcher;
use crate::mail::{self, Mailer};
use crate::store::{Attempt, Db, DueDelivery, JobId, JobState, now_ms};
use crate::webhook;

/// Backstop polling period.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// Mails sent per wake-up before yielding to other messages.
const BATCH: u32 = 20;
/// Webhook calls in flight at most.
pub const MAX_CALLS: usize = 16;

/// The notifier's messages.
#[derive(Debug)]
pub enum NotifierMsg {
    /// Something may be due.
    Wake,
    /// A webhook call ended (from its task).
    Attempted {
        /// The outbox row.
        row: i64,
        /// The job.
        job: JobId,
        /// How it went.
        attempt: Attempt,
    },
}

impl ractor::Message for NotifierMsg {}

/// The notifier actor.
pub struct NotifierActor;

/// Its state.
pub struct NotifierState {
    config: Arc<Config>,
    db: Db,
    mailer: Mailer,
    /// Webhook calls go through the URL imports' address guard.
    fetcher: Fetcher,
    /// Webhook rows being called now.
    calling: HashSet<i64>,
}

/// The delay before retry number `attempts` (1-based): 5 s, 10 s, 20 s, ... at most 1 h.
pub fn backoff(attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(0);
    Duration::from_secs(5u64.saturating_mul(1 << exp)).min(Duration::from_secs(3600))
}

impl Actor for NotifierActor {
    type Msg = NotifierMsg;
    type State = NotifierState;
    type Arguments = Arc<Config>;

    async fn pre_start(
        &self,
        myself: ActorRef<NotifierMsg>,
        config: Arc<Config>,
    ) -> Result<NotifierState, ActorProcessingErr> {
        let state = NotifierState {
            db: Db::open(&config.db_path())?,
            mailer: Mailer::new(&config.mail)?,
            fetcher: Fetcher::from_config(&config),
            calling: HashSet::new(),
            config,
        };
        myself.send_interval(POLL_EVERY, || NotifierMsg::Wake);
        myself.send_message(NotifierMsg::Wake)?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<NotifierMsg>,
        message: NotifierMsg,
        state: &mut NotifierState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NotifierMsg::Wake => {
                state.send_mail(&myself).await?;
                state.call_webhooks(&myself).await?;
            }
            NotifierMsg::Attempted { row, job, attempt } => {
                state.calling.remove(&row);
                crate::metrics::webhook_call(match &attempt {
                    Attempt::Delivered { .. } => "delivered",
                    Attempt::Retry { .. } => "retry",
                    Attempt::Gone => "gone",
                    Attempt::Refused { .. } => "refused",
                });
                match &attempt {
                    Attempt::Delivered { status } => tracing::info!(job_id = %job, status, "webhook delivered"),
                    Attempt::Retry {
                        error,
                        retry_at_ms: Some(at),
                        ..
                    } => {
                        tracing::info!(job_id = %job, error = %error, "webhook not delivered; will retry");
                        let wait = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
                        myself.send_after(wait, || NotifierMsg::Wake);
                    }
                    other => tracing::warn!(job_id = %job, outcome = ?other, "webhook given up"),
                }
                state.db.run(move |s| s.webhook_attempted(row, &attempt)).await?;
                if state.calling.len() + 1 == MAX_CALLS {
                    myself.send_message(NotifierMsg::Wake)?;
                }
            }
        }
        Ok(())
    }
}

impl NotifierState {
    /// Sends the mails that are due.
    async fn send_mail(&mut self, myself: &ActorRef<NotifierMsg>) -> Result<(), ActorProcessingErr> {
        let due = self.db.run(|s| s.due_mail(BATCH)).await?;
        let full_batch = due.len() == BATCH as usize;
        for row in due {
            let key = row.job_id.clone();
            let Some(job) = self.db.run(move |s| s.job(&key)).await? else {
                continue; // deleted with its outbox row
            };
            let link = format!(
                "{}/v1/links/{}",
                self.config.public_url,
                self.config.keys.sign_link(job.id.as_str(), self.config.link_ttl)
            );
            let sent = match mail::job_mail(&job, &self.config.mail_from, &link, self.config.link_ttl) {
                Ok(message) => self.mailer.send(message).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => {
                    tracing::info!(job_id = %job.id, to = %row.recipient, "email sent");
                    crate::metrics::email(true);
                    self.db.run(move |s| s.mail_sent(row.id)).await?;
                }
                Err(e) => {
                    crate::metrics::email(false);
                    let retry_at = now_ms() + backoff(row.attempts + 1).as_millis() as i64;
                    tracing::warn!(job_id = %job.id, error = %e, attempts = row.attempts + 1, "email not sent; will retry");
                    let message = e.to_string();
                    self.db.run(move |s| s.mail_failed(row.id, &message, retry_at)).await?;
                }
            }
        }
        if full_batch {
            myself.send_message(NotifierMsg::Wake)?;
        }
        Ok(())
    }

    /// Starts a call for each due webhook delivery not being called already.
    async fn call_webhooks(&mut self, myself: &ActorRef<NotifierMsg>) -> Result<(), ActorProcessingErr> {
        if self.calling.len() >= MAX_CALLS {
            return Ok(());
        }
        let due = self.db.run(|s| s.due_webhooks(BATCH + MAX_CALLS as u32)).await?;
        for d in due {
            if self.calling.len() >= MAX_CALLS {
                break;
            }
            if self.calling.contains(&d.row) {
                continue;
            }
            let (key, owner) = (d.job_id.clone(), d.owner_email.clone());
            let found = self
                .db
                .run(move |s| Ok((s.job(&key)?, s.webhook_settings(&owner)?)))
                .await?;
            let (Some(mut job), settings) = found else { continue };
            if d.delivery.event_type == "job.created" {
                // The job as it was created (it may have moved on since).
                job.state = JobState::Queued;
                job.progress = 0.0;
                (job.error_code, job.error_message, job.finished_at_ms) = (None, None, None);
                job.updated_at_ms = job.created_at_ms;
            }
            self.calling.insert(d.row);
            let me = myself.clone();
            let fetcher = self.fetcher.clone();
            let secret = settings.and_then(|s| s.secret);
            tokio::spawn(async move {
                let DueDelivery { row, delivery: w, .. } = d;
                let attempt = match secret {
                    Some(secret) => {
                        let body = crate::http::event_body(&w.event_id, &w.event_type, w.created_at_ms, &job);
                        let event = (w.event_id.as_str(), w.event_type.as_str());
                        webhook::attempt(&fetcher, &w.url, event, body, &secret, w.created_at_ms, w.attempts).await
                    }
                    None => Attempt::Refused {
                        status: None,
                        error: "the user has no webhook signing secret".into(),
                    },
                };
                let _ = me.send_message(NotifierMsg::Attempted {
                    row,
                    job: job.id,
                    attempt,
                });
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_up_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(5), Duration::from_secs(80));
        assert_eq!(backoff(12), Duration::from_secs(3600));
        assert_eq!(backoff(1000), Duration::from_secs(3600));
    }
}
