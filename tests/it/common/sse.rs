//! A Server-Sent Events reader for the tests (`text/event-stream` as the WHATWG spec
//! parses it: blocks separated by a blank line, `field: value` lines, `:` comments).

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value;

/// One event.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: String,
    pub event: String,
    pub data: Value,
}

impl Ev {
    /// The job's state, progress and attempt.
    pub fn job(&self) -> (&str, f64, i64) {
        let job = &self.data["job"];
        (
            job["state"].as_str().unwrap_or(""),
            job["progress"].as_f64().unwrap_or(-1.0),
            job["attempt"].as_i64().unwrap_or(-1),
        )
    }

    pub fn job_id(&self) -> &str {
        self.data["job"]["id"].as_str().unwrap_or("")
    }
}

/// An open stream.
pub struct Sse {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
    /// Comment lines seen (heartbeats).
    pub comments: Vec<String>,
}

impl Sse {
    /// `GET url` with the token, and `Last-Event-ID` if given.
    pub async fn open(http: &reqwest::Client, url: &str, token: &str, last: Option<&str>) -> Sse {
        let mut req = http.get(url).bearer_auth(token).header("accept", "text/event-stream");
        if let Some(last) = last {
            req = req.header("last-event-id", last);
        }
        let r = req.send().await.unwrap();
        Sse {
            status: r.status(),
            headers: r.headers().clone(),
            body: r.bytes_stream().boxed(),
            buf: String::new(),
            comments: Vec::new(),
        }
    }

    /// The next event, or `None` if none comes within `within` (or the stream ended).
    pub async fn next(&mut self, within: Duration) -> Option<Ev> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        self.comments.push(comment.trim().to_string());
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => id = value.to_string(),
                        "event" => event = value.to_string(),
                        "data" => {
                            if !data.is_empty() {
                                data.push('\n');
                            }
                            data.push_str(value);
                        }
                        _ => {}
                    }
                }
                if data.is_empty() {
                    continue; // a comment-only block
                }
                let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event data {data:?}: {e}"));
                return Some(Ev { id, event, data });
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next()).await.ok()??.ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events until one satisfies `last` (included), failing after `within`.
    pub async fn until(&mut self, within: Duration, mut last: impl FnMut(&Ev) -> bool) -> Vec<Ev> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(ev) = self.next(left).await else {
                panic!("the awaited event did not come within {within:?}; got {out:#?}");
            };
            let stop = last(&ev);
            out.push(ev);
            if stop {
                return out;
            }
        }
    }

    /// Whether the server ends the stream within `within` (events meanwhile are dropped).
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}
