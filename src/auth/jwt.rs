//! Access tokens and signed download links: JWTs signed with HS256, and only HS256.
//!
//! Verification pins the algorithm (a token that says `alg: none` or RS256 is refused),
//! requires `iss`, `aud`, `sub` and `exp`, checks `nbf` when present, and allows 5 s of
//! clock skew; times are compared with the node's kept time ([`crate::clock`]), so a jump of
//! its wall clock neither expires good tokens nor revives old ones. Access tokens and
//! download links have different audiences, so one can never stand in for the other.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::Principal;
use crate::store::now_ms;

/// The `iss` of every token.
pub const ISSUER: &str = "mp4tomp3";
/// The `aud` of access tokens.
pub const ACCESS_AUDIENCE: &str = "mp4tomp3";
/// The `aud` of download links.
pub const LINK_AUDIENCE: &str = "mp4tomp3-download";
/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;

/// The signing key, shared by every node.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Signs a web session's CSRF token (derived from the same secret, for this use only).
    csrf: aws_lc_rs::hmac::Key,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<secret>)")
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// Anything else: bad signature, wrong algorithm or audience, missing claims, garbage.
    #[error("the token is not valid")]
    Invalid,
    /// Issued before its user's password changed, or its user was removed.
    #[error("the token was revoked (password changed or user removed); log in again")]
    Revoked,
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    iss: String,
    aud: String,
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: u64,
    #[serde(default)]
    adm: bool,
    /// The user's token generation when issued (tokens from before it changed are revoked).
    #[serde(default, rename = "tgen")]
    generation: i64,
    /// The session: signing out revokes the tokens of this session alone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    sid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

/// What a verified access token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Who it names.
    pub who: Principal,
    /// The token generation it was issued under (the caller compares it with the user's).
    pub generation: i64,
    /// Its session (empty for tokens from before sessions had ids).
    pub sid: String,
    /// When it expires (ms since the epoch).
    pub expires_at_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct LinkClaims {
    iss: String,
    aud: String,
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

/// Refuses a token past its `exp` or before its `nbf` (beyond the leeway), by this node's
/// kept time (jsonwebtoken would read the wall clock).
fn timely(exp: u64, nbf: Option<u64>) -> Result<(), TokenError> {
    let now = now_secs();
    if exp.saturating_add(LEEWAY_SECS) < now {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS)) {
        return Err(TokenError::Invalid);
    }
    Ok(())
}

fn now_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

impl Keys {
    /// Keys from the shared secret; `None` for an empty secret.
    pub fn new(secret: &[u8]) -> Option<Self> {
        if secret.is_empty() {
            return None;
        }
        let derived = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret),
            b"mp4tomp3 web session csrf",
        );
        Some(Keys {
            encoding: EncodingKey::from_secret(secret).ok()?,
            decoding: DecodingKey::from_secret(secret).ok()?,
            csrf: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, derived.as_ref()),
        })
    }

    /// The CSRF token of a web session (its access token): requests made with the session
    /// cookie must send it, which a page of another origin cannot read.
    pub fn csrf_token(&self, session: &str) -> String {
        hex::encode(aws_lc_rs::hmac::sign(&self.csrf, session.as_bytes()).as_ref())
    }

    /// Whether `given` is the CSRF token of `session` (compared in constant time).
    pub fn csrf_ok(&self, session: &str, given: &str) -> bool {
        hex::decode(given.trim()).is_ok_and(|tag| aws_lc_rs::hmac::verify(&self.csrf, session.as_bytes(), &tag).is_ok())
    }

    fn validation(audience: &str) -> Validation {
        let mut v = Validation::new(Algorithm::HS256);
        v.algorithms = vec![Algorithm::HS256];
        v.leeway = LEEWAY_SECS;
        // `exp` and `nbf` are checked by `timely`, against the kept time.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v
    }

    fn sign<T: Serialize>(&self, claims: &T) -> String {
        // HS256 over a serializable struct cannot fail; an empty token would be refused anyway.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding).unwrap_or_default()
    }

    /// An access token for `who`, valid for `ttl` (token generation 0).
    pub fn issue(&self, who: &Principal, ttl: Duration) -> String {
        self.issue_gen(who, 0, ttl)
    }

    /// An access token for `who` under their token generation `generation`, valid for `ttl`.
    pub fn issue_gen(&self, who: &Principal, generation: i64, ttl: Duration) -> String {
        let now = now_secs();
        self.sign(&AccessClaims {
            iss: ISSUER.into(),
            aud: ACCESS_AUDIENCE.into(),
            sub: who.email.clone(),
            exp: now + ttl.as_secs(),
            iat: now,
            adm: who.admin,
            generation,
            sid: new_sid(),
            nbf: None,
        })
    }

    /// Verifies an access token.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        self.verify_gen(token).map(|v| v.who)
    }

    /// Verifies an access token's signature and claims: who it names, the token generation
    /// and session it was issued under (the caller checks those against the user's state).
    pub fn verify_gen(&self, token: &str) -> Result<Verified, TokenError> {
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &Self::validation(ACCESS_AUDIENCE))
            .map_err(map_error)?;
        timely(data.claims.exp, data.claims.nbf)?;
        Ok(Verified {
            who: Principal {
                email: data.claims.sub,
                admin: data.claims.adm,
            },
            generation: data.claims.generation,
            sid: data.claims.sid,
            expires_at_ms: i64::try_from(data.claims.exp.saturating_mul(1000)).unwrap_or(i64::MAX),
        })
    }

    /// A download link token for job `job_id`, valid for `ttl`.
    pub fn sign_link(&self, job_id: &str, ttl: Duration) -> String {
        self.sign(&LinkClaims {
            iss: ISSUER.into(),
            aud: LINK_AUDIENCE.into(),
            sub: job_id.into(),
            exp: now_secs() + ttl.as_secs(),
            nbf: None,
        })
    }

    /// Verifies a download link token, returning its job id.
    pub fn verify_link(&self, token: &str) -> Result<String, TokenError> {
        let data = jsonwebtoken::decode::<LinkClaims>(token, &self.decoding, &Self::validation(LINK_AUDIENCE))
            .map_err(map_error)?;
        timely(data.claims.exp, data.claims.nbf)?;
        Ok(data.claims.sub)
    }
}

/// A new session id: 128 random bits, hex.
fn new_sid() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

fn map_error(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
        _ => TokenError::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    use super::*;

    fn keys() -> Keys {
        Keys::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn ann() -> Principal {
        Principal {
            email: "ann@example.com".into(),
            admin: false,
        }
    }

    /// A token with any header and claims, signed with our key (or not signed at all).
    fn forge(header: serde_json::Value, claims: serde_json::Value, sign: bool) -> String {
        let head = B64.encode(header.to_string());
        let body = B64.encode(claims.to_string());
        if !sign {
            return format!("{head}.{body}.");
        }
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef");
        let tag = aws_lc_rs::hmac::sign(&key, format!("{head}.{body}").as_bytes());
        format!("{head}.{body}.{}", B64.encode(tag.as_ref()))
    }

    fn claims(exp: u64) -> serde_json::Value {
        serde_json::json!({"iss": ISSUER, "aud": ACCESS_AUDIENCE, "sub": "ann@example.com", "exp": exp, "iat": 0})
    }

    #[test]
    fn each_token_has_its_own_session_and_says_when_it_expires() {
        let k = keys();
        let (a, b) = (
            k.verify_gen(&k.issue_gen(&ann(), 3, Duration::from_secs(60))).unwrap(),
            k.verify_gen(&k.issue_gen(&ann(), 3, Duration::from_secs(60))).unwrap(),
        );
        assert_eq!((a.who.clone(), a.generation), (ann(), 3));
        assert_eq!(a.sid.len(), 32, "128 bits, hex");
        assert_ne!(a.sid, b.sid);
        let left_ms = a.expires_at_ms - now_ms();
        assert!((55_000..=61_000).contains(&left_ms), "{left_ms}");
    }

    #[test]
    fn a_fresh_token_verifies_to_its_subject() {
        let token = keys().issue(&ann(), Duration::from_secs(60));
        assert_eq!(keys().verify(&token), Ok(ann()));
        // Our hand-made signature agrees with the library's, so the forgeries below are
        // refused for what they change, not for a broken signature.
        assert_eq!(
            keys().verify(&forge(
                serde_json::json!({"alg": "HS256", "typ": "JWT"}),
                claims(now_secs() + 60),
                true
            )),
            Ok(ann())
        );
    }

    #[test]
    fn expired_tokens_are_refused_beyond_the_leeway() {
        let past = now_secs() - LEEWAY_SECS - 2;
        let token = forge(serde_json::json!({"alg": "HS256"}), claims(past), true);
        assert_eq!(keys().verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn tokens_not_valid_yet_are_refused_beyond_the_leeway() {
        let header = serde_json::json!({"alg": "HS256"});
        let mut early = claims(now_secs() + 7200);
        early["nbf"] = (now_secs() + 3600).into();
        assert_eq!(
            keys().verify(&forge(header.clone(), early, true)),
            Err(TokenError::Invalid)
        );
        let mut started = claims(now_secs() + 7200);
        started["nbf"] = (now_secs() - 10).into();
        assert_eq!(keys().verify(&forge(header.clone(), started, true)), Ok(ann()));
        // Within the clock-skew leeway.
        let mut skewed = claims(now_secs() + 7200);
        skewed["nbf"] = (now_secs() + 2).into();
        assert_eq!(keys().verify(&forge(header, skewed, true)), Ok(ann()));
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let token = keys().issue(&ann(), Duration::from_secs(60));
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut claims: serde_json::Value = serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
        claims["adm"] = serde_json::Value::Bool(true);
        parts[1] = B64.encode(claims.to_string());
        assert_eq!(keys().verify(&parts.join(".")), Err(TokenError::Invalid));
        // Another key's signature.
        let other = Keys::new(b"another key that is 32 bytes long!!")
            .unwrap()
            .issue(&ann(), Duration::from_secs(60));
        assert_eq!(keys().verify(&other), Err(TokenError::Invalid));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let exp = now_secs() + 60;
        assert_eq!(
            keys().verify(&forge(serde_json::json!({"alg": "none"}), claims(exp), false)),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            keys().verify(&forge(serde_json::json!({"alg": "HS512"}), claims(exp), true)),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn wrong_audience_issuer_or_missing_claims_are_refused() {
        let exp = now_secs() + 60;
        let header = serde_json::json!({"alg": "HS256"});
        let mut wrong_aud = claims(exp);
        wrong_aud["aud"] = "someone-else".into();
        assert_eq!(
            keys().verify(&forge(header.clone(), wrong_aud, true)),
            Err(TokenError::Invalid)
        );
        let mut wrong_iss = claims(exp);
        wrong_iss["iss"] = "evil".into();
        assert_eq!(
            keys().verify(&forge(header.clone(), wrong_iss, true)),
            Err(TokenError::Invalid)
        );
        let mut no_sub = claims(exp);
        no_sub.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            keys().verify(&forge(header.clone(), no_sub, true)),
            Err(TokenError::Invalid)
        );
        let mut no_exp = claims(exp);
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(keys().verify(&forge(header, no_exp, true)), Err(TokenError::Invalid));
    }

    #[test]
    fn links_and_access_tokens_do_not_stand_in_for_each_other() {
        let link = keys().sign_link("node~00", Duration::from_secs(60));
        assert_eq!(keys().verify_link(&link).as_deref(), Ok("node~00"));
        assert_eq!(keys().verify(&link), Err(TokenError::Invalid));
        let access = keys().issue(&ann(), Duration::from_secs(60));
        assert_eq!(keys().verify_link(&access), Err(TokenError::Invalid));
    }
}
