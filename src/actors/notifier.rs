//! The notifier: drains the outbox into emails.
//!
//! Rows enter the outbox in the transaction that finishes a job, so every finished job
//! gets its mail even across crashes. The notifier wakes when told and every few seconds,
//! sends what is due, and reschedules failures with exponential backoff (5 s doubling to
//! an hour). A row is marked sent only after the transport accepted the mail.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::config::Config;
use crate::mail::{self, Mailer};
use crate::store::{Db, now_ms};

/// Backstop polling period.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// Mails sent per wake-up before yielding to other messages.
const BATCH: u32 = 20;

/// The notifier's messages.
#[derive(Debug)]
pub enum NotifierMsg {
    /// Something may be due.
    Wake,
}

impl ractor::Message for NotifierMsg {}

/// The notifier actor.
pub struct NotifierActor;

/// Its state.
pub struct NotifierState {
    config: Arc<Config>,
    db: Db,
    mailer: Mailer,
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
            config,
        };
        myself.send_interval(POLL_EVERY, || NotifierMsg::Wake);
        myself.send_message(NotifierMsg::Wake)?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<NotifierMsg>,
        _message: NotifierMsg,
        state: &mut NotifierState,
    ) -> Result<(), ActorProcessingErr> {
        let due = state.db.run(|s| s.due_mail(BATCH)).await?;
        let full_batch = due.len() == BATCH as usize;
        for row in due {
            let key = row.job_id.clone();
            let Some(job) = state.db.run(move |s| s.job(&key)).await? else {
                continue; // deleted with its outbox row
            };
            let link = format!(
                "{}/v1/links/{}",
                state.config.public_url,
                state.config.keys.sign_link(job.id.as_str(), state.config.link_ttl)
            );
            let sent = match mail::job_mail(&job, &state.config.mail_from, &link, state.config.link_ttl) {
                Ok(message) => state.mailer.send(message).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => {
                    tracing::info!(job_id = %job.id, to = %row.recipient, "email sent");
                    crate::metrics::email(true);
                    state.db.run(move |s| s.mail_sent(row.id)).await?;
                }
                Err(e) => {
                    crate::metrics::email(false);
                    let retry_at = now_ms() + backoff(row.attempts + 1).as_millis() as i64;
                    tracing::warn!(job_id = %job.id, error = %e, attempts = row.attempts + 1, "email not sent; will retry");
                    let message = e.to_string();
                    state.db.run(move |s| s.mail_failed(row.id, &message, retry_at)).await?;
                }
            }
        }
        if full_batch {
            myself.send_message(NotifierMsg::Wake)?;
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
