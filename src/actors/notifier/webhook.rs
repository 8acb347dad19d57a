//! Webhook calls: signing secrets, the signature, and one delivery attempt.
//!
//! A call is `POST` of the event as JSON (`{"id", "type", "created_at", "job"}`, the same
//! shape as a `/v1/events` event) with `Mp4tomp3-Signature: t=UNIX,v1=HEX`, where HEX is
//! HMAC-SHA256 keyed with the user's signing secret (the whole `whsec_…` string as UTF-8)
//! over `"{t}.{body}"`. Receivers check the HMAC and that `t` is recent, and dedupe by `id`
//! (delivery is at least once). The address guard of URL imports applies at every attempt
//! (after DNS, pinned); redirects are not followed.

use std::time::Duration;

use aws_lc_rs::hmac;

use crate::fetch::{FetchError, Fetcher};
use crate::store::{Attempt, now_ms};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "Mp4tomp3-Signature";
/// How long an event is retried.
pub const RETRY_FOR: Duration = Duration::from_secs(24 * 3600);
/// The longest a whole call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh signing secret: `whsec_` and 32 random bytes in hex.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("whsec_{}", hex::encode(bytes)))
}

/// The signature header's value for `body` sent at `t` (Unix seconds).
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={t},v1={}", hex::encode(ctx.sign().as_ref()))
}

/// When to try again after `attempts` failed attempts of an event created at
/// `created_at_ms`: 5 s doubling up to an hour, until [`RETRY_FOR`] has passed (`None`).
pub fn retry_at(created_at_ms: i64, attempts: i64) -> Option<i64> {
    let next = now_ms() + super::retry::backoff(attempts).as_millis() as i64;
    (next <= created_at_ms + RETRY_FOR.as_millis() as i64).then_some(next)
}

/// One call of a delivery.
pub struct Call<'a> {
    /// The event's id and type.
    pub event: (&'a str, &'a str),
    /// The JSON body.
    pub body: Vec<u8>,
    /// The user's signing secret.
    pub secret: &'a str,
    /// When the event happened (retries stop [`RETRY_FOR`] after).
    pub created_at_ms: i64,
    /// Attempts made before this one.
    pub attempts_before: i64,
    /// The whole call's budget ([`CALL_TIMEOUT`], less for a receiver known to be slow).
    pub timeout: Duration,
}

/// One attempt: `POST body` to `url`, signed; what the answer means for the delivery.
pub async fn attempt(fetcher: &Fetcher, url: &str, call: Call<'_>) -> Attempt {
    let Call {
        event,
        body,
        secret,
        created_at_ms,
        attempts_before,
        timeout,
    } = call;
    let (event_id, event_type) = event;
    let t = now_ms() / 1000;
    let headers = [
        ("content-type", "application/json".to_string()),
        (SIGNATURE_HEADER, signature(secret, t, &body)),
        ("mp4tomp3-event-id", event_id.to_string()),
        ("mp4tomp3-event-type", event_type.to_string()),
    ];
    let retry = |status: Option<u16>, error: String| Attempt::Retry {
        status,
        error,
        retry_at_ms: retry_at(created_at_ms, attempts_before + 1),
    };
    match fetcher.post(url, &headers, body, timeout).await {
        Ok(status) if (200..300).contains(&status) => Attempt::Delivered { status },
        Ok(410) => Attempt::Gone,
        Ok(status @ (408 | 429 | 500..=599)) => retry(Some(status), format!("the receiver answered {status}")),
        Ok(status @ 300..=399) => Attempt::Refused {
            status: Some(status),
            error: format!("the receiver answered {status}; redirects are not followed"),
        },
        Ok(status) => Attempt::Refused {
            status: Some(status),
            error: format!("the receiver answered {status}"),
        },
        Err(e @ (FetchError::Forbidden(_) | FetchError::BadUrl(_))) => Attempt::Refused {
            status: None,
            error: e.to_string(),
        },
        Err(e) => retry(None, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body_in_hex() {
        // RFC 4231 test case 2 (key "Jefe"), with the message split as "t.body".
        let sig = signature("Jefe", 0, b"");
        assert!(sig.starts_with("t=0,v1="));
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let expected = hex::encode(hmac::sign(&key, b"what do ya want for nothing?").as_ref());
        assert_eq!(
            expected,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The header is over "t." + body exactly.
        let body = b"what do ya want for nothing?";
        let whole = hmac::sign(&key, b"1700000000.what do ya want for nothing?");
        assert_eq!(
            signature("Jefe", 1_700_000_000, body),
            format!("t=1700000000,v1={}", hex::encode(whole.as_ref()))
        );
    }

    #[test]
    fn secrets_are_fresh_and_recognisable() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_") && a.len() == 6 + 64);
    }

    #[test]
    fn retries_stop_after_a_day() {
        let now = now_ms();
        assert!(retry_at(now, 1).is_some_and(|t| t >= now + 5_000));
        assert_eq!(retry_at(now - RETRY_FOR.as_millis() as i64, 1), None);
    }
}
