//! Users: email, argon2id hash, admin flag.

use rusqlite::{OptionalExtension, params};

use super::{Result, Store, now_ms};

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Lower-case email, the key.
    pub email: String,
    /// PHC string of the password hash.
    pub password_hash: String,
    /// May create users and see all jobs.
    pub is_admin: bool,
    /// Last change (ms since the epoch): newer wins when replicas merge.
    pub updated_at_ms: i64,
}

impl Store {
    /// Creates or replaces a user. Returns `true` if it was new.
    pub fn put_user(&mut self, email: &str, password_hash: &str, is_admin: bool) -> Result<bool> {
        let now = now_ms();
        self.write(|tx| {
            let existed: bool = tx
                .query_row("SELECT 1 FROM users WHERE email = ?1", [email], |_| Ok(()))
                .optional()?
                .is_some();
            tx.execute(
                "INSERT INTO users (email, password_hash, is_admin, updated_at_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (email) DO UPDATE SET password_hash = ?2, is_admin = ?3, updated_at_ms = ?4",
                params![email, password_hash, is_admin, now],
            )?;
            Ok(!existed)
        })
    }

    /// Creates a user only if the email is free. Returns `false` if it was taken.
    pub fn add_user(&mut self, email: &str, password_hash: &str, is_admin: bool) -> Result<bool> {
        let now = now_ms();
        self.write(|tx| {
            let added = tx.execute(
                "INSERT INTO users (email, password_hash, is_admin, updated_at_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (email) DO NOTHING",
                params![email, password_hash, is_admin, now],
            )?;
            Ok(added == 1)
        })
    }

    /// The user with this email.
    pub fn user(&self, email: &str) -> Result<Option<User>> {
        Ok(self
            .conn
            .query_row(
                "SELECT email, password_hash, is_admin, updated_at_ms FROM users WHERE email = ?1",
                [email],
                |r| {
                    Ok(User {
                        email: r.get(0)?,
                        password_hash: r.get(1)?,
                        is_admin: r.get(2)?,
                        updated_at_ms: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Applies a user from another node if it is newer than ours (last writer wins).
    /// Returns `true` if it changed anything.
    pub fn merge_user(&mut self, user: &User) -> Result<bool> {
        self.write(|tx| {
            let changed = tx.execute(
                "INSERT INTO users (email, password_hash, is_admin, updated_at_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (email) DO UPDATE SET password_hash = ?2, is_admin = ?3, updated_at_ms = ?4 \
                 WHERE excluded.updated_at_ms > users.updated_at_ms",
                params![user.email, user.password_hash, user.is_admin, user.updated_at_ms],
            )?;
            Ok(changed == 1)
        })
    }

    /// Users changed after `since_ms` (all with 0), oldest change first.
    pub fn users_changed_since(&self, since_ms: i64) -> Result<Vec<User>> {
        let mut stmt = self.conn.prepare(
            "SELECT email, password_hash, is_admin, updated_at_ms FROM users WHERE updated_at_ms > ?1 ORDER BY updated_at_ms",
        )?;
        let rows = stmt.query_map([since_ms], |r| {
            Ok(User {
                email: r.get(0)?,
                password_hash: r.get(1)?,
                is_admin: r.get(2)?,
                updated_at_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many users exist.
    pub fn user_count(&self) -> Result<i64> {
        Ok(self.conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
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
        };
        assert!(store.merge_user(&bob).unwrap(), "unknown users are added");
        assert_eq!(store.users_changed_since(ours.updated_at_ms).unwrap(), vec![newer]);
        assert_eq!(store.users_changed_since(0).unwrap().len(), 2);
    }
}
