//! A stub kube API server for the tests that behaves as the real one does where the nodes
//! meet it: HTTPS with a CA and a bearer token (what in-cluster configuration gives a pod),
//! `401` without the token, `403` for what the service account's Role does not grant, label
//! selectors honoured in lists and watches, watches that end after `timeoutSeconds` and
//! resume from a `resourceVersion`, `410 Gone` for a version older than the last compaction;
//! real Pod and StatefulSet JSON (added, modified, deleted, desired replicas); and injected
//! faults (500s, a dropped watch). Served to the real `kube` client in the nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
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
    /// Resources the service account's Role does not grant (`pods`, `statefulsets`): `403`.
    pub forbidden: Arc<Mutex<BTreeSet<&'static str>>>,
    /// The longest a watch stays open (the real server ends each one after the client's
    /// `timeoutSeconds`, or its own limit).
    pub watch_limit: Arc<Mutex<Duration>>,
    /// Events up to this resourceVersion were compacted away: a watch from an older one
    /// gets `410 Gone`.
    compacted: Arc<Mutex<usize>>,
    /// `410 Gone` answers so far.
    pub gone: Arc<AtomicUsize>,
    /// Watches opened so far.
    pub watches: Arc<AtomicUsize>,
    /// Every label selector a client sent.
    pub selectors: Arc<Mutex<Vec<String>>>,
    /// The bearer token the kubeconfig carries.
    token: String,
}

pub fn pod(name: &str, phase: &str, ip: Option<&str>) -> Value {
    labelled(name, phase, ip, "mp4tomp3")
}

/// A pod labelled `app={app}` (another app's pods share the namespace).
pub fn labelled(name: &str, phase: &str, ip: Option<&str>, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "test", "labels": {"app": app}, "uid": name},
        "status": {"phase": phase, "podIP": ip},
    })
}

impl Stub {
    /// Serves the stub over HTTPS on a loopback port; returns it and a kubeconfig
    /// (namespace `test`, the stub's CA, a bearer token) written into `dir`.
    pub async fn serve(dir: &Path) -> (Stub, PathBuf) {
        let stub = Stub {
            pods: Arc::new(Mutex::new((BTreeMap::new(), Vec::new()))),
            live: broadcast::channel(64).0,
            fault: Arc::new(Mutex::new(Fault::None)),
            replicas: Arc::new(Mutex::new(3)),
            forbidden: Arc::default(),
            watch_limit: Arc::new(Mutex::new(Duration::from_secs(1800))),
            compacted: Arc::default(),
            gone: Arc::default(),
            watches: Arc::default(),
            selectors: Arc::default(),
            token: format!("stub-{}", std::process::id()),
        };
        let app = axum::Router::new()
            .route("/api/v1/namespaces/test/pods", axum::routing::get(pods))
            .route(
                "/apis/apps/v1/namespaces/test/statefulsets/mp4tomp3",
                axum::routing::get(statefulset),
            )
            .layer(axum::middleware::from_fn_with_state(stub.clone(), authenticate))
            .with_state(stub.clone());
        let (ca_pem, acceptor) = tls();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: https://{api}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {}\ncontexts:\n- name: c\n  context:\n    cluster: stub\n    user: u\n    namespace: test\ncurrent-context: c\n",
                stub.token
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

    /// Compacts the history: a watch resuming from any version before now gets `410 Gone`
    /// (as after etcd's compaction) and must list again.
    pub fn compact(&self) {
        let now = self.pods.lock().unwrap().1.len();
        *self.compacted.lock().unwrap() = now;
    }
}

/// A CA and a serving certificate for 127.0.0.1 signed by it: the CA's PEM and an acceptor.
fn tls() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio_rustls::rustls;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response {
    (code, axum::Json(status(code.as_u16(), reason, message))).into_response()
}

/// `401` without the kubeconfig's bearer token; `500` while that fault is on.
async fn authenticate(State(stub): State<Stub>, request: Request, next: Next) -> Response {
    let expected = format!("Bearer {}", stub.token);
    let authorized = request
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        return failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    if *stub.fault.lock().unwrap() == Fault::ServerError {
        return failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "etcd unavailable");
    }
    next.run(request).await
}

/// `403` as the real server words it when the Role lacks `verb` on `resource`.
fn forbidden(stub: &Stub, resource: &'static str, verb: &str) -> Option<Response> {
    stub.forbidden.lock().unwrap().contains(resource).then(|| {
        let group = if resource == "pods" { "" } else { "apps" };
        let message = format!(
            "{resource} is forbidden: User \"system:serviceaccount:test:mp4tomp3\" cannot {verb} resource \"{resource}\" in API group \"{group}\" in the namespace \"test\""
        );
        failure(StatusCode::FORBIDDEN, "Forbidden", &message)
    })
}

/// An equality-based label selector (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated):
/// whether `object`'s labels match it. `None`: a selector the stub does not parse.
fn selects(selector: &str, object: &Value) -> Option<bool> {
    let labels = &object["metadata"]["labels"];
    let mut all = true;
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let ok = if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()].as_str() == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels[k.trim()].is_null()
        } else if term.contains(' ') || term.contains('(') {
            return None;
        } else {
            !labels[term].is_null()
        };
        all &= ok;
    }
    Some(all)
}

async fn pods(State(stub): State<Stub>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = if watching { "watch" } else { "list" };
    if let Some(refused) = forbidden(&stub, "pods", verb) {
        return refused;
    }
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    stub.selectors.lock().unwrap().push(selector.clone());
    if selects(&selector, &json!({})).is_none() {
        return failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("unable to parse requirement: {selector}"),
        );
    }
    let matches = move |object: &Value| selects(&selector, object).unwrap_or(false);
    if !watching {
        let guard = stub.pods.lock().unwrap();
        let list = json!({
            "apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": guard.1.len().to_string()},
            "items": guard.0.values().filter(|p| matches(p)).cloned().collect::<Vec<_>>(),
        });
        return axum::Json(list).into_response();
    }
    stub.watches.fetch_add(1, Ordering::SeqCst);
    // A watch: from a compacted version, one ERROR event (410) and the end, as the real
    // server answers; else what happened after the client's version, then live events,
    // until `timeoutSeconds` (or the server's limit) ends it.
    let since: usize = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    if since < *stub.compacted.lock().unwrap() {
        stub.gone.fetch_add(1, Ordering::SeqCst);
        let line =
            json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {since}"))});
        return Response::builder()
            .header("content-type", "application/json")
            .body(axum::body::Body::from(format!("{line}\n")))
            .unwrap();
    }
    let asked = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::MAX, Duration::from_secs);
    let limit = asked.min(*stub.watch_limit.lock().unwrap());
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
    let events = futures_util::StreamExt::filter(
        futures_util::StreamExt::chain(futures_util::stream::iter(backlog), live),
        move |e| std::future::ready(matches(&e["object"])),
    );
    let until = tokio::time::sleep(limit);
    let events = futures_util::StreamExt::take_until(events, until);
    let lines = futures_util::StreamExt::map(events, |e| Ok::<_, std::io::Error>(format!("{e}\n")));
    Response::builder()
        .header("content-type", "application/json")
        .body(axum::body::Body::from_stream(lines))
        .unwrap()
}

/// The StatefulSet, as `kubectl get -o json` shows it (the fields a client reads).
async fn statefulset(State(stub): State<Stub>) -> Response {
    if let Some(refused) = forbidden(&stub, "statefulsets", "get") {
        return refused;
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
