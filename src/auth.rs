//! Authentication without actors: password hashing, tokens, login throttling.
//!
//! The auth actor (`actors/auth.rs`) owns the state and calls into these; each part is
//! unit-tested here on its own.

pub mod jwt;
pub mod limiter;
pub mod password;

/// Who is calling: the verified subject of an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user's email (lower-case).
    pub email: String,
    /// Admins may create users and see every job.
    pub admin: bool,
}

/// Normalizes an email for storage and comparison; `None` if it is not an address.
pub fn normalize_email(email: &str) -> Option<String> {
    let email = email.trim();
    let parsed = email.parse::<lettre::Address>().ok()?;
    (email.len() <= 254).then(|| parsed.to_string().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_lowercased() {
        assert_eq!(normalize_email(" Ann@Example.COM ").as_deref(), Some("ann@example.com"));
        assert_eq!(normalize_email("not an address"), None);
        assert_eq!(normalize_email("a@"), None);
    }
}
