//! Users: email, argon2id hash, admin flag, token generation; removed users stay as
//! tombstones (`removed`, no password).
//!
//! This table mirrors the users of the replicated metadata (`meta/users.rs`, which decides
//! every change; [`Store::mirror_user`]). The few changes made here directly (`mp4tomp3
//! user add|remove|set`, the first admin) are queued for the metadata in the same breath
//! ([`Store::queue_user_op`]) and replaced by its answer once committed.

use rusqlite::{OptionalExtension, Row, params};

use super::{Quota, Result, Store, now_ms};

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// Lower-case email, the key.
    pub email: String,
    /// PHC string of the password hash (empty once removed).
    pub password_hash: String,
    /// May create users and see all jobs.
    pub is_admin: bool,
    /// Last change (ms since the epoch, by the proposer's clock): only an import from the
    /// version before compares it.
    pub updated_at_ms: i64,
    /// Tokens carry the generation they were issued under; a password change or removal
    /// bumps it, and older tokens stop working.
    pub token_gen: i64,
    /// Removed: a tombstone.
    pub removed: bool,
    /// Webhook settings as stored: default URL, events (comma-separated), signing secret.
    pub webhook: [Option<String>; 3],
    /// Limits set for this user (unset: the configured defaults).
    pub quota: Quota,
    /// Signed-out sessions whose tokens have not expired yet: a JSON array of
    /// `[sid, expires_at_ms]` (empty: none).
    pub revoked_sessions: String,
}

impl User {
    /// Whether the session `sid` was signed out.
    pub fn signed_out(&self, sid: &str) -> bool {
        !sid.is_empty() && revoked(&self.revoked_sessions).iter().any(|(s, _)| s == sid)
    }
}

/// The signed-out sessions of a user's `revoked_sessions` column.
fn revoked(json: &str) -> Vec<(String, i64)> {
    serde_json::from_str(json).unwrap_or_default()
}

const COLUMNS: &str = "email, password_hash, is_admin, updated_at_ms, token_gen, removed, webhook_url, \
     webhook_events, webhook_secret, max_active, max_jobs_per_day, max_stored_bytes, revoked_sessions";

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        email: r.get(0)?,
        password_hash: r.get(1)?,
        is_admin: r.get(2)?,
        updated_at_ms: r.get(3)?,
        token_gen: r.get(4)?,
        removed: r.get(5)?,
        webhook: [r.get(6)?, r.get(7)?, r.get(8)?],
        quota: Quota {
            max_active: r.get(9)?,
            max_jobs_per_day: r.get(10)?,
            max_stored_bytes: r.get(11)?,
        },
        revoked_sessions: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
    })
}

/// Writes `user` into the mirror table (see [`Store::mirror_user`]).
fn mirror(tx: &rusqlite::Transaction<'_>, user: &User) -> Result<bool> {
    let changed = tx.execute(
        "INSERT INTO users (email, password_hash, is_admin, updated_at_ms, token_gen, removed, \
         webhook_url, webhook_events, webhook_secret, max_active, max_jobs_per_day, max_stored_bytes, \
         revoked_sessions) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
         ON CONFLICT (email) DO UPDATE SET password_hash = ?2, is_admin = ?3, updated_at_ms = ?4, \
         token_gen = ?5, removed = ?6, webhook_url = ?7, webhook_events = ?8, \
         webhook_secret = ?9, max_active = ?10, max_jobs_per_day = ?11, max_stored_bytes = ?12, \
         revoked_sessions = ?13 \
         WHERE (users.password_hash, users.is_admin, users.token_gen, users.removed, \
           coalesce(users.webhook_url, ''), coalesce(users.webhook_events, ''), coalesce(users.webhook_secret, ''), \
           coalesce(users.max_active, -1), coalesce(users.max_jobs_per_day, -1), coalesce(users.max_stored_bytes, -1), \
           coalesce(users.revoked_sessions, '')) IS NOT \
           (?2, ?3, ?5, ?6, coalesce(?7, ''), coalesce(?8, ''), coalesce(?9, ''), coalesce(?10, -1), \
           coalesce(?11, -1), coalesce(?12, -1), coalesce(?13, ''))",
        params![
            user.email,
            user.password_hash,
            user.is_admin,
            user.updated_at_ms,
            user.token_gen,
            user.removed,
            user.webhook[0],
            user.webhook[1],
            user.webhook[2],
            user.quota.max_active,
            user.quota.max_jobs_per_day,
            user.quota.max_stored_bytes,
            (!user.revoked_sessions.is_empty()).then_some(user.revoked_sessions.as_str())
        ],
    )?;
    Ok(changed == 1)
}

impl Store {
    /// Creates or replaces a user (a replaced password revokes the user's tokens). Returns
    /// `true` if it was new (or removed before).
    pub fn put_user(&mut self, email: &str, password_hash: &str, is_admin: bool) -> Result<bool> {
        let now = now_ms();
        self.write(|tx| {
            let existed: bool = tx
                .query_row("SELECT 1 FROM users WHERE email = ?1 AND removed = 0", [email], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            tx.execute(
                "INSERT INTO users (email, password_hash, is_admin, updated_at_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (email) DO UPDATE SET password_hash = ?2, is_admin = ?3, \
                 updated_at_ms = max(?4, users.updated_at_ms + 1), token_gen = users.token_gen + 1, removed = 0",
                params![email, password_hash, is_admin, now],
            )?;
            Ok(!existed)
        })
    }

    /// Creates a user only if the email is free (a removed user's email is). Returns
    /// `false` if it was taken.
    pub fn add_user(&mut self, email: &str, password_hash: &str, is_admin: bool) -> Result<bool> {
        let now = now_ms();
        self.write(|tx| {
            let added = tx.execute(
                "INSERT INTO users (email, password_hash, is_admin, updated_at_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (email) DO UPDATE SET password_hash = ?2, is_admin = ?3, \
                 updated_at_ms = max(?4, users.updated_at_ms + 1), token_gen = users.token_gen + 1, removed = 0 \
                 WHERE users.removed = 1",
                params![email, password_hash, is_admin, now],
            )?;
            Ok(added == 1)
        })
    }

    /// Removes a user: a tombstone without password, its token generation bumped. Returns
    /// `false` if there was no such (live) user.
    pub fn remove_user(&mut self, email: &str) -> Result<bool> {
        let now = now_ms();
        self.write(|tx| {
            let removed = tx.execute(
                "UPDATE users SET removed = 1, password_hash = '', is_admin = 0, token_gen = token_gen + 1, \
                 webhook_url = NULL, webhook_events = NULL, webhook_secret = NULL, max_active = NULL, max_jobs_per_day = NULL, max_stored_bytes = NULL, updated_at_ms = max(?2, updated_at_ms + 1) WHERE email = ?1 AND removed = 0",
                params![email, now],
            )?;
            Ok(removed == 1)
        })
    }

    /// Sets a live user's limits (unset ones: the defaults). Returns `false` if there is
    /// no such (live) user.
    pub fn set_quota(&mut self, email: &str, quota: &Quota) -> Result<bool> {
        let now = now_ms();
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE users SET max_active = ?2, max_jobs_per_day = ?3, max_stored_bytes = ?4, \
                 updated_at_ms = max(?5, updated_at_ms + 1) WHERE email = ?1 AND removed = 0",
                params![
                    email,
                    quota.max_active,
                    quota.max_jobs_per_day,
                    quota.max_stored_bytes,
                    now
                ],
            )?;
            Ok(changed == 1)
        })
    }

    /// Every live user, by email.
    pub fn users(&self) -> Result<Vec<User>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM users WHERE removed = 0 ORDER BY email"))?;
        let rows = stmt.query_map([], user_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The live user with this email.
    pub fn user(&self, email: &str) -> Result<Option<User>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM users WHERE email = ?1 AND removed = 0"),
                [email],
                user_row,
            )
            .optional()?)
    }

    /// Writes `user` as the replicated metadata has it (tombstones included): this table
    /// mirrors it. Returns `true` if it changed anything.
    pub fn mirror_user(&mut self, user: &User) -> Result<bool> {
        self.write(|tx| mirror(tx, user))
    }

    /// Queues change `op` (JSON; `None`: import the user as this table has it) of user
    /// `email` for the replicated metadata: the running node (or the next start) commits it.
    pub fn queue_user_op(&mut self, email: &str, op: Option<&str>) -> Result<i64> {
        self.write(|tx| {
            tx.execute("INSERT INTO user_ops (email, op) VALUES (?1, ?2)", params![email, op])?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Up to `limit` queued user changes, oldest first: `(id, email, op)`.
    pub fn user_ops(&self, limit: u32) -> Result<Vec<(i64, String, Option<String>)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, email, op FROM user_ops ORDER BY id LIMIT ?1")?;
        let rows = stmt.query_map([limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether queued user change `id` is still waiting.
    pub fn user_op_waiting(&self, id: i64) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM user_ops WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Queued user change `id` is committed: the user as it is now mirrored, the change
    /// dropped from the queue, in one transaction.
    pub fn user_op_done(&mut self, id: i64, now: Option<&User>) -> Result<()> {
        self.write(|tx| {
            if let Some(user) = now {
                mirror(tx, user)?;
            }
            tx.execute("DELETE FROM user_ops WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    /// The user with this email as stored here, tombstone or not.
    pub fn stored_user(&self, email: &str) -> Result<Option<User>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM users WHERE email = ?1"),
                [email],
                user_row,
            )
            .optional()?)
    }

    /// How many (live) users exist.
    pub fn user_count(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM users WHERE removed = 0", [], |r| r.get(0))?)
    }

    /// Ids of jobs here whose owner was removed (their files and rows are to go).
    pub fn jobs_of_removed_users(&self, limit: u32) -> Result<Vec<crate::store::JobId>> {
        self.ids(
            "SELECT j.id FROM jobs j JOIN users u ON u.email = j.owner_email WHERE u.removed = 1 LIMIT ?1",
            [limit],
        )
    }

    /// Up to `limit` unfinished resumable uploads of removed users (a user created again
    /// under the same email must not inherit them).
    pub fn uploads_of_removed_users(&self, limit: u32) -> Result<Vec<crate::store::JobId>> {
        self.ids(
            "SELECT up.id FROM uploads up JOIN users u ON u.email = up.owner_email \
             WHERE u.removed = 1 AND up.completed = 0 LIMIT ?1",
            [limit],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_added_once_replaced_by_put_and_found_case_insensitively() {
        let mut store = Store::open_in_memory().unwrap();
        assert!(store.add_user("ann@example.com", "h1", false).unwrap());
        assert!(!store.add_user("ANN@example.com", "h2", true).unwrap(), "taken");
        let ann = store.user("Ann@Example.com").unwrap().unwrap();
        assert_eq!((ann.password_hash.as_str(), ann.is_admin), ("h1", false));
        assert!(!store.put_user("ann@example.com", "h3", true).unwrap());
        let ann = store.user("ann@example.com").unwrap().unwrap();
        assert_eq!((ann.password_hash.as_str(), ann.is_admin), ("h3", true));
        assert_eq!(store.user_count().unwrap(), 1);
        assert_eq!(store.user("bob@example.com").unwrap(), None);
    }

    #[test]
    fn a_replaced_password_and_removal_bump_the_token_generation_and_leave_a_tombstone() {
        let mut store = Store::open_in_memory().unwrap();
        store.add_user("ann@example.com", "h1", false).unwrap();
        let first = store.user("ann@example.com").unwrap().unwrap();
        store.put_user("ann@example.com", "h2", false).unwrap();
        let changed = store.user("ann@example.com").unwrap().unwrap();
        assert_eq!(changed.token_gen, first.token_gen + 1, "a new password revokes tokens");
        assert!(changed.updated_at_ms > first.updated_at_ms);
        assert!(store.remove_user("ann@example.com").unwrap());
        assert!(!store.remove_user("ann@example.com").unwrap(), "removed once");
        assert_eq!(store.user("ann@example.com").unwrap(), None);
        assert_eq!(store.user_count().unwrap(), 0);
        let tombstone = store.stored_user("ann@example.com").unwrap().unwrap();
        assert!(tombstone.removed && tombstone.password_hash.is_empty());
        assert!(tombstone.token_gen > changed.token_gen);
        // The email is free again, with a newer generation than any old token.
        assert!(store.add_user("ann@example.com", "h3", false).unwrap());
        let again = store.user("ann@example.com").unwrap().unwrap();
        assert!(again.token_gen > tombstone.token_gen);
    }

    #[test]
    fn users_are_listed_live_only() {
        let mut store = Store::open_in_memory().unwrap();
        store.add_user("bob@example.com", "h", false).unwrap();
        store.add_user("ann@example.com", "h", false).unwrap();
        store.add_user("gone@example.com", "h", false).unwrap();
        store.remove_user("gone@example.com").unwrap();
        let emails: Vec<String> = store.users().unwrap().into_iter().map(|u| u.email).collect();
        assert_eq!(emails, ["ann@example.com", "bob@example.com"]);
    }

    #[test]
    fn the_mirror_takes_the_metadatas_user_says_when_it_changed_and_queues_ops_in_order() {
        let mut store = Store::open_in_memory().unwrap();
        store.add_user("ann@example.com", "h1", false).unwrap();
        let mut ann = store.stored_user("ann@example.com").unwrap().unwrap();
        ann.token_gen = 7;
        ann.quota.max_active = Some(2);
        assert!(store.mirror_user(&ann).unwrap(), "changed");
        assert!(!store.mirror_user(&ann).unwrap(), "the same again changes nothing");
        assert_eq!(store.user("ann@example.com").unwrap().unwrap(), ann);
        let gone = User {
            removed: true,
            password_hash: String::new(),
            token_gen: 8,
            ..ann.clone()
        };
        assert!(store.mirror_user(&gone).unwrap());
        assert!(store.user("ann@example.com").unwrap().is_none(), "a tombstone");
        assert_eq!(store.stored_user("ann@example.com").unwrap().unwrap(), gone);
        let a = store.queue_user_op("ann@example.com", Some("{}")).unwrap();
        let b = store.queue_user_op("bob@example.com", None).unwrap();
        let ops = store.user_ops(10).unwrap();
        assert_eq!(
            ops,
            vec![
                (a, "ann@example.com".into(), Some("{}".into())),
                (b, "bob@example.com".into(), None)
            ]
        );
        store.user_op_done(a, Some(&ann)).unwrap();
        assert!(!store.user_op_waiting(a).unwrap() && store.user_op_waiting(b).unwrap());
        assert_eq!(store.user("ann@example.com").unwrap().unwrap(), ann, "mirrored with it");
    }
}
