//! Scaling the StatefulSet, without Kubernetes: real binaries on 127.0.0.x named like the
//! set's pods (`mp4tomp3-N`), kube discovery against the stub API server, which also serves
//! the StatefulSet's desired replicas.
//!
//! Scale down: the pod beyond the replicas hands its jobs (a done one with its MP3 and its
//! unsent email, a queued upload with its MP4, a URL import still fetching) to the staying
//! nodes, exits, and every job stays reachable under its id; a plain restart (ordinal still
//! wanted) hands nothing over. Two pods leaving at once (3 → 1) hand everything to the one
//! that stays, and sent emails are not sent again. When the kube API fails, a stopping pod
//! keeps its data rather than guess. Scale up: a new pod gets queued conversions at once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::api::Api;
use crate::common::kube_stub::{Stub, pod};
use crate::common::service::{ADMIN, Node, first_link, free_port, mail_text, poll};
use axum::response::Response;
use serde_json::{Value, json};

/// The flags of pod `i` (`mp4tomp3-i` on 127.0.0.(i+2)).
fn args(i: usize, port: u16, slots: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--node-name",
        &format!("mp4tomp3-{i}"),
        "--cluster-listen",
        &format!("127.0.0.{}:{port}", i + 2),
        "--discovery",
        "kube",
        "--kube-selector",
        "app=mp4tomp3",
        "--converter-slots",
        &slots.to_string(),
        "--fetch-allow-hosts",
        "127.0.0.1",
        "--fetch-read-timeout",
        "600s",
        // The tests log in and look at members often: no throttling here.
        "--login-per-minute",
        "100000",
        "--lockout-after",
        "100000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

async fn start(dir: &Path, kubeconfig: &Path, i: usize, port: u16, slots: usize, extra: &[&str]) -> Node {
    // Kube discovery runs with TLS between pods (the manifests' default).
    let mut args = args(i, port, slots, extra);
    args.extend(crate::common::pki::tls_args(&dir.join("pki")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
    Node::start_with_env(&dir.join(format!("mp4tomp3-{i}")), &args, &env).await
}

fn running(i: usize) -> Value {
    pod(&format!("mp4tomp3-{i}"), "Running", Some(&format!("127.0.0.{}", i + 2)))
}

/// Waits until `node` sees exactly `others` up.
async fn sees(node: &Node, others: &[&str]) {
    poll(Duration::from_secs(30), "the mesh", || async {
        let up: Vec<String> = crate::common::service::cluster_members(node)
            .await
            .into_iter()
            .filter(|(_, s)| s == "up")
            .map(|(n, _)| n)
            .collect();
        (up == others).then_some(())
    })
    .await;
}

/// Jobs in a node's database.
fn stored_jobs(data: &Path) -> i64 {
    let db = rusqlite::Connection::open(data.join("node.db")).unwrap();
    db.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0)).unwrap()
}

/// An HTTP server for URL imports that holds its answer (headers and a first KiB, then
/// nothing) until released.
async fn held_server(file: Vec<u8>, hold: Arc<AtomicBool>) -> String {
    let app = axum::Router::new().route(
        "/talk.mp4",
        axum::routing::get(move || {
            let (file, hold) = (file.clone(), hold.clone());
            async move {
                let len = file.len();
                // The first KiB at once, the rest once released.
                let first = bytes::Bytes::copy_from_slice(&file[..1024]);
                let rest = bytes::Bytes::copy_from_slice(&file[1024..]);
                let start = futures_util::stream::iter([Ok::<_, std::io::Error>(first)]);
                let later = futures_util::stream::once(async move {
                    while hold.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(rest)
                });
                let body = axum::body::Body::from_stream(futures_util::StreamExt::chain(start, later));
                Response::builder()
                    .header("content-type", "video/mp4")
                    .header("content-length", len)
                    .body(body)
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/talk.mp4")
}

async fn state_of(api: &Api, token: &str, id: &str) -> String {
    let job: Value = api.job(token, id).await.json().await.unwrap();
    job["state"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_down_hands_every_job_over_and_a_plain_restart_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (stub, kubeconfig) = Stub::serve(dir.path()).await;
    let port = free_port();
    for i in 0..3 {
        stub.event("ADDED", running(i));
    }
    // Only pod 2 converts at first; its SMTP server is down, so its emails wait.
    let dead_smtp = free_port().to_string();
    let smtp_down = [
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        &dead_smtp,
        "--smtp-tls",
        "none",
    ];
    let n0 = start(dir.path(), &kubeconfig, 0, port, 0, &[]).await;
    let mut n1 = start(dir.path(), &kubeconfig, 1, port, 0, &[]).await;
    let mut n2 = start(dir.path(), &kubeconfig, 2, port, 1, &smtp_down).await;
    sees(&n0, &["mp4tomp3-1", "mp4tomp3-2"]).await;
    sees(&n2, &["mp4tomp3-0", "mp4tomp3-1"]).await;
    let (a0, a1, a2) = (Api::new(&n0), Api::new(&n1), Api::new(&n2));
    let token = a0.login(ADMIN.0, ADMIN.1).await;

    // Job A: done on pod 2, its email not sent yet.
    let short = crate::common::tone("scaling_6s.m4a", 440, 44100, 6.0, 2, &["-c:a", "aac"]);
    let a = a2.upload(&token, &short).await["id"].as_str().unwrap().to_string();
    assert!(a.starts_with("mp4tomp3-2~"));
    assert_eq!(a0.finished(&token, &a).await["state"], "done");
    let mp3_a = a0.mp3(&token, &a).await;
    assert_eq!(a2.mp3(&token, &a).await, mp3_a);

    // A plain restart of pod 2 (still within the 3 replicas): no handoff, its volume comes
    // back with it. It restarts without converter slots, so its next jobs wait.
    assert!(n2.terminate(Duration::from_secs(60)).success());
    assert!(n2.log_text().contains("still wanted: stopping without a handoff"));
    assert!(!n2.log_text().contains("handing jobs over"));
    n2 = start(dir.path(), &kubeconfig, 2, port, 0, &smtp_down).await;
    let a2 = Api::new(&n2);
    sees(&n0, &["mp4tomp3-1", "mp4tomp3-2"]).await;
    sees(&n2, &["mp4tomp3-0", "mp4tomp3-1"]).await;
    assert_eq!(a2.mp3(&token, &a).await, mp3_a, "A came back with the volume");

    // Job C: an upload queued on pod 2 (no free slot anywhere). Job B: a URL import whose
    // server holds its answer, so it is still fetching.
    let c = a2.upload(&token, &short).await["id"].as_str().unwrap().to_string();
    let hold = Arc::new(AtomicBool::new(true));
    let url = held_server(std::fs::read(&short).unwrap(), hold.clone()).await;
    let r = a2.import(&token, &url).await;
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let b = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(state_of(&a0, &token, &c).await, "queued");
    assert_eq!(state_of(&a0, &token, &b).await, "fetching");
    assert_eq!(stored_jobs(&n2.data), 3);

    // Scale to 2: pod 2 is terminating (the API says so first), then gets SIGTERM.
    *stub.replicas.lock().unwrap() = 2;
    let mut leaving = running(2);
    leaving["metadata"]["deletionTimestamp"] = json!("2026-11-29T10:00:00Z");
    stub.event("MODIFIED", leaving.clone());
    assert!(n2.terminate(Duration::from_secs(60)).success());
    stub.event("DELETED", leaving);
    let log = n2.log_text();
    assert!(log.contains("scaled down: handing this node's jobs over"), "{log}");
    let summary = log.lines().find(|l| l.contains("handoff finished")).unwrap();
    assert!(summary.contains("moved=3") && summary.contains("kept=0"), "{summary}");
    assert_eq!(stored_jobs(&n2.data), 0, "nothing left behind on the leaving pod");

    // Every job answers under its id through both staying nodes; A's MP3 is the same bytes.
    for api in [&a0, &a1] {
        for id in [&a, &b, &c] {
            let job: Value = api.job(&token, id).await.json().await.unwrap();
            assert_eq!(job["id"].as_str(), Some(id.as_str()), "{job}");
        }
        assert_eq!(api.mp3(&token, &a).await, mp3_a);
    }
    assert_eq!(state_of(&a1, &token, &a).await, "done");
    // A's email, which pod 2 could not send, is sent by its new owner, and its link works.
    let emails = || [n0.eml_files(), n1.eml_files()].concat();
    poll(Duration::from_secs(30), "A's email from its new owner", || async {
        (emails().len() == 1).then_some(())
    })
    .await;
    let link = first_link(&mail_text(&emails()[0])).unwrap();
    assert!(link.contains("/v1/links/"), "{link}");
    let path = &link[link.find("/v1/links/").unwrap()..];
    let via_link = reqwest::get(a1.url(path)).await.unwrap();
    assert_eq!(via_link.status(), reqwest::StatusCode::OK);
    assert_eq!(via_link.bytes().await.unwrap().to_vec(), mp3_a);
    let listed = a0.get_json(&token, "/v1/jobs?limit=10").await;
    let mut ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![a.as_str(), b.as_str(), c.as_str()];
    want.sort();
    assert_eq!(ids, want, "each job listed once");

    // Pod 1 restarts with a converter slot (a plain restart: ordinal 1 < 2), the URL's
    // server answers: B and C finish on the staying nodes, each with one email.
    hold.store(false, Ordering::SeqCst);
    assert!(n1.terminate(Duration::from_secs(60)).success());
    assert!(n1.log_text().contains("still wanted: stopping without a handoff"));
    n1 = start(dir.path(), &kubeconfig, 1, port, 1, &[]).await;
    let a1 = Api::new(&n1);
    sees(&n0, &["mp4tomp3-1"]).await;
    sees(&n1, &["mp4tomp3-0"]).await;
    for id in [&b, &c] {
        let done = a1.finished(&token, id).await;
        assert_eq!(done["state"], "done", "{done}");
        let secs = crate::common::mp3_seconds(dir.path(), &a0.mp3(&token, id).await);
        assert!((secs - 6.0).abs() < 0.05, "{secs} s");
    }
    poll(Duration::from_secs(30), "one email per job", || async {
        let all = [n0.eml_files(), n1.eml_files()].concat();
        (all.len() == 3).then_some(())
    })
    .await;
    for id in [&a, &b, &c] {
        let about: usize = [n0.eml_files(), n1.eml_files()]
            .concat()
            .iter()
            .filter(|m| mail_text(m).contains(id.as_str()) || String::from_utf8_lossy(m).contains(id.as_str()))
            .count();
        assert_eq!(about, 1, "one email about {id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_up_a_new_pod_takes_queued_conversions_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (stub, kubeconfig) = Stub::serve(dir.path()).await;
    *stub.replicas.lock().unwrap() = 1;
    let port = free_port();
    stub.event("ADDED", running(0));
    let n0 = start(dir.path(), &kubeconfig, 0, port, 0, &[]).await;
    let a0 = Api::new(&n0);
    let token = a0.login(ADMIN.0, ADMIN.1).await;
    let input = crate::common::tone("scaling_6s.m4a", 440, 44100, 6.0, 2, &["-c:a", "aac"]);
    let id = a0.upload(&token, &input).await["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(state_of(&a0, &token, &id).await, "queued", "no converter yet");

    // Scaled to 2: the new pod appears in the API, starts, joins, and converts the job.
    *stub.replicas.lock().unwrap() = 2;
    stub.event("ADDED", running(1));
    let n1 = start(dir.path(), &kubeconfig, 1, port, 1, &[]).await;
    let a1 = Api::new(&n1);
    let done = poll(Duration::from_secs(30), "the new pod to convert the job", || async {
        let job: Value = a1.job(&token, &id).await.json().await.ok()?;
        (job["state"] == "done").then_some(job)
    })
    .await;
    assert!(
        n1.has_line(&["converting a job for its owner", &id]),
        "the new pod converted it"
    );
    assert_eq!(done["id"].as_str(), Some(id.as_str()));
    // Served through either pod.
    let whole = a1.mp3(&token, &id).await;
    assert_eq!(a0.mp3(&token, &id).await, whole);
    let secs = crate::common::mp3_seconds(dir.path(), &whole);
    assert!((secs - 6.0).abs() < 0.05, "{secs} s");

    // Scaled back to 1 while the kube API fails: the pod cannot tell, so it stops plainly
    // and keeps what it has on its volume.
    *stub.replicas.lock().unwrap() = 1;
    *stub.fault.lock().unwrap() = crate::common::kube_stub::Fault::ServerError;
    let mut n1 = n1;
    assert!(n1.terminate(Duration::from_secs(60)).success());
    let log = n1.log_text();
    assert!(
        log.contains("cannot read the StatefulSet; stopping without a handoff"),
        "{log}"
    );
    assert!(!log.contains("handing jobs over"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pods_leaving_at_once_hand_everything_to_the_pod_that_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (stub, kubeconfig) = Stub::serve(dir.path()).await;
    let port = free_port();
    for i in 0..3 {
        stub.event("ADDED", running(i));
    }
    let n0 = start(dir.path(), &kubeconfig, 0, port, 0, &[]).await;
    let mut n1 = start(dir.path(), &kubeconfig, 1, port, 1, &[]).await;
    let mut n2 = start(dir.path(), &kubeconfig, 2, port, 1, &[]).await;
    sees(&n0, &["mp4tomp3-1", "mp4tomp3-2"]).await;
    sees(&n1, &["mp4tomp3-0", "mp4tomp3-2"]).await;
    sees(&n2, &["mp4tomp3-0", "mp4tomp3-1"]).await;
    let a0 = Api::new(&n0);
    let token = a0.login(ADMIN.0, ADMIN.1).await;
    let input = crate::common::tone("scaling_6s.m4a", 440, 44100, 6.0, 2, &["-c:a", "aac"]);
    let mut jobs = Vec::new();
    for node in [&n1, &n1, &n2, &n2] {
        let id = Api::new(node).upload(&token, &input).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        jobs.push(id);
    }
    let mut mp3s = Vec::new();
    for id in &jobs {
        assert_eq!(a0.finished(&token, id).await["state"], "done");
        mp3s.push(a0.mp3(&token, id).await);
    }
    poll(Duration::from_secs(30), "each owner to mail its jobs", || async {
        (n1.eml_files().len() + n2.eml_files().len() == 4).then_some(())
    })
    .await;

    // Scale 3 → 1 (Parallel policy: both go at once). Neither may pick the other.
    *stub.replicas.lock().unwrap() = 1;
    for i in [1, 2] {
        let mut leaving = running(i);
        leaving["metadata"]["deletionTimestamp"] = json!("2026-11-29T10:00:00Z");
        stub.event("MODIFIED", leaving);
    }
    n1.signal(libc::SIGTERM);
    n2.signal(libc::SIGTERM);
    assert!(n1.terminate(Duration::from_secs(60)).success());
    assert!(n2.terminate(Duration::from_secs(60)).success());
    for node in [&n1, &n2] {
        let log = node.log_text();
        let summary = log.lines().find(|l| l.contains("handoff finished")).unwrap();
        assert!(summary.contains("moved=2") && summary.contains("kept=0"), "{summary}");
        assert!(
            log.contains(r#"targets=["mp4tomp3-0"]"#),
            "only the staying pod is a target"
        );
        assert_eq!(stored_jobs(&node.data), 0);
    }
    assert_eq!(stored_jobs(&n0.data), 4);
    for (id, bytes) in jobs.iter().zip(&mp3s) {
        assert_eq!(state_of(&a0, &token, id).await, "done");
        assert_eq!(&a0.mp3(&token, id).await, bytes);
    }
    let metrics = reqwest::get(n0.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l == "mp4tomp3_jobs_adopted_total 4"),
        "{metrics}"
    );
    // Emails already sent are not sent again by the new owner.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(n0.eml_files().is_empty(), "no second email");
}
