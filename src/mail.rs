//! The emails the notifier sends, and where they go (SMTP or `.eml` files).
//!
//! Building a message is a plain function of the job, so it is tested without a server.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{MailConfig, SmtpTls};
use crate::store::{Job, JobState};

/// How long one SMTP exchange may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A mail that could not be built or sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The recipient or sender is not an address, or the message is malformed.
    #[error("cannot build the email: {0}")]
    Build(String),
    /// The transport failed (the notifier retries).
    #[error("cannot send the email: {0}")]
    Send(String),
}

/// The configured transport.
#[derive(Clone)]
pub enum Mailer {
    /// An SMTP relay.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `.eml` files in a directory.
    Files(AsyncFileTransport<Tokio1Executor>),
}

impl Mailer {
    /// The transport for `config` (creates the mail directory for the file transport).
    pub fn new(config: &MailConfig) -> Result<Self, MailError> {
        Ok(match config {
            MailConfig::Files(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| MailError::Build(format!("{}: {e}", dir.display())))?;
                Mailer::Files(AsyncFileTransport::new(dir))
            }
            MailConfig::Smtp {
                host,
                port,
                tls,
                credentials,
            } => {
                let builder = match tls {
                    SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
                    SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                        .map_err(|e| MailError::Build(e.to_string()))?,
                    SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                        .map_err(|e| MailError::Build(e.to_string()))?,
                };
                let mut builder = builder.port(*port).timeout(Some(SMTP_TIMEOUT));
                if let Some((user, password)) = credentials {
                    builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
                }
                Mailer::Smtp(builder.build())
            }
        })
    }

    /// Sends one message.
    pub async fn send(&self, message: Message) -> Result<(), MailError> {
        match self {
            Mailer::Smtp(t) => t
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| MailError::Send(e.to_string())),
            Mailer::Files(t) => t
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| MailError::Send(e.to_string())),
        }
    }
}

/// The email about a finished job: a download link when it is done, the reason when it failed.
pub fn job_mail(job: &Job, from: &str, link: &str, link_ttl: Duration) -> Result<Message, MailError> {
    let from: Mailbox = from.parse().map_err(|e| MailError::Build(format!("sender: {e}")))?;
    let to: Mailbox = job
        .owner_email
        .parse()
        .map_err(|e| MailError::Build(format!("recipient: {e}")))?;
    let name = &job.file_name;
    let (subject, text, html) = if job.state == JobState::Done {
        let days = link_ttl.as_secs().div_ceil(86_400);
        let warnings = job.produced.as_ref().and_then(|p| p.warnings.as_deref());
        let (warning_text, warning_html) = match warnings {
            Some(w) => (
                format!("The input was damaged, so the MP3 is partial: {w}.\n\n"),
                format!(
                    "<p><b>The input was damaged, so the MP3 is partial:</b> {}.</p>",
                    escape(w)
                ),
            ),
            None => (String::new(), String::new()),
        };
        (
            format!("Your MP3 is ready: {name}"),
            format!(
                "Your MP3 of {name} is ready.\n\n{warning_text}Download it here (the link works for {days} days, no login needed):\n{link}\n\nJob: {}\n",
                job.id
            ),
            format!(
                "<p>Your MP3 of <b>{}</b> is ready.</p>{warning_html}<p><a href=\"{}\">Download the MP3</a> \
                 (the link works for {days} days, no login needed).</p><p>Job: {}</p>",
                escape(name),
                escape(link),
                escape(job.id.as_str())
            ),
        )
    } else {
        let code = job.error_code.as_deref().unwrap_or("failed");
        let why = job.error_message.as_deref().unwrap_or("the conversion failed");
        (
            format!("Your conversion failed: {name}"),
            format!(
                "We could not convert {name} to MP3.\n\nReason ({code}): {why}\n\nJob: {}\n",
                job.id
            ),
            format!(
                "<p>We could not convert <b>{}</b> to MP3.</p><p>Reason (<code>{}</code>): {}</p><p>Job: {}</p>",
                escape(name),
                escape(code),
                escape(why),
                escape(job.id.as_str())
            ),
        )
    };
    Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        // One Message-ID per job: a receiving system can drop a duplicate after a crash
        // between sending and recording the send.
        .message_id(Some(format!("<{}@mp4tomp3>", job.id)))
        .multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|e| MailError::Build(e.to_string()))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JobId, Source};

    fn job(state: JobState) -> Job {
        Job {
            id: JobId::new("n1"),
            owner_email: "ann@example.com".into(),
            state,
            progress: 1.0,
            error_code: (state == JobState::Failed).then(|| "not_mp4".into()),
            error_message: (state == JobState::Failed).then(|| "the input is not an MP4 <file>".into()),
            source: Source::Upload,
            file_name: "talk.mp4".into(),
            bitrate_kbps: None,
            vbr_quality: None,
            attempt: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            finished_at_ms: Some(0),
            webhook_url: None,
            webhook: None,
            produced: None,
        }
    }

    #[test]
    fn a_done_mail_has_both_parts_and_the_link() {
        let mail = job_mail(
            &job(JobState::Done),
            "mp4tomp3 <m@x.org>",
            "http://h/v1/links/T?x=1&y=2",
            Duration::from_secs(7 * 86_400),
        )
        .unwrap();
        let raw = String::from_utf8(mail.formatted()).unwrap();
        assert!(raw.contains("Subject: Your MP3 is ready: talk.mp4"), "{raw}");
        assert!(raw.contains("multipart/alternative"));
        assert!(raw.contains("text/plain") && raw.contains("text/html"));
        assert!(
            raw.contains("http://h/v1/links/T?x=1&y=2"),
            "plain part carries the raw link"
        );
        assert!(raw.contains("works for 7 days"));
        assert!(!raw.contains("partial"), "no warning for a whole result");
    }

    #[test]
    fn a_partial_result_says_what_was_recovered_in_both_parts() {
        let mut partial = job(JobState::Done);
        partial.produced = Some(crate::store::Produced {
            mp3_bytes: 1,
            duration_ms: 18_300,
            warnings: Some("recovered 18.3 s of 20.0 s; 55 damaged packets <replaced> with silence".into()),
        });
        let mail = job_mail(&partial, "m@x.org", "http://h/l", Duration::from_secs(1)).unwrap();
        let raw = mail.formatted();
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let text = parsed.body_text(0).unwrap();
        let html = parsed.body_html(0).unwrap();
        assert!(
            text.contains(
                "the MP3 is partial: recovered 18.3 s of 20.0 s; 55 damaged packets <replaced> with silence."
            ),
            "{text}"
        );
        assert!(
            html.contains("recovered 18.3 s of 20.0 s; 55 damaged packets &lt;replaced&gt;"),
            "{html}"
        );
    }

    #[test]
    fn a_failed_mail_says_why_escaped_in_html() {
        let mail = job_mail(&job(JobState::Failed), "m@x.org", "", Duration::from_secs(1)).unwrap();
        let raw = String::from_utf8(mail.formatted()).unwrap();
        assert!(raw.contains("Subject: Your conversion failed: talk.mp4"));
        assert!(raw.contains("Reason (not_mp4): the input is not an MP4 <file>"));
        assert!(raw.contains("not an MP4 &lt;file&gt;"));
    }

    #[test]
    fn a_file_name_cannot_inject_headers_into_the_mail() {
        let mut evil = job(JobState::Done);
        evil.file_name = "a.mp4\r\nBcc: victim@example.org\r\nSubject: free money\n\rX-Evil: 1".into();
        let mail = job_mail(&evil, "m@x.org", "http://h/l", Duration::from_secs(1)).unwrap();
        let raw = mail.formatted();
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let names: Vec<String> = parsed.headers().iter().map(|h| h.name().to_ascii_lowercase()).collect();
        assert!(!names.iter().any(|n| n == "bcc" || n == "x-evil"), "{names:?}");
        assert_eq!(names.iter().filter(|n| *n == "subject").count(), 1, "{names:?}");
        // The name arrives whole, inside the one Subject, as text.
        let subject = parsed.subject().unwrap();
        assert!(subject.starts_with("Your MP3 is ready: a.mp4"), "{subject:?}");
        assert!(subject.contains("Bcc: victim@example.org"), "{subject:?}");
        assert_eq!(parsed.to().unwrap().first().unwrap().address(), Some("ann@example.com"));
        assert!(parsed.bcc().is_none());
    }
}
