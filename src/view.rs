//! The job's API view: a job, a webhook call and a job event as JSON (with their OpenAPI
//! schemas), shared by the HTTP API, the event stream and the notifier's webhook bodies.

use serde::Serialize;
use utoipa::ToSchema;

use crate::store::{Delivery, DeliveryState, Job, JobState, Source};

/// A job as the API shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Job)]
pub struct JobJson {
    /// Its id; the part before `~` names the node that owns it.
    #[schema(example = "node-a~01HZX3K5V9R7Q2W8E4T6Y0U1I3")]
    id: String,
    state: StateName,
    /// 0 to 1 while converting; 1 when done.
    progress: f64,
    /// Why it failed (`failed` only).
    error: Option<JobFailure>,
    /// The uploaded file's name, or the URL's last segment.
    file_name: String,
    source: SourceName,
    /// The URL it was imported from (`url` jobs).
    url: Option<String>,
    /// CBR bitrate in kbit/s, if one was asked for.
    bitrate: Option<u16>,
    /// VBR quality (0 best … 9), if asked for.
    vbr: Option<u8>,
    /// Conversion attempts so far.
    attempt: i64,
    /// Accepted at (RFC 3339).
    #[schema(format = DateTime)]
    created_at: String,
    /// Last change (RFC 3339).
    #[schema(format = DateTime)]
    updated_at: String,
    /// Ended at (RFC 3339), once ended.
    #[schema(format = DateTime)]
    finished_at: Option<String>,
    /// This job's own webhook URL, if it was given one (else its owner's default applies).
    webhook_url: Option<String>,
    /// Its latest webhook call, if any.
    webhook: Option<DeliveryJson>,
    /// The MP3's size in bytes (`done` jobs).
    #[schema(example = 160_044)]
    mp3_bytes: Option<i64>,
    /// The MP3's audio duration in seconds (`done` jobs).
    #[schema(example = 10.005)]
    duration_seconds: Option<f64>,
    /// Set when the input was damaged and the MP3 holds what could be recovered.
    #[schema(example = "recovered 18.3 s of 20.0 s; 55 damaged packets replaced with silence")]
    warnings: Option<String>,
    links: JobLinks,
}

/// A webhook call and how it went.
#[derive(Serialize, ToSchema)]
struct DeliveryJson {
    /// The event's id (the body's `id`; the same on every attempt).
    event_id: String,
    /// `job.created`, `job.finished` or `job.failed`.
    #[serde(rename = "type")]
    kind: String,
    /// Where it goes.
    url: String,
    state: DeliveryStateName,
    /// Attempts so far.
    attempts: i64,
    /// The next attempt (RFC 3339), while pending.
    #[schema(format = DateTime)]
    next_attempt_at: Option<String>,
    /// The last HTTP status received.
    last_status: Option<i64>,
    /// The last error.
    last_error: Option<String>,
    /// When the receiver answered 2xx (RFC 3339).
    #[schema(format = DateTime)]
    delivered_at: Option<String>,
}

/// Where a webhook call is: `pending` (retried with backoff for up to 24 h on connection
/// errors, timeouts, 408, 429 and 5xx), `delivered` (2xx), `failed` (another 4xx, or 24 h
/// of failures), `disabled` (the receiver answered 410 Gone).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum DeliveryStateName {
    Pending,
    Delivered,
    Failed,
    Disabled,
}

impl From<&Delivery> for DeliveryJson {
    fn from(d: &Delivery) -> Self {
        DeliveryJson {
            event_id: d.event_id.clone(),
            kind: d.event_type.clone(),
            url: d.url.clone(),
            state: match d.state {
                DeliveryState::Pending => DeliveryStateName::Pending,
                DeliveryState::Delivered => DeliveryStateName::Delivered,
                DeliveryState::Failed => DeliveryStateName::Failed,
                DeliveryState::Disabled => DeliveryStateName::Disabled,
            },
            attempts: d.attempts,
            next_attempt_at: (d.state == DeliveryState::Pending).then(|| rfc3339(d.next_attempt_ms)),
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            delivered_at: d.delivered_at_ms.map(rfc3339),
        }
    }
}

/// Where a job is.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum StateName {
    Queued,
    Fetching,
    Converting,
    Done,
    Failed,
    Canceled,
}

/// Where a job's input came from.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum SourceName {
    Upload,
    Url,
}

/// Why a job failed: a stable code and a message. Codes: the input's (`not_mp4`,
/// `no_audio_track`, `unsupported_codec`, `corrupt_media`, `truncated_media`, `too_long`), the
/// URL import's (`invalid_url`, `forbidden_url`, `too_large`, `fetch_failed`), ours
/// (`encoder_failed`, `io_error`).
#[derive(Serialize, ToSchema)]
struct JobFailure {
    code: String,
    message: String,
}

/// The job's own URLs.
#[derive(Serialize, ToSchema)]
struct JobLinks {
    #[serde(rename = "self")]
    this: String,
    mp3: String,
}

/// A store timestamp (ms since the epoch) as RFC 3339.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

impl From<&Job> for JobJson {
    fn from(job: &Job) -> Self {
        let time = rfc3339;
        let (source, url) = match &job.source {
            Source::Upload => (SourceName::Upload, None),
            Source::Url(url) => (SourceName::Url, Some(url.clone())),
        };
        JobJson {
            id: job.id.to_string(),
            state: match job.state {
                JobState::Queued => StateName::Queued,
                JobState::Fetching => StateName::Fetching,
                JobState::Converting => StateName::Converting,
                JobState::Done => StateName::Done,
                JobState::Failed => StateName::Failed,
                JobState::Canceled => StateName::Canceled,
            },
            progress: job.progress,
            error: job.error_code.as_ref().map(|code| JobFailure {
                code: code.clone(),
                message: job.error_message.clone().unwrap_or_default(),
            }),
            file_name: job.file_name.clone(),
            source,
            url,
            bitrate: job.bitrate_kbps,
            vbr: job.vbr_quality,
            attempt: job.attempt,
            created_at: time(job.created_at_ms),
            updated_at: time(job.updated_at_ms),
            finished_at: job.finished_at_ms.map(time),
            webhook_url: job.webhook_url.clone(),
            webhook: job.webhook.as_deref().map(DeliveryJson::from),
            mp3_bytes: job.produced.as_ref().map(|p| p.mp3_bytes),
            duration_seconds: job.produced.as_ref().map(|p| p.duration_ms as f64 / 1000.0),
            warnings: job.produced.as_ref().and_then(|p| p.warnings.clone()),
            links: JobLinks {
                this: format!("/v1/jobs/{}", job.id),
                mp3: format!("/v1/jobs/{}/mp3", job.id),
            },
        }
    }
}

/// One event, as the `data` of a Server-Sent Event and the body of a webhook call.
#[derive(Serialize, ToSchema)]
#[schema(as = JobEvent)]
pub struct EventJson {
    /// The event's id (also the SSE `id`): send it back as `Last-Event-ID` to resume.
    id: String,
    /// `job.created`, `job.progress`, `job.finished`, `job.failed`, `job.canceled` or
    /// `job.deleted` (also the SSE `event`).
    #[serde(rename = "type")]
    kind: String,
    /// When it happened (RFC 3339).
    #[schema(format = DateTime)]
    created_at: String,
    /// The job after the change.
    job: JobJson,
}

impl EventJson {
    fn new(id: &str, kind: &str, at_ms: i64, job: &Job) -> Self {
        EventJson {
            id: id.to_string(),
            kind: kind.to_string(),
            created_at: rfc3339(at_ms),
            job: JobJson::from(job),
        }
    }
}

/// The JSON of an event (an SSE event's data, and a webhook call's body).
pub fn event_body(id: &str, kind: &str, at_ms: i64, job: &Job) -> Vec<u8> {
    serde_json::to_vec(&EventJson::new(id, kind, at_ms, job)).unwrap_or_default()
}
