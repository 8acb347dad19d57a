//! Users: email, argon2id hash, admin flag, token generation; removed users stay as
//! tombstones (`removed`, no password) so their removal replicates like any change.

use rusqlite::{OptionalExtension, Row, params};

use super::{Quota, Result, Store, now_ms};

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Lower-case email, the key.
    pub email: String,
    /// PHC string of the password hash (empty once removed).
    pub password_hash: String,
    /// May create users and see all jobs.
    pub is_admin: bool,
    /// Last change (ms since the epoch): newer wins when replicas merge.
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

    /// Replaces a live user's password and revokes their tokens. Returns the new token
    /// generation, or `None` if there is no such (live) user.
    pub fn set_password(&mut self, email: &str, password_hash: &str) -> Result<Option<i64>> {
        let now = now_ms();
        self.write(|tx| {
            Ok(tx
                .query_row(
                    "UPDATE users SET password_hash = ?2, token_gen = token_gen + 1, \
                     updated_at_ms = max(?3, updated_at_ms + 1) WHERE email = ?1 AND removed = 0 RETURNING token_gen",
                    params![email, password_hash, now],
                    |r| r.get(0),
                )
                .optional()?)
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

    /// Signs out session `sid` of `email`, whose tokens expire at `expires_at_ms` at the
    /// latest: they are refused until then (sessions past their expiry are forgotten).
    /// Returns `false` if there is no such (live) user.
    pub fn revoke_session(&mut self, email: &str, sid: &str, expires_at_ms: i64) -> Result<bool> {
        let now = now_ms();
        self.write(|tx| {
            let current: Option<Option<String>> = tx
                .query_row(
                    "SELECT revoked_sessions FROM users WHERE email = ?1 AND removed = 0",
                    [email],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(current) = current else {
                return Ok(false);
            };
            let mut sessions: Vec<(String, i64)> = revoked(current.as_deref().unwrap_or_default());
            sessions.retain(|(s, until)| *until > now && s != sid);
            sessions.push((sid.to_string(), expires_at_ms));
            let json = serde_json::to_string(&sessions).unwrap_or_default();
            tx.execute(
                "UPDATE users SET revoked_sessions = ?2, updated_at_ms = max(?3, updated_at_ms + 1) WHERE email = ?1",
                params![email, json, now],
            )?;
            Ok(true)
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

    /// Makes a live user an admin or not; their tokens (which carry the flag) stop working.
    /// Returns `false` if there is no such (live) user.
    pub fn set_admin(&mut self, email: &str, admin: bool) -> Result<bool> {
        let now = now_ms();
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE users SET is_admin = ?2, token_gen = token_gen + 1, \
                 updated_at_ms = max(?3, updated_at_ms + 1) WHERE email = ?1 AND removed = 0",
                params![email, admin, now],
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

    /// Applies a user from another node if it is newer than ours (last writer wins).
    /// Returns `true` if it changed anything.
    pub fn merge_user(&mut self, user: &User) -> Result<bool> {
        self.write(|tx| {
            let changed = tx.execute(
                "INSERT INTO users (email, password_hash, is_admin, updated_at_ms, token_gen, removed, \
                 webhook_url, webhook_events, webhook_secret, max_active, max_jobs_per_day, max_stored_bytes, \
                 revoked_sessions) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                 ON CONFLICT (email) DO UPDATE SET password_hash = ?2, is_admin = ?3, updated_at_ms = ?4, \
                 token_gen = max(?5, users.token_gen), removed = ?6, webhook_url = ?7, webhook_events = ?8, \
                 webhook_secret = ?9, max_active = ?10, max_jobs_per_day = ?11, max_stored_bytes = ?12, \
                 revoked_sessions = ?13 \
                 WHERE excluded.updated_at_ms > users.updated_at_ms",
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
        })
    }

    /// Users changed after `since_ms` (all with 0), tombstones included, oldest change first.
    pub fn users_changed_since(&self, since_ms: i64) -> Result<Vec<User>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM users WHERE updated_at_ms > ?1 ORDER BY updated_at_ms"
        ))?;
        let rows = stmt.query_map([since_ms], user_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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
    fn merging_keeps_the_newest_version_of_a_user() {
        let mut store = Store::open_in_memory().unwrap();
        store.add_user("ann@example.com", "h1", false).unwrap();
        let ours = store.user("ann@example.com").unwrap().unwrap();
        let older = User {
            password_hash: "old".into(),
            updated_at_ms: ours.updated_at_ms - 1,
            ..ours.clone()
        };
        assert!(!store.merge_user(&older).unwrap());
        let newer = User {
            password_hash: "new".into(),
            is_admin: true,
            updated_at_ms: ours.updated_at_ms + 1,
            ..ours.clone()
        };
        assert!(store.merge_user(&newer).unwrap());
        assert_eq!(store.user("ann@example.com").unwrap().unwrap(), newer);
        let bob = User {
            email: "bob@example.com".into(),
            password_hash: "b".into(),
            is_admin: false,
            updated_at_ms: 5,
            token_gen: 0,
            removed: false,
            webhook: [Some("https://hooks.example.org/b".into()), None, Some("whsec_b".into())],
            quota: Quota {
                max_active: Some(3),
                max_jobs_per_day: None,
                max_stored_bytes: Some(1 << 30),
            },
            revoked_sessions: r#"[["s1",9999999999999]]"#.into(),
        };
        assert!(store.merge_user(&bob).unwrap(), "unknown users are added");
        assert_eq!(
            store.user("bob@example.com").unwrap().as_ref(),
            Some(&bob),
            "with their webhook settings and limits"
        );
        assert_eq!(store.users_changed_since(ours.updated_at_ms).unwrap(), vec![newer]);
        assert_eq!(store.users_changed_since(0).unwrap().len(), 2);
    }

    #[test]
    fn password_changes_and_removal_bump_the_token_generation_and_removal_replicates() {
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
        let tombstone = store.users_changed_since(changed.updated_at_ms).unwrap();
        assert_eq!(tombstone.len(), 1);
        assert!(tombstone[0].removed && tombstone[0].password_hash.is_empty());
        assert!(tombstone[0].token_gen > changed.token_gen);
        // The tombstone replicates over the live copy another node still has.
        let mut other = Store::open_in_memory().unwrap();
        assert!(other.merge_user(&changed).unwrap());
        assert!(other.merge_user(&tombstone[0]).unwrap());
        assert_eq!(other.user("ann@example.com").unwrap(), None);
        // The email is free again, with a newer generation than any old token.
        assert!(store.add_user("ann@example.com", "h3", false).unwrap());
        let again = store.user("ann@example.com").unwrap().unwrap();
        assert!(again.token_gen > tombstone[0].token_gen);
    }

    #[test]
    fn a_signed_out_session_is_refused_until_it_expires_and_replicates() {
        let mut store = Store::open_in_memory().unwrap();
        store.add_user("ann@example.com", "h", false).unwrap();
        let before = store.user("ann@example.com").unwrap().unwrap();
        assert!(!before.signed_out("s1"));
        assert!(
            store
                .revoke_session("ann@example.com", "s1", now_ms() + 60_000)
                .unwrap()
        );
        // One already past its expiry is forgotten at the next sign-out.
        assert!(store.revoke_session("ann@example.com", "old", now_ms() - 1).unwrap());
        assert!(
            store
                .revoke_session("ann@example.com", "s2", now_ms() + 60_000)
                .unwrap()
        );
        let after = store.user("ann@example.com").unwrap().unwrap();
        assert!(after.signed_out("s1") && after.signed_out("s2"));
        assert!(!after.signed_out("old") && !after.signed_out("s3") && !after.signed_out(""));
        assert!(after.updated_at_ms > before.updated_at_ms, "a change that replicates");
        assert_eq!(after.token_gen, before.token_gen, "other sessions go on");
        assert!(!store.revoke_session("nobody@example.com", "s1", now_ms()).unwrap());
        let mut other = Store::open_in_memory().unwrap();
        assert!(other.merge_user(&after).unwrap());
        assert!(other.user("ann@example.com").unwrap().unwrap().signed_out("s1"));
    }

    #[test]
    fn the_admin_flag_changes_with_a_new_token_generation_and_users_are_listed_live_only() {
        let mut store = Store::open_in_memory().unwrap();
        store.add_user("bob@example.com", "h", false).unwrap();
        store.add_user("ann@example.com", "h", false).unwrap();
        store.add_user("gone@example.com", "h", false).unwrap();
        store.remove_user("gone@example.com").unwrap();
        let before = store.user("bob@example.com").unwrap().unwrap();
        assert!(store.set_admin("bob@example.com", true).unwrap());
        let after = store.user("bob@example.com").unwrap().unwrap();
        assert!(after.is_admin && after.token_gen == before.token_gen + 1);
        assert!(after.updated_at_ms > before.updated_at_ms, "it replicates");
        assert!(!store.set_admin("gone@example.com", true).unwrap());
        let emails: Vec<String> = store.users().unwrap().into_iter().map(|u| u.email).collect();
        assert_eq!(emails, ["ann@example.com", "bob@example.com"]);
    }
}
