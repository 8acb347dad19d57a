//! A stub kube API server for the tests: real Pod JSON for list and watch (added, modified,
//! deleted), the StatefulSet with its desired replicas, and API faults (500s, a dropped
//! watch, 410 Gone), served to the real `kube` client in the nodes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Current pods by name, and every event so far (resourceVersion = index + 1).
type PodsAndLog = (BTreeMap<String, Value>, Vec<Value>);

/// A fault the stub API server injects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    /// Every request fails with 500.
    ServerError,
    /// The next watch says its resourceVersion is too old (410 Gone, as a watch ERROR event).
    Expired,
}

/// The stub API server's state.
#[derive(Clone)]
pub struct Stub {
    pods: Arc<Mutex<PodsAndLog>>,
    /// Open watches get every event; `{"close": true}` ends them.
    pub live: broadcast::Sender<Value>,
    /// The fault injected now.
    pub fault: Arc<Mutex<Fault>>,
    /// The StatefulSet `mp4tomp3`'s desired replicas.
    pub replicas: Arc<Mutex<u32>>,
}

pub fn pod(name: &str, phase: &str, ip: Option<&str>) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "test", "labels": {"app": "mp4tomp3"}, "uid": name},
        "status": {"phase": phase, "podIP": ip},
    })
}

impl Stub {
    /// Serves the stub on a loopback port; returns it and a kubeconfig (namespace `test`)
    /// written into `dir`.
    pub async fn serve(dir: &Path) -> (Stub, PathBuf) {
        let stub = Stub {
            pods: Arc::new(Mutex::new((BTreeMap::new(), Vec::new()))),
            live: broadcast::channel(64).0,
            fault: Arc::new(Mutex::new(Fault::None)),
            replicas: Arc::new(Mutex::new(3)),
        };
        let app = axum::Router::new()
            .route("/api/v1/namespaces/test/pods", axum::routing::get(pods))
            .route(
                "/apis/apps/v1/namespaces/test/statefulsets/mp4tomp3",
                axum::routing::get(statefulset),
            )
            .with_state(stub.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: http://{api}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: stub\n    user: u\n    namespace: test\ncurrent-context: c\n"
            ),
        )
        .unwrap();
        (stub, kubeconfig)
    }

    /// Records an event (ADDED, MODIFIED, DELETED) and sends it to open watches.
    pub fn event(&self, kind: &str, mut object: Value) {
        let mut guard = self.pods.lock().unwrap();
        let rv = (guard.1.len() + 1).to_string();
        object["metadata"]["resourceVersion"] = rv.clone().into();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        if kind == "DELETED" {
            guard.0.remove(&name);
        } else {
            guard.0.insert(name, object.clone());
        }
        let event = json!({"type": kind, "object": object});
        guard.1.push(event.clone());
        let _ = self.live.send(event);
    }
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

async fn pods(State(stub): State<Stub>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let fault = *stub.fault.lock().unwrap();
    if fault == Fault::ServerError {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(status(500, "InternalError")),
        )
            .into_response();
    }
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    if watching && fault == Fault::Expired {
        *stub.fault.lock().unwrap() = Fault::None;
        let line = json!({"type": "ERROR", "object": status(410, "Expired")});
        return Response::builder()
            .header("content-type", "application/json")
            .body(axum::body::Body::from(format!("{line}\n")))
            .unwrap();
    }
    if q.get("watch").map(String::as_str) != Some("true") && q.get("watch").map(String::as_str) != Some("1") {
        let guard = stub.pods.lock().unwrap();
        let list = json!({
            "apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": guard.1.len().to_string()},
            "items": guard.0.values().cloned().collect::<Vec<_>>(),
        });
        return axum::Json(list).into_response();
    }
    // A watch: replay what happened after the client's resourceVersion, then stream live.
    let since: usize = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let (backlog, rx) = {
        let guard = stub.pods.lock().unwrap();
        (
            guard.1.iter().skip(since).cloned().collect::<Vec<_>>(),
            stub.live.subscribe(),
        )
    };
    let live = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                // A dropped watch: the stream just ends.
                Ok(event) if event.get("close").is_some() => return None,
                Ok(event) => return Some((event, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    });
    let lines = futures_util::StreamExt::map(
        futures_util::StreamExt::chain(futures_util::stream::iter(backlog), live),
        |e| Ok::<_, std::io::Error>(format!("{e}\n")),
    );
    Response::builder()
        .header("content-type", "application/json")
        .body(axum::body::Body::from_stream(lines))
        .unwrap()
}

/// The StatefulSet, as `kubectl get -o json` shows it (the fields a client reads).
async fn statefulset(State(stub): State<Stub>) -> Response {
    if *stub.fault.lock().unwrap() == Fault::ServerError {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(status(500, "InternalError")),
        )
            .into_response();
    }
    let replicas = *stub.replicas.lock().unwrap();
    axum::Json(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "mp4tomp3", "namespace": "test", "resourceVersion": "1"},
        "spec": {
            "replicas": replicas,
            "serviceName": "mp4tomp3-cluster",
            "selector": {"matchLabels": {"app": "mp4tomp3"}},
            "template": {"metadata": {"labels": {"app": "mp4tomp3"}}, "spec": {"containers": [{"name": "mp4tomp3"}]}},
        },
        "status": {"replicas": replicas},
    }))
    .into_response()
}
