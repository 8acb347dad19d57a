//! Writing a tus `PATCH`'s bytes into an upload's file, on the node that stores it: from
//! this node's gateway (through `client.rs`) or, in pieces, from another node's gateway that the
//! request reached (`forwarded.rs`, the forwarded session). Both go through one [`Appender`],
//! so they answer alike.
//!
//! The offset a `PATCH` answers is fsynced and recorded before the answer, and every
//! [`SYNC_EVERY`] bytes on the way (without a checksum), so a client cut off (or a server
//! killed) resumes from the last recorded offset: bytes past it are cut off before the next
//! write. With `Upload-Checksum`, only a whole, verified body counts.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};

use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{UploadCall, upload_call};
use crate::actors::request::JobError;
use crate::store::{Files, Job, JobId, Upload};

/// Bytes written between fsyncs (and recorded offsets) within one `PATCH`.
const SYNC_EVERY: u64 = 16 << 20;

/// Why bytes were not appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// `Upload-Offset` is not where the upload is.
    #[error("the upload is at offset {at}, not {asked}")]
    Offset {
        /// Where it is.
        at: u64,
        /// Where the client said.
        asked: u64,
    },
    /// The body goes past `Upload-Length`.
    #[error("the body goes past Upload-Length ({0})")]
    TooLong(u64),
    /// Another request is writing this upload.
    #[error("another request is writing this upload")]
    Busy,
    /// The body's digest is not `Upload-Checksum`'s.
    #[error("the body's sha256 differs from Upload-Checksum; nothing of it was kept")]
    Checksum,
    /// The client's body broke off.
    #[error("the body broke off: {0}")]
    Broken(String),
    /// The data volume is full.
    #[error("this server is short of disk space")]
    Full,
    /// A forwarded `PATCH`'s session on the storing node is gone (timed out, or that node
    /// restarted): the client resumes from `HEAD`.
    #[error("the upload's node lost this request; ask HEAD where to go on")]
    Lost,
    /// The upload (or its job).
    #[error(transparent)]
    Job(#[from] JobError),
}

impl AppendError {
    fn io(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            AppendError::Full
        } else {
            AppendError::Job(JobError::Io(e))
        }
    }
}

/// Upload files being written now: one writer per upload.
static WRITING: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Mutex::default);

/// An upload's place in [`WRITING`], given back when dropped.
struct Slot(PathBuf);

impl Slot {
    fn take(path: PathBuf) -> Option<Slot> {
        let taken = WRITING.lock().unwrap_or_else(|p| p.into_inner()).insert(path.clone());
        // (A `Slot` made and dropped while the lock is held would deadlock in `drop`.)
        taken.then(|| Slot(path))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        WRITING.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.0);
    }
}

/// Where an upload stands after a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Bytes on disk and recorded.
    pub received: u64,
    /// Its expiry (ms since the epoch).
    pub expires_ms: i64,
    /// The job it became, once complete.
    pub job: Option<JobId>,
}

/// What a `PATCH` at an offset opens.
pub enum Opened {
    /// Nothing to write: the upload is complete.
    Complete(Written),
    /// Bytes go here.
    Writing(Box<Appender>),
}

/// One `PATCH`'s writer.
pub struct Appender {
    _slot: Slot,
    file: tokio::fs::File,
    upload: Upload,
    offset: u64,
    at: u64,
    synced: u64,
    expires_ms: i64,
    checksum: Option<(Vec<u8>, aws_lc_rs::digest::Context)>,
}

/// The job an upload became, if it is complete.
pub async fn job_of(upload: &Upload) -> Result<Option<Job>, JobError> {
    if upload.received < upload.new.length {
        return Ok(None);
    }
    let id = upload.new.id.clone();
    upload_call(|reply| UploadCall::Complete { id, reply }).await.map(Some)
}

impl Appender {
    /// Opens `upload` (already checked to be the caller's) for bytes from `offset`, which
    /// must be its recorded offset. `checksum`: the body's expected SHA-256; `declared`:
    /// the body's `Content-Length`, if sent.
    pub async fn open(
        files: &Files,
        upload: Upload,
        offset: u64,
        checksum: Option<Vec<u8>>,
        declared: Option<u64>,
    ) -> Result<Opened, AppendError> {
        if offset != upload.received {
            return Err(AppendError::Offset {
                at: upload.received,
                asked: offset,
            });
        }
        if upload.received == upload.new.length {
            let job = job_of(&upload).await?;
            return Ok(Opened::Complete(Written {
                received: upload.received,
                expires_ms: upload.new.expires_at_ms,
                job: job.map(|j| j.id),
            }));
        }
        if let Some(n) = declared
            && offset + n > upload.new.length
        {
            return Err(AppendError::TooLong(upload.new.length));
        }
        let path = files.upload(&upload.new.id);
        let slot = Slot::take(path.clone()).ok_or(AppendError::Busy)?;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .await
            .map_err(AppendError::io)?;
        // Bytes past the recorded offset were never confirmed: they go.
        file.set_len(offset).await.map_err(AppendError::io)?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(AppendError::io)?;
        let expires_ms = upload.new.expires_at_ms;
        Ok(Opened::Writing(Box::new(Appender {
            _slot: slot,
            file,
            upload,
            offset,
            at: offset,
            synced: offset,
            expires_ms,
            checksum: checksum.map(|c| (c, aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))),
        })))
    }

    /// Where the next byte goes.
    pub fn at(&self) -> u64 {
        self.at
    }

    /// Appends the next bytes of the body.
    pub async fn push(&mut self, chunk: &[u8]) -> Result<(), AppendError> {
        if self.at + chunk.len() as u64 > self.upload.new.length {
            return Err(AppendError::TooLong(self.upload.new.length));
        }
        self.file.write_all(chunk).await.map_err(AppendError::io)?;
        if let Some((_, d)) = self.checksum.as_mut() {
            d.update(chunk);
        }
        self.at += chunk.len() as u64;
        // Without a checksum, what arrived counts as it arrives (a cut-off client resumes
        // close to where it was); with one, only a whole, verified body does.
        if self.checksum.is_none() && self.at - self.synced >= SYNC_EVERY {
            self.record().await?;
        }
        Ok(())
    }

    /// Ends the body (`failure`: how it ended early): records what counts and answers
    /// where the upload stands, or the failure once what arrived before it is recorded.
    pub async fn finish(mut self, failure: Option<AppendError>) -> Result<Written, AppendError> {
        if let Some((expected, d)) = self.checksum.take() {
            let ok = failure.is_none() && d.finish().as_ref() == expected.as_slice();
            if !ok {
                let _ = self.file.set_len(self.offset).await;
                return Err(failure.unwrap_or(AppendError::Checksum));
            }
        }
        if self.at > self.synced
            && let Err(e) = self.record().await
        {
            return Err(failure.unwrap_or(e));
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        let (received, expires_ms) = (self.at, self.expires_ms);
        let job = if received == self.upload.new.length {
            let Appender { file, upload, .. } = self;
            drop(file);
            let done = Upload { received, ..upload };
            job_of(&done).await?.map(|j| j.id)
        } else {
            None
        };
        Ok(Written {
            received,
            expires_ms,
            job,
        })
    }

    /// Fsyncs the file and records the offset (and the new expiry).
    async fn record(&mut self) -> Result<(), AppendError> {
        self.file.flush().await.map_err(AppendError::io)?;
        self.file.sync_data().await.map_err(AppendError::io)?;
        let (id, received) = (self.upload.new.id.clone(), self.at);
        self.expires_ms = upload_call(|reply| UploadCall::Received { id, received, reply }).await?;
        self.synced = self.at;
        Ok(())
    }
}
