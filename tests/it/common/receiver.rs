//! A webhook receiver for the tests: records every call and answers from a script.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

/// One call received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What it was answered (0: held, never answered).
    pub answered: u16,
}

impl Hit {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Inner {
    script: Vec<u16>,
    then: u16,
    hits: Vec<Hit>,
}

/// A receiver on 127.0.0.1.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    pub url: String,
}

impl Receiver {
    /// Answers `script` in order (0: hold the call without answering), then `then`.
    pub async fn start(script: &[u16], then: u16) -> Receiver {
        let inner = Arc::new(Mutex::new(Inner {
            script: script.iter().rev().copied().collect(),
            then,
            hits: Vec::new(),
        }));
        let app = axum::Router::new()
            .fallback(axum::routing::any(answer))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { inner, url }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.inner.lock().unwrap().hits.clone()
    }
}

async fn answer(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = {
        let mut inner = inner.lock().unwrap();
        let status = inner.script.pop().unwrap_or(inner.then);
        inner.hits.push(Hit {
            headers,
            body,
            answered: status,
        });
        status
    };
    if status == 0 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}
