//! A job as the rest of the service sees it: its id (which names its owner node), its
//! state, what a new one carries, what a conversion produced, its email, and what another
//! node needs to take it over. The queries are in `jobs.rs`.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use super::now_ms;
use super::webhooks::Delivery;

/// A job id: `<owner node>~<random>`. The owner is the stable node (pod) name that accepted
/// the job, so any node can tell where a job lives from its id alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(pub(super) String);

impl JobId {
    /// A fresh id owned by `node`.
    pub fn new(node: &str) -> Self {
        let mut bytes = [0u8; 12];
        if getrandom::fill(&mut bytes).is_err() {
            // No OS randomness source at all (not on Linux): still unique per process.
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            bytes[..8].copy_from_slice(&now_ms().to_le_bytes());
            bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        }
        let random = hex::encode(bytes);
        JobId(format!("{node}~{random}"))
    }

    /// Parses an id from a URL; `None` for anything that is not `<node>~<hex>`.
    pub fn parse(s: &str) -> Option<Self> {
        let (node, random) = s.split_once('~')?;
        let node_ok = !node.is_empty()
            && node.len() <= 253
            && node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        let random_ok = random.len() == 24 && random.bytes().all(|b| b.is_ascii_hexdigit());
        (node_ok && random_ok).then(|| JobId(s.to_string()))
    }

    /// The node that owns the job.
    pub fn owner(&self) -> &str {
        self.0.split_once('~').map_or("", |(node, _)| node)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Accepted and persisted, waiting for a converter.
    Queued,
    /// Downloading its input from a URL.
    Fetching,
    /// A converter is at work.
    Converting,
    /// The MP3 is ready.
    Done,
    /// The job ended with an error code and message.
    Failed,
    /// The user canceled it.
    Canceled,
}

impl JobState {
    /// The state's name, as stored and as shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Fetching => "fetching",
            JobState::Converting => "converting",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    /// True once the job can no longer change.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Canceled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "queued" => JobState::Queued,
            "fetching" => JobState::Fetching,
            "converting" => JobState::Converting,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            "canceled" => JobState::Canceled,
            _ => return Err(()),
        })
    }
}

/// Where a job's MP4 comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Uploaded in the request and stored under the data dir.
    Upload,
    /// Fetched by the service from this URL.
    Url(String),
}

/// A job as accepted, before it is stored.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its id.
    pub id: JobId,
    /// The user it belongs to.
    pub owner_email: String,
    /// Upload or URL.
    pub source: Source,
    /// The user's name for the file (for the download's file name).
    pub file_name: String,
    /// CBR bitrate, if asked for.
    pub bitrate_kbps: Option<u16>,
    /// VBR quality, if asked for.
    pub vbr_quality: Option<u8>,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<String>,
    /// Where this job's webhook events go (instead of its owner's default URL).
    pub webhook_url: Option<String>,
}

impl NewJob {
    /// The job as it is stored at `at_ms`, before it is (`queued`, nothing produced).
    pub fn queued(&self, at_ms: i64) -> Job {
        Job {
            id: self.id.clone(),
            owner_email: self.owner_email.clone(),
            state: JobState::Queued,
            progress: 0.0,
            error_code: None,
            error_message: None,
            source: self.source.clone(),
            file_name: self.file_name.clone(),
            bitrate_kbps: self.bitrate_kbps,
            vbr_quality: self.vbr_quality,
            attempt: 0,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            finished_at_ms: None,
            webhook_url: self.webhook_url.clone(),
            webhook: None,
            produced: None,
        }
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The user it belongs to.
    pub owner_email: String,
    /// Where it is.
    pub state: JobState,
    /// 0..=1 while converting.
    pub progress: f64,
    /// Machine-readable reason for `failed`.
    pub error_code: Option<String>,
    /// Human-readable reason for `failed`.
    pub error_message: Option<String>,
    /// Upload or URL.
    pub source: Source,
    /// The user's name for the file.
    pub file_name: String,
    /// CBR bitrate, if asked for.
    pub bitrate_kbps: Option<u16>,
    /// VBR quality, if asked for.
    pub vbr_quality: Option<u8>,
    /// Conversion attempts so far: the fencing token of the current placement.
    pub attempt: i64,
    /// Accepted at (ms since the epoch).
    pub created_at_ms: i64,
    /// Last change (ms since the epoch).
    pub updated_at_ms: i64,
    /// Ended at (ms since the epoch).
    pub finished_at_ms: Option<i64>,
    /// Its own webhook URL, if it was given one.
    pub webhook_url: Option<String>,
    /// Its latest webhook delivery, if any (boxed: most jobs have none).
    pub webhook: Option<Box<Delivery>>,
    /// What it produced (`done` jobs).
    pub produced: Option<Produced>,
}

/// What a done job produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Produced {
    /// The MP3's size.
    pub mp3_bytes: i64,
    /// The audio's duration.
    pub duration_ms: i64,
    /// What the user should know about a partial result (a damaged input), in words.
    pub warnings: Option<String>,
}

/// An email waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMail {
    /// The outbox row.
    pub id: i64,
    /// The job the mail is about.
    pub job_id: JobId,
    /// Where it goes.
    pub recipient: String,
    /// Sending attempts so far.
    pub attempts: i64,
}

/// A job's email, as far as handing the job over is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailState {
    /// No email yet (the job has not finished, or was canceled).
    None,
    /// Queued, not sent yet.
    Pending,
    /// Sent.
    Sent,
}

/// A job with what another node needs to take it over (scale-down handoff).
#[derive(Debug, Clone, PartialEq)]
pub struct Handover {
    /// The job.
    pub job: Job,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<String>,
    /// Its email.
    pub mail: MailState,
    /// Its webhook deliveries (done or pending).
    pub webhooks: Vec<Delivery>,
}
