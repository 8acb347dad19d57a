//! The notifier: drains the outboxes into emails and webhook calls.
//!
//! Rows enter the outboxes in the transaction that finishes a job, so every finished job
//! gets its mail (and its webhook) even across crashes. The notifier wakes when told and
//! every few seconds, sends what is due, and reschedules failures with exponential backoff
//! (5 s doubling to an hour). A row is marked sent only after the transport accepted the
//! mail, or the receiver answered 2xx. Webhook calls run as tasks, at most
//! [`MAX_CALLS`] at a time, and at most [`MAX_CALLS_PER_RECEIVER`] to one receiver (host and
//! port) and [`MAX_CALLS_PER_USER`] for one user, so a slow receiver holds up neither mail
//! nor other users' receivers; a receiver whose last call took [`SLOW_CALL`] or more gets
//! that as its budget ([`webhook::CALL_TIMEOUT`] otherwise) until it answers quickly again.
//! Each attempt's end comes back as [`NotifierMsg::Attempted`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::config::Config;
use crate::fetch::Fetcher;
use crate::mail::{self, Mailer};
use crate::store::{Attempt, Db, DueDelivery, JobId, JobState, now_ms};

pub mod retry;
pub mod webhook;

use retry::backoff;

/// Backstop polling period.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// Mails sent per wake-up before yielding to other messages.
const BATCH: u32 = 20;
/// Webhook calls in flight at most.
pub const MAX_CALLS: usize = 16;
/// Webhook calls in flight to one receiver (host and port) at most.
pub const MAX_CALLS_PER_RECEIVER: usize = 2;
/// Webhook calls in flight for one user's jobs at most (many host names may lead to one
/// slow server).
pub const MAX_CALLS_PER_USER: usize = 4;
/// A call this long marks its receiver slow: its next calls get this as their budget.
pub const SLOW_CALL: Duration = Duration::from_secs(5);
/// Due deliveries looked at per wake-up (more than can be called, so that one receiver's
/// backlog does not hide other receivers' deliveries).
const DUE_LOOKED_AT: u32 = 256;

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
        /// How long the call took.
        took: Duration,
    },
}

/// A webhook call in flight: to whom, for whom.
struct Call {
    receiver: String,
    owner: String,
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
    calling: HashMap<i64, Call>,
    /// Receivers whose last call took [`SLOW_CALL`] or more.
    slow: HashSet<String>,
    /// A due delivery waited for its receiver's or user's calls: look again when one ends.
    held_back: bool,
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
            calling: HashMap::new(),
            slow: HashSet::new(),
            held_back: false,
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
            NotifierMsg::Attempted {
                row,
                job,
                attempt,
                took,
            } => {
                let was_full = state.calling.len() == MAX_CALLS;
                if let Some(call) = state.calling.remove(&row) {
                    if took >= SLOW_CALL {
                        state.slow.insert(call.receiver);
                    } else {
                        state.slow.remove(&call.receiver);
                    }
                }
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
                if was_full || std::mem::take(&mut state.held_back) {
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
        let due = self.db.run(|s| s.due_webhooks(DUE_LOOKED_AT)).await?;
        for d in due {
            if self.calling.len() >= MAX_CALLS {
                break;
            }
            if self.calling.contains_key(&d.row) {
                continue;
            }
            let receiver = receiver(&d.delivery.url);
            let to_receiver = self.calling.values().filter(|c| c.receiver == receiver).count();
            let for_user = self.calling.values().filter(|c| c.owner == d.owner_email).count();
            if to_receiver >= MAX_CALLS_PER_RECEIVER || for_user >= MAX_CALLS_PER_USER {
                self.held_back = true;
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
            let budget = if self.slow.contains(&receiver) {
                SLOW_CALL
            } else {
                webhook::CALL_TIMEOUT
            };
            self.calling.insert(
                d.row,
                Call {
                    receiver,
                    owner: d.owner_email.clone(),
                },
            );
            let me = myself.clone();
            let fetcher = self.fetcher.clone();
            let secret = settings.and_then(|s| s.secret);
            tokio::spawn(async move {
                let DueDelivery { row, delivery: w, .. } = d;
                let started = Instant::now();
                let attempt = match secret {
                    Some(secret) => {
                        let body = crate::view::event_body(&w.event_id, &w.event_type, w.created_at_ms, &job);
                        let event = (w.event_id.as_str(), w.event_type.as_str());
                        let call = webhook::Call {
                            event,
                            body,
                            secret: &secret,
                            created_at_ms: w.created_at_ms,
                            attempts_before: w.attempts,
                            timeout: budget,
                        };
                        webhook::attempt(&fetcher, &w.url, call).await
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
                    took: started.elapsed(),
                });
            });
        }
        Ok(())
    }
}

/// Who answers a webhook URL: its host and port (the URL itself if it has none).
fn receiver(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or_default().to_ascii_lowercase(),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_is_its_host_and_port() {
        assert_eq!(receiver("https://Hooks.Example.com/a?b"), "hooks.example.com:443");
        assert_eq!(receiver("http://127.0.0.1:9000/x"), "127.0.0.1:9000");
        assert_eq!(receiver("http://127.0.0.1:9000/y"), receiver("http://127.0.0.1:9000/x"));
    }
}
