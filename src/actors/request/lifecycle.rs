//! A job's life on its owner, as the request actor drives it: load (with the caller's
//! right to see it), accept (persist before answering), fetch, resume after a restart,
//! record a conversion's outcome for the current attempt only, fail.

use super::*;

/// A new job's input file.
pub(super) enum Input {
    /// A multipart upload staged in `tmp/` (deleted unless the job adopts it).
    Staged(StagedInput),
    /// A completed resumable upload's file (it stays with its upload unless adopted).
    Upload(PathBuf),
}

/// Job `id` from `db`, if `who` may see it (`None`: anyone); an expired job's id answers
/// [`JobError::Expired`] (to its owner). Reads only the database: callers run it off the
/// actor (a status read never waits behind another).
pub(super) async fn load(db: &Db, retention: Duration, id: &JobId, who: Option<&Principal>) -> Result<Job, JobError> {
    let key = id.clone();
    let (job, gone) = db
        .run(move |s| match s.job(&key)? {
            Some(job) => Ok((Some(job), None)),
            None => Ok((None, s.expired_job(&key)?)),
        })
        .await?;
    let Some(job) = job else {
        // An expired job's id stays recognisable (to its owner).
        return match (gone, who) {
            (Some(owner), Some(who)) if who.admin || owner.eq_ignore_ascii_case(&who.email) => Err(expired(retention)),
            (Some(_), None) => Err(expired(retention)),
            _ => Err(JobError::NotFound),
        };
    };
    match who {
        Some(who) if !RequestState::visible(&job, who) => Err(JobError::NotFound),
        _ => Ok(job),
    }
}

/// What an expired job's id answers.
fn expired(retention: Duration) -> JobError {
    JobError::Expired(humantime::format_duration(retention).to_string())
}

impl RequestState {
    pub(super) fn visible(job: &Job, who: &Principal) -> bool {
        who.admin || job.owner_email.eq_ignore_ascii_case(&who.email)
    }

    pub(super) async fn load(&self, id: &JobId, who: Option<&Principal>) -> Result<Job, JobError> {
        load(&self.db, self.config.retention, id, who).await
    }

    /// Tells subscribers (on every node) how one of this node's jobs changed.
    pub(super) fn announce(&self, kind: Kind, job: &Job) {
        self.events.publish(kind, job);
    }

    /// Takes up an unfinished job (just accepted, found in the store at start, or handed
    /// over): queued if its input is here, fetched if it is a URL import, failed if its
    /// upload is lost.
    pub(super) async fn resume(&mut self, myself: &ActorRef<RequestMsg>, job: &Job) -> Result<(), StoreError> {
        let has_input = tokio::fs::try_exists(self.files.input(&job.id)).await.unwrap_or(false);
        match (&job.source, has_input) {
            (Source::Url(_), false) => {
                let key = job.id.clone();
                let fetching = self
                    .db
                    .run(move |s| {
                        s.start(&key, JobState::Fetching)?;
                        s.job(&key)
                    })
                    .await?;
                if let Some(fetching) = &fetching {
                    self.announce(Kind::Progress, fetching);
                }
                self.start_fetch(myself, job);
            }
            (_, true) => self.queue.push_back(job.id.clone()),
            (Source::Upload, false) => {
                self.fail(&job.id, job.attempt, "io_error", "the uploaded file was lost")
                    .await?;
            }
        }
        Ok(())
    }

    /// Accepts a job (with its input file for uploads; a resumable upload's is marked
    /// completed in the same step). Answers the job as stored now, and whether it is new
    /// (`false`: an idempotent retry, whose input is dropped).
    pub(super) async fn accept(
        &mut self,
        myself: &ActorRef<RequestMsg>,
        job: NewJob,
        input: Option<Input>,
    ) -> Result<(Job, bool), JobError> {
        if self.draining.is_some() {
            // A staged upload is deleted as `input` drops; a resumable one stays with its
            // upload.
            return Err(JobError::Draining);
        }
        let from_upload = matches!(input, Some(Input::Upload(_)));
        let has_input = input.is_some();
        let files = self.files.clone();
        let result = self
            .db
            .run(move |s| {
                // The input goes into place before the row exists, so a stored job always
                // has its input; an idempotent retry's upload is dropped.
                let adopted = match input {
                    Some(Input::Staged(mut staged)) => staged.adopt(&files, &job.id),
                    Some(Input::Upload(path)) => files.adopt_input(&job.id, &path),
                    None => Ok(()),
                };
                adopted.map_err(|e| StoreError::Worker(e.to_string()))?;
                let (stored, new) = s.insert_job(&job)?;
                if !new && has_input {
                    let _ = files.remove_job(&job.id);
                }
                if from_upload {
                    s.upload_completed(&job.id)?;
                }
                Ok((stored, new))
            })
            .await;
        let (job, new) = result?;
        if !new {
            // Answer with the earlier job as stored now (its state may have moved on).
            return self.load(&job.id, None).await.map(|j| (j, new));
        }
        tracing::info!(job_id = %job.id, owner = %job.owner_email, "job accepted");
        self.announce(Kind::Created, &job);
        tell(Role::Notifier, NotifierMsg::Wake); // a job.created webhook may be due
        // Placed once the client has its answer (asking the mesh where there is room is no
        // part of accepting).
        let _ = myself.cast(RequestMsg::Dispatch);
        if has_input {
            // Its input was put in place with the row: queued, as stored.
            self.queue.push_back(job.id.clone());
            return Ok((job, new));
        }
        // The job is stored: a failure from here on is retried (the tick dispatches, a
        // restart resumes), so it is logged rather than answered.
        if let Err(e) = self.resume(myself, &job).await {
            tracing::warn!(job_id = %job.id, error = %e, "cannot start the job yet");
        }
        // Answer with the job as stored now (a URL import is fetching).
        self.load(&job.id, None).await.map(|j| (j, new))
    }

    pub(super) fn start_fetch(&mut self, myself: &ActorRef<RequestMsg>, job: &Job) {
        let Source::Url(url) = &job.source else { return };
        let (id, url, fetcher, files) = (job.id.clone(), url.clone(), self.fetcher.clone(), self.files.clone());
        let me = myself.clone();
        let task = tokio::spawn(async move {
            let staged = files.tmp_dir().join(format!("fetch-{id}"));
            let mut result = fetcher.download(&url, &staged).await.map(|_| ());
            if result.is_ok() {
                let (files, id, staged) = (files.clone(), id.clone(), staged.clone());
                result = tokio::task::spawn_blocking(move || files.adopt_input(&id, &staged))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    .map_err(FetchError::from);
            } else {
                let _ = tokio::fs::remove_file(&staged).await;
            }
            let _ = me.send_message(RequestMsg::Fetched { id, result });
        });
        self.fetching.insert(job.id.clone(), (job.attempt, task.abort_handle()));
    }

    /// Records how a conversion ended (from this node's converter or another node's).
    pub(super) async fn converted(
        &mut self,
        id: JobId,
        attempt: i64,
        outcome: Outcome,
    ) -> Result<(), ActorProcessingErr> {
        if self.current(&id, attempt)
            && let Some(Placement {
                remote: Some(remote), ..
            }) = self.running.remove(&id)
        {
            self.freed.insert(remote.node);
        }
        let key = id.clone();
        let finished = self
            .db
            .run(move |s| {
                let message = outcome.as_ref().err().map(Failure::message).unwrap_or_default();
                let ended = match &outcome {
                    Ok(produced) => Ok(produced),
                    Err(failure) => Err((failure.code(), message.as_str())),
                };
                s.finish(&key, attempt, ended)
            })
            .await;
        match finished {
            Ok(job) => {
                tracing::info!(job_id = %id, state = %job.state, "job finished");
                self.drop_input(&id).await;
                self.announce(Kind::of(job.state), &job);
                tell(Role::Notifier, NotifierMsg::Wake);
            }
            Err(StoreError::Conflict { state: job_state, .. }) => {
                tracing::info!(job_id = %id, attempt, %job_state, "stale conversion result refused");
                if job_state == JobState::Canceled {
                    self.remove_files(&id).await;
                }
            }
            Err(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => {} // deleted
            Err(e) => return Err(e.into()),
        }
        self.drained();
        Ok(())
    }

    pub(super) fn drained(&mut self) {
        if self.running.is_empty() {
            for reply in self.draining.iter_mut().flat_map(std::mem::take) {
                let _ = reply.send(0);
            }
        }
    }

    pub(super) async fn fail(&self, id: &JobId, attempt: i64, code: &str, message: &str) -> Result<(), StoreError> {
        let (key, code, message) = (id.clone(), code.to_string(), message.to_string());
        match self
            .db
            .run(move |s| s.finish(&key, attempt, Err((&code, &message))))
            .await
        {
            Ok(job) => {
                self.drop_input(id).await;
                self.announce(Kind::Failed, &job);
                tell(Role::Notifier, NotifierMsg::Wake);
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
