//! The gateway's one door to resumable uploads, wherever they are stored.
//!
//! An upload lives on the node that created it (its id names that node). Each call here
//! goes to this node's request actor when the upload is stored here, and over the mesh to
//! the storing node otherwise (`forwarded.rs`), with the same answers either way. A `PATCH`
//! body is written through an [`Appender`] here, or forwarded in pieces of at most
//! [`CHUNK`] bytes, at least every [`FLUSH_EVERY`] while bytes come.

use std::fmt::Display;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};

use super::appender::{AppendError, Appender, Opened, Written};
use super::forwarded::{FLUSH_EVERY, Forward, Sent};
use super::{UploadCall, UploadState};
use crate::actors::request::{JobError, RequestMsg, storage};
use crate::actors::{CALL_TIMEOUT, CallError, Role, ask};
use crate::auth::Principal;
use crate::cluster::RemoteError;
use crate::cluster::pieces::CHUNK;
use crate::config::Config;
use crate::store::{Files, JobId, NewUpload, Upload};

/// Why a resumable-upload call failed.
#[derive(Debug, thiserror::Error)]
pub enum ResumableError {
    /// The upload refused (or the job it became, or this node's store).
    #[error(transparent)]
    Append(#[from] AppendError),
    /// This node's request actor did not answer.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The node storing the upload did not answer.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl From<JobError> for ResumableError {
    fn from(e: JobError) -> Self {
        ResumableError::Append(e.into())
    }
}

/// A `PATCH` (or a creation's first bytes): where it starts, and what its headers promise.
pub struct Append {
    /// `Upload-Offset`.
    pub offset: u64,
    /// `Upload-Checksum`'s sha256 digest.
    pub checksum: Option<Vec<u8>>,
    /// `Content-Length`.
    pub declared: Option<u64>,
}

/// Resumable uploads on this node and the others.
#[derive(Clone)]
pub struct ResumableClient {
    config: Arc<Config>,
}

/// Asks this node's request actor an [`UploadCall`].
async fn call<T: Send + 'static>(
    make: impl FnOnce(ractor::RpcReplyPort<Result<T, JobError>>) -> UploadCall,
) -> Result<T, ResumableError> {
    Ok(ask(Role::Request, |reply| RequestMsg::Upload(make(reply)), CALL_TIMEOUT).await??)
}

impl ResumableClient {
    /// Uploads for this node (named in `config`).
    pub fn new(config: Arc<Config>) -> Self {
        ResumableClient { config }
    }

    /// Whether upload `id` is stored on another node.
    fn elsewhere(&self, id: &JobId) -> bool {
        self.config.cluster.is_some() && id.owner() != self.config.node_name
    }

    /// Creates an upload here (with an Idempotency-Key already used: the earlier upload,
    /// `false`).
    pub async fn create(&self, upload: NewUpload) -> Result<(Upload, bool), ResumableError> {
        call(|reply| UploadCall::Create { upload, reply }).await
    }

    /// Where upload `id` stands (tus `HEAD`).
    pub async fn state(&self, id: JobId, who: Principal) -> Result<UploadState, ResumableError> {
        if self.elsewhere(&id) {
            return Ok(Forward::new(id.owner(), &id, &who).state().await??);
        }
        call(|reply| UploadCall::State { id, who, reply }).await
    }

    /// Deletes upload `id` (tus `DELETE`).
    pub async fn delete(&self, id: JobId, who: Principal) -> Result<(), ResumableError> {
        if self.elsewhere(&id) {
            return Ok(Forward::new(id.owner(), &id, &who).delete().await??);
        }
        call(|reply| UploadCall::Delete { id, who, reply }).await
    }

    /// Appends `body` to upload `id` (tus `PATCH`).
    pub async fn append<S, B, E>(
        &self,
        id: JobId,
        who: Principal,
        at: Append,
        body: S,
    ) -> Result<Written, ResumableError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: Display,
    {
        if self.elsewhere(&id) {
            return write_there(Forward::new(id.owner(), &id, &who), at, body).await;
        }
        let upload = call(|reply| UploadCall::Get { id, who, reply }).await?;
        self.write_here(upload, at, body).await
    }

    /// Appends `body` to `upload`, stored on this node.
    pub async fn write_here<S, B, E>(&self, upload: Upload, at: Append, mut body: S) -> Result<Written, ResumableError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: Display,
    {
        // Creations reserve what they announce; the volume may still have filled since (other
        // files, MP3s): no chunk takes it under its reserve.
        if let Some(n) = at.declared.filter(|n| *n > 0) {
            storage::room_for(&self.config, n).await?;
        }
        let files = Files::at(&self.config.data_dir);
        let mut appender = match Appender::open(&files, upload, at.offset, at.checksum, at.declared).await? {
            Opened::Writing(appender) => appender,
            Opened::Complete(w) => return Ok(w),
        };
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            let pushed = match chunk {
                Ok(chunk) => appender.push(chunk.as_ref()).await,
                Err(e) => Err(AppendError::Broken(e.to_string())),
            };
            if let Err(e) = pushed {
                failure = Some(e);
                break;
            }
        }
        Ok(appender.finish(failure).await?)
    }
}

/// Forwards `body` to the node storing the upload, a piece at a time (at least every
/// [`FLUSH_EVERY`] while bytes come, so that node's session never goes idle).
async fn write_there<S, B, E>(forward: Forward, at: Append, mut body: S) -> Result<Written, ResumableError>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: Display,
{
    let mut patch = forward.patch(at.offset, at.checksum, at.declared);
    // The first, empty piece checks the offset before any byte is read, as here.
    if let Sent::Done(answer) = patch.send(Vec::new(), false, None).await? {
        return Ok(answer?);
    }
    let mut buffer: Vec<u8> = Vec::with_capacity(CHUNK as usize);
    loop {
        let (piece, last, broken) = if buffer.len() >= CHUNK as usize {
            let rest = buffer.split_off(CHUNK as usize);
            (std::mem::replace(&mut buffer, rest), false, None)
        } else {
            match tokio::time::timeout(FLUSH_EVERY, body.next()).await {
                Err(_) => (std::mem::take(&mut buffer), false, None),
                Ok(Some(Ok(chunk))) => {
                    buffer.extend_from_slice(chunk.as_ref());
                    continue;
                }
                Ok(Some(Err(e))) => (std::mem::take(&mut buffer), true, Some(e.to_string())),
                Ok(None) => (std::mem::take(&mut buffer), true, None),
            }
        };
        match patch.send(piece, last, broken).await? {
            Sent::Done(answer) => return Ok(answer?),
            Sent::More if last => {
                let lost = std::io::Error::other("the upload's node did not end the upload");
                return Err(JobError::Io(lost).into());
            }
            Sent::More => {}
        }
    }
}
