//! Kube discovery with the real `kube` client against a local stub API server that serves
//! real Pod JSON for list and watch (added, modified to running, deleted), and API faults
//! (500s, a dropped watch, 410 Gone).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use common::service::{Node, free_port, poll};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Current pods by name, and every event so far (resourceVersion = index + 1).
type PodsAndLog = (BTreeMap<String, Value>, Vec<Value>);

/// A fault the stub API server injects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Every request fails with 500.
    ServerError,
    /// The next watch says its resourceVersion is too old (410 Gone, as a watch ERROR event).
    Expired,
}

/// The stub API server's state.
#[derive(Clone)]
struct Stub {
    pods: Arc<Mutex<PodsAndLog>>,
    live: broadcast::Sender<Value>,
    fault: Arc<Mutex<Fault>>,
}

fn pod(name: &str, phase: &str, ip: Option<&str>) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "test", "labels": {"app": "mp4tomp3"}, "uid": name},
        "status": {"phase": phase, "podIP": ip},
    })
}

impl Stub {
    /// Records an event (ADDED, MODIFIED, DELETED) and sends it to open watches.
    fn event(&self, kind: &str, mut object: Value) {
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

/// The nodes a node's `/v1/cluster` lists as up.
async fn members(node: &Node) -> Vec<String> {
    let all = common::service::cluster_members(node).await;
    all.into_iter()
        .filter(|(_, state)| state == "up")
        .map(|(node, _)| node)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_discovery_follows_pods_added_made_running_and_deleted() {
    let stub = Stub {
        pods: Arc::new(Mutex::new((BTreeMap::new(), Vec::new()))),
        live: broadcast::channel(64).0,
        fault: Arc::new(Mutex::new(Fault::None)),
    };
    let app = axum::Router::new()
        .route("/api/v1/namespaces/test/pods", axum::routing::get(pods))
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: http://{api}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: stub\n    user: u\n    namespace: test\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let port = free_port();
    stub.event("ADDED", pod("node-a", "Running", Some("127.0.0.2")));
    stub.event("ADDED", pod("node-b", "Pending", None));
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
    let start = |name: &'static str, ip: &'static str| {
        let listen = format!("{ip}:{port}");
        let data = dir.path().join(name);
        async move {
            let args = [
                "--node-name",
                name,
                "--cluster-listen",
                &listen,
                "--discovery",
                "kube",
                "--kube-selector",
                "app=mp4tomp3",
                // `members` logs in at every look: no login throttling here.
                "--login-per-minute",
                "100000",
                "--lockout-after",
                "100000",
            ];
            Node::start_with_env(&data, &args, &env).await
        }
    };
    let a = start("node-a", "127.0.0.2").await;
    let b = start("node-b", "127.0.0.3").await;
    // b is not running yet as far as the API says: nobody dials it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(members(&a).await, Vec::<String>::new());
    // Modified to running with an IP: a (the smaller address) connects.
    stub.event("MODIFIED", pod("node-b", "Running", Some("127.0.0.3")));
    poll(Duration::from_secs(15), "a and b to meet", || async {
        (members(&a).await == ["node-b"]).then_some(())
    })
    .await;
    poll(Duration::from_secs(15), "b to see a", || async {
        (members(&b).await == ["node-a"]).then_some(())
    })
    .await;
    // API faults keep the last view: 500s (and the open watch dropped), then a 410 on the
    // next watch (the client lists again). Nobody is dropped meanwhile.
    *stub.fault.lock().unwrap() = Fault::ServerError;
    let _ = stub.live.send(json!({"close": true}));
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(members(&a).await, ["node-b"], "the 500s dropped nobody");
    }
    assert!(
        a.log_text().contains("kube watch failed; keeping the last view"),
        "the node met the 500s"
    );
    *stub.fault.lock().unwrap() = Fault::Expired;
    poll(
        Duration::from_secs(30),
        "the watch to come back and meet the 410",
        || async { (*stub.fault.lock().unwrap() == Fault::None).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(members(&a).await, ["node-b"], "the 410 dropped nobody");
    assert!(!a.log_text().contains("pod left"), "no session was closed");
    let failures = |node: &Node| node.log_text().matches("kube watch failed").count();
    let before = failures(&a);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(failures(&a), before, "the watch is healthy again");

    // Deleted (after the faults: the watch works again): a drops it, although b's process
    // still runs.
    stub.event("DELETED", pod("node-b", "Running", Some("127.0.0.3")));
    poll(Duration::from_secs(10), "a to drop the deleted pod", || async {
        members(&a).await.is_empty().then_some(())
    })
    .await;
    assert!(a.log_text().contains("discovering peers through the kube API"));
}
