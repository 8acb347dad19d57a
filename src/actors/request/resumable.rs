//! Resumable (tus) uploads on the node that stores them: their rows (created, how much has
//! arrived, completed) and their end, when the upload becomes its job under the same id.
//! (Multipart uploads, one request each, become jobs directly: `RequestMsg::Submit`.)
//!
//! - [`client`]: the gateway's door ([`client::ResumableClient`]), here or on the storing node;
//! - [`appender`]: a `PATCH`'s bytes written straight into the upload's file, each fsynced
//!   offset reported here;
//! - [`forwarded`]: requests that reached another node, answered here over the mesh.

use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};

use super::{JobError, RequestMsg, RequestState};

pub mod appender;
pub mod client;
pub mod forwarded;
use crate::auth::Principal;
use crate::store::{Job, JobId, NewJob, NewUpload, Source, StoreError, Upload, now_ms};

/// Uploads expired per tick at most.
const EXPIRE_BATCH: u32 = 50;

/// What the gateway asks about an upload.
pub enum UploadCall {
    /// Create one (its empty file too). With an Idempotency-Key already used: the earlier
    /// upload (`false`).
    Create {
        /// The upload.
        upload: NewUpload,
        /// The stored upload and whether it is new.
        reply: RpcReplyPort<Result<(Upload, bool), JobError>>,
    },
    /// One, if `who` may see it.
    Get {
        /// The upload.
        id: JobId,
        /// The caller.
        who: Principal,
        /// The upload.
        reply: RpcReplyPort<Result<Upload, JobError>>,
    },
    /// Where it stands (tus `HEAD`), if `who` may see it; a complete upload becomes its
    /// job first.
    State {
        /// The upload.
        id: JobId,
        /// The caller.
        who: Principal,
        /// Where it stands.
        reply: RpcReplyPort<Result<UploadState, JobError>>,
    },
    /// The first `received` bytes are fsynced in its file; answers the new expiry (ms).
    Received {
        /// The upload.
        id: JobId,
        /// Bytes on disk.
        received: u64,
        /// Its new expiry.
        reply: RpcReplyPort<Result<i64, JobError>>,
    },
    /// All bytes arrived: it becomes its job (idempotent).
    Complete {
        /// The upload.
        id: JobId,
        /// The job.
        reply: RpcReplyPort<Result<Job, JobError>>,
    },
    /// Terminate it (tus `DELETE`): its file and row go; a job it became stays.
    Delete {
        /// The upload.
        id: JobId,
        /// The caller.
        who: Principal,
        /// Done.
        reply: RpcReplyPort<Result<(), JobError>>,
    },
}

/// Asks this node's request actor an [`UploadCall`] (its being unreachable is an I/O error).
pub(super) async fn upload_call<T: Send + 'static>(
    make: impl FnOnce(RpcReplyPort<Result<T, JobError>>) -> UploadCall,
) -> Result<T, JobError> {
    super::jobs::request(|reply| RequestMsg::Upload(make(reply))).await
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadState {
    /// Bytes on disk and recorded.
    pub received: u64,
    /// Its total size.
    pub length: u64,
    /// When it expires (ms since the epoch).
    pub expires_ms: i64,
    /// The client's `Upload-Metadata`.
    pub metadata: String,
    /// The job it became, once complete.
    pub job: Option<JobId>,
}

impl RequestState {
    async fn stored_upload(&self, id: &JobId, who: Option<&Principal>) -> Result<Upload, JobError> {
        let key = id.clone();
        let upload = self.db.run(move |s| s.upload(&key)).await?.ok_or(JobError::NotFound)?;
        match who {
            Some(who) if !who.admin && !upload.new.owner_email.eq_ignore_ascii_case(&who.email) => {
                Err(JobError::NotFound)
            }
            _ => Ok(upload),
        }
    }

    /// Answers one [`UploadCall`].
    pub(super) async fn upload_call(
        &mut self,
        myself: &ActorRef<RequestMsg>,
        call: UploadCall,
    ) -> Result<(), ActorProcessingErr> {
        match call {
            UploadCall::Create { upload, reply } => {
                let answer = if self.draining.is_some() {
                    Err(JobError::Draining)
                } else {
                    let (files, reserve) = (self.files.clone(), self.config.min_free_bytes);
                    self.db
                        .run(move |s| {
                            // Creations are made one at a time here, so each sees what the
                            // ones before it announced: room for all of them, not each alone.
                            let earlier = match &upload.idempotency_key {
                                Some(key) => s.keyed_upload(&upload.owner_email, key)?,
                                None => None,
                            };
                            if earlier.is_none() {
                                let free = files.free_bytes().map_err(|e| StoreError::Worker(e.to_string()))?;
                                let announced = s.announced_upload_bytes()?;
                                if free < reserve.saturating_add(announced).saturating_add(upload.length) {
                                    tracing::warn!(free, announced, length = upload.length, reserve,
                                        "refusing a resumable upload: the volume cannot hold it and those announced before");
                                    return Ok(Err(JobError::NoSpace));
                                }
                            }
                            let (stored, new) = s.create_upload(&upload)?;
                            if new {
                                // An empty file now, so the first PATCH only appends.
                                let path = files.upload(&stored.new.id);
                                std::fs::OpenOptions::new()
                                    .create(true)
                                    .append(true)
                                    .open(&path)
                                    .and_then(|f| f.sync_all())
                                    .map_err(|e| StoreError::Worker(format!("cannot create the upload's file: {e}")))?;
                            }
                            Ok(Ok((stored, new)))
                        })
                        .await
                        .map_err(JobError::from)
                        .and_then(|created| created)
                };
                let _ = reply.send(answer);
            }
            UploadCall::Get { id, who, reply } => {
                let _ = reply.send(self.stored_upload(&id, Some(&who)).await);
            }
            UploadCall::State { id, who, reply } => {
                let answer = match self.stored_upload(&id, Some(&who)).await {
                    Ok(upload) => {
                        let job = if upload.received == upload.new.length {
                            self.complete_upload(myself, &id).await.map(|j| Some(j.id))
                        } else {
                            Ok(None)
                        };
                        job.map(|job| UploadState {
                            received: upload.received,
                            length: upload.new.length,
                            expires_ms: upload.new.expires_at_ms,
                            metadata: upload.new.metadata,
                            job,
                        })
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
            UploadCall::Received { id, received, reply } => {
                let expires = now_ms() + self.config.upload_expiry.as_millis() as i64;
                let answer = self
                    .db
                    .run(move |s| s.upload_received(&id, received, expires))
                    .await
                    .map_err(JobError::from)
                    // Deleted while the bytes were being written: the upload is gone (404).
                    .and_then(|kept| if kept { Ok(expires) } else { Err(JobError::NotFound) });
                let _ = reply.send(answer);
            }
            UploadCall::Complete { id, reply } => {
                let _ = reply.send(self.complete_upload(myself, &id).await);
            }
            UploadCall::Delete { id, who, reply } => {
                let answer = match self.stored_upload(&id, Some(&who)).await {
                    Ok(upload) => {
                        if !upload.completed {
                            let _ = tokio::fs::remove_file(self.files.upload(&id)).await;
                        }
                        let key = id.clone();
                        self.db
                            .run(move |s| s.delete_upload(&key))
                            .await
                            .map(|_| ())
                            .map_err(JobError::from)
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }

    /// A complete upload becomes its job (the same id); asked again, answers that job.
    async fn complete_upload(&mut self, myself: &ActorRef<RequestMsg>, id: &JobId) -> Result<Job, JobError> {
        let upload = self.stored_upload(id, None).await?;
        if upload.received < upload.new.length {
            return Err(JobError::Conflict(format!(
                "the upload has {} of {} bytes",
                upload.received, upload.new.length
            )));
        }
        if upload.completed {
            return self.completed_job(&upload).await;
        }
        let u = upload.new;
        let job = NewJob {
            id: u.id.clone(),
            owner_email: u.owner_email.clone(),
            source: Source::Upload,
            file_name: u.file_name.clone(),
            bitrate_kbps: u.bitrate_kbps,
            vbr_quality: u.vbr_quality,
            idempotency_key: u.idempotency_key.clone(),
            webhook_url: u.webhook_url.clone(),
        };
        let staged = self.files.upload(&u.id);
        let (job, _) = self.accept(myself, job, Some(super::Input::Upload(staged))).await?;
        Ok(job)
    }

    /// The job a completed upload became: under its id, or the earlier job of its
    /// Idempotency-Key.
    async fn completed_job(&self, upload: &Upload) -> Result<Job, JobError> {
        let (id, email, key) = (
            upload.new.id.clone(),
            upload.new.owner_email.clone(),
            upload.new.idempotency_key.clone(),
        );
        let found = self
            .db
            .run(move |s| match s.job(&id)? {
                Some(job) => Ok(Some(job)),
                None => match key {
                    Some(key) => s.keyed_job(&email, &key),
                    None => Ok(None),
                },
            })
            .await?;
        found.ok_or(JobError::NotFound)
    }

    /// Deletes unfinished uploads past their expiry, and those of removed users (files
    /// first), a batch of each per tick.
    pub(super) async fn expire_uploads(&mut self) {
        for (why, found) in [
            (
                "an expired",
                self.db.run(|s| s.expired_uploads(now_ms(), EXPIRE_BATCH)).await,
            ),
            (
                "a removed user's",
                self.db.run(|s| s.uploads_of_removed_users(EXPIRE_BATCH)).await,
            ),
        ] {
            let ids = match found {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for {why} uploads (unfinished)");
                    continue;
                }
            };
            for id in ids {
                let _ = tokio::fs::remove_file(self.files.upload(&id)).await;
                let key = id.clone();
                match self.db.run(move |s| s.delete_upload(&key)).await {
                    Ok(_) => tracing::info!(upload_id = %id, "deleted {why} unfinished upload"),
                    Err(e) => tracing::warn!(upload_id = %id, error = %e, "cannot delete {why} upload"),
                }
            }
        }
    }
}
