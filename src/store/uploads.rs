//! Resumable (tus) uploads: each one's declared length, how much has arrived, and the
//! settings of the job it becomes. `received` only ever names bytes that are fsynced in
//! the upload's file (`Files::upload`); bytes past it are cut off before the next write,
//! so after a crash the file and the row agree again.

use rusqlite::{OptionalExtension, Row, params};

use super::{JobId, Result, Store, now_ms};

/// An upload as created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUpload {
    /// Its id (the id of the job it becomes).
    pub id: JobId,
    /// Who may write, read and delete it.
    pub owner_email: String,
    /// Its total size.
    pub length: u64,
    /// The client's `Upload-Metadata`, as sent (echoed by `HEAD`).
    pub metadata: String,
    /// The job's file name.
    pub file_name: String,
    /// The job's CBR bitrate.
    pub bitrate_kbps: Option<u16>,
    /// The job's VBR quality.
    pub vbr_quality: Option<u8>,
    /// The job's webhook URL.
    pub webhook_url: Option<String>,
    /// The client's `Idempotency-Key` (for the upload and then its job).
    pub idempotency_key: Option<String>,
    /// When it expires unless more bytes come (ms since the epoch).
    pub expires_at_ms: i64,
}

/// A stored upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// As created.
    pub new: NewUpload,
    /// Bytes received and fsynced.
    pub received: u64,
    /// Created at (ms since the epoch).
    pub created_at_ms: i64,
    /// Its job exists.
    pub completed: bool,
}

const COLUMNS: &str = "id, owner_email, length, received, metadata, file_name, bitrate_kbps, vbr_quality, \
     webhook_url, idempotency_key, created_at_ms, expires_at_ms, completed";

fn upload_row(r: &Row<'_>) -> rusqlite::Result<Option<Upload>> {
    let id: String = r.get(0)?;
    let Some(id) = JobId::parse(&id) else { return Ok(None) };
    Ok(Some(Upload {
        new: NewUpload {
            id,
            owner_email: r.get(1)?,
            length: r.get::<_, i64>(2)?.max(0) as u64,
            metadata: r.get(4)?,
            file_name: r.get(5)?,
            bitrate_kbps: r.get(6)?,
            vbr_quality: r.get(7)?,
            webhook_url: r.get(8)?,
            idempotency_key: r.get(9)?,
            expires_at_ms: r.get(11)?,
        },
        received: r.get::<_, i64>(3)?.max(0) as u64,
        created_at_ms: r.get(10)?,
        completed: r.get(12)?,
    }))
}

impl Store {
    /// The upload `owner` created with Idempotency-Key `key`, if any.
    pub fn keyed_upload(&self, owner: &str, key: &str) -> Result<Option<Upload>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM uploads WHERE owner_email = ?1 AND idempotency_key = ?2"),
                params![owner, key],
                upload_row,
            )
            .optional()?
            .flatten())
    }

    /// Bytes that unfinished uploads announced and have not sent yet: room they will take.
    pub fn announced_upload_bytes(&self) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT coalesce(sum(max(length - received, 0)), 0) FROM uploads WHERE completed = 0",
            [],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// Stores a new upload. With an idempotency key this user already used for an upload,
    /// stores nothing and returns that one (`false`: not new).
    pub fn create_upload(&mut self, u: &NewUpload) -> Result<(Upload, bool)> {
        let now = now_ms();
        if let Some(key) = &u.idempotency_key
            && let Some(earlier) = self.keyed_upload(&u.owner_email, key)?
        {
            return Ok((earlier, false));
        }
        self.write(|tx| {
            tx.execute(
                &format!("INSERT INTO uploads ({COLUMNS}) VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0)"),
                params![
                    u.id.as_str(),
                    u.owner_email,
                    u.length as i64,
                    u.metadata,
                    u.file_name,
                    u.bitrate_kbps,
                    u.vbr_quality,
                    u.webhook_url,
                    u.idempotency_key,
                    now,
                    u.expires_at_ms
                ],
            )?;
            super::quota::record_creation(tx, u.id.as_str(), &u.owner_email, now)?;
            Ok((
                Upload {
                    new: u.clone(),
                    received: 0,
                    created_at_ms: now,
                    completed: false,
                },
                true,
            ))
        })
    }

    /// The upload with this id.
    pub fn upload(&self, id: &JobId) -> Result<Option<Upload>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM uploads WHERE id = ?1"),
                [id.as_str()],
                upload_row,
            )
            .optional()?
            .flatten())
    }

    /// Records that the first `received` bytes are on disk (fsynced), and pushes the expiry
    /// to `expires_at_ms`; `false` when the unfinished upload is gone (deleted meanwhile).
    pub fn upload_received(&mut self, id: &JobId, received: u64, expires_at_ms: i64) -> Result<bool> {
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE uploads SET received = ?2, expires_at_ms = ?3 WHERE id = ?1 AND completed = 0",
                params![id.as_str(), received as i64, expires_at_ms],
            )?;
            Ok(updated == 1)
        })
    }

    /// Marks an upload as having become its job.
    pub fn upload_completed(&mut self, id: &JobId) -> Result<()> {
        self.write(|tx| {
            tx.execute("UPDATE uploads SET completed = 1 WHERE id = ?1", [id.as_str()])?;
            Ok(())
        })
    }

    /// Deletes an upload's row; `false` if there was none.
    pub fn delete_upload(&mut self, id: &JobId) -> Result<bool> {
        self.write(|tx| Ok(tx.execute("DELETE FROM uploads WHERE id = ?1", [id.as_str()])? == 1))
    }

    /// Unfinished uploads expired at `now_ms`, oldest first.
    pub fn expired_uploads(&self, now_ms: i64, limit: u32) -> Result<Vec<JobId>> {
        self.ids(
            "SELECT id FROM uploads WHERE completed = 0 AND expires_at_ms < ?1 ORDER BY expires_at_ms LIMIT ?2",
            params![now_ms, limit],
        )
    }

    /// Bytes held by unfinished uploads.
    pub fn staged_upload_bytes(&self) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT coalesce(sum(received), 0) FROM uploads WHERE completed = 0",
            [],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_upload(key: Option<&str>) -> NewUpload {
        NewUpload {
            id: JobId::new("node-0"),
            owner_email: "ann@example.com".into(),
            length: 1000,
            metadata: "filename YS5tcDQ=".into(),
            file_name: "a.mp4".into(),
            bitrate_kbps: Some(192),
            vbr_quality: None,
            webhook_url: None,
            idempotency_key: key.map(str::to_string),
            expires_at_ms: now_ms() + 60_000,
        }
    }

    #[test]
    fn uploads_record_progress_expire_and_dedupe_by_key() {
        let mut store = Store::open_in_memory().unwrap();
        let (first, new) = store.create_upload(&new_upload(Some("k"))).unwrap();
        assert!(new);
        let (again, new) = store.create_upload(&new_upload(Some("k"))).unwrap();
        assert!(!new);
        assert_eq!(again.new.id, first.new.id, "the same key is the same upload");
        let id = first.new.id.clone();
        assert!(store.upload_received(&id, 400, now_ms() + 60_000).unwrap());
        let got = store.upload(&id).unwrap().unwrap();
        assert_eq!(
            (got.received, got.new.bitrate_kbps, got.completed),
            (400, Some(192), false)
        );
        assert_eq!(store.staged_upload_bytes().unwrap(), 400);
        // An old one expires; a completed one never does.
        let (old, _) = store
            .create_upload(&NewUpload {
                expires_at_ms: 5,
                ..new_upload(None)
            })
            .unwrap();
        let (done, _) = store
            .create_upload(&NewUpload {
                expires_at_ms: 5,
                ..new_upload(None)
            })
            .unwrap();
        store.upload_completed(&done.new.id).unwrap();
        assert_eq!(store.expired_uploads(now_ms(), 10).unwrap(), vec![old.new.id.clone()]);
        assert!(!store.upload_received(&done.new.id, 1, now_ms()).unwrap());
        assert_eq!(
            store.upload(&done.new.id).unwrap().unwrap().received,
            0,
            "a completed upload is final"
        );
        assert!(store.delete_upload(&old.new.id).unwrap());
        assert_eq!(store.upload(&old.new.id).unwrap(), None);
        // Bytes that land after a DELETE: the PATCH learns the upload is gone (404).
        assert!(!store.upload_received(&old.new.id, 10, now_ms()).unwrap());
    }
}
