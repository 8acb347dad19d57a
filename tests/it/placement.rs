//! Conversions placed across the cluster: real binaries on 127.0.0.x, static discovery.
//!
//! Nodes with `--converter-slots 0` force placement elsewhere. Which node converts is read
//! from the nodes' logs ("converting a job for its owner"), the fencing from the owner's
//! log ("stale conversion result refused").

use std::path::Path;
use std::time::Duration;

use crate::common::api::Api;
use crate::common::service::{ADMIN, Node, poll};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

struct Cluster {
    nodes: Vec<Node>,
}

/// Starts one node per slot count on 127.0.0.2, .3, ..., all peers of each other.
async fn cluster(dir: &Path, slots: &[usize]) -> Cluster {
    Cluster {
        nodes: crate::common::service::cluster(dir, slots).await,
    }
}

/// The index of the node that logs converting `id` (attempt `attempt`) for its owner.
async fn converting_node(c: &Cluster, id: &str, attempt: i64) -> usize {
    poll(WAIT, "a node to convert the job", || async {
        c.nodes.iter().position(|n| converts(n, id, attempt))
    })
    .await
}

fn converts(node: &Node, id: &str, attempt: i64) -> bool {
    node.has_line(&["converting a job for its owner", id, &format!("attempt={attempt}")])
}

/// Files in a node's reception dir (`DATA/remote`).
fn remote_files(dir: &Path, name: &str) -> usize {
    std::fs::read_dir(dir.join(name).join("remote")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread")]
async fn conversions_go_to_free_slots_anywhere_and_any_node_serves_the_result() {
    let dir = tempfile::tempdir().unwrap();
    // Only b converts: a and c have no slots.
    let mut c = cluster(dir.path(), &[0, 1, 0]).await;
    let (a, b, via_c) = (Api::new(&c.nodes[0]), Api::new(&c.nodes[1]), Api::new(&c.nodes[2]));
    let token = a.login(ADMIN.0, ADMIN.1).await;
    let input = crate::common::tone("placement_8s.m4a", 440, 44100, 8.0, 2, &["-c:a", "aac"]);
    let mut ids = Vec::new();
    for api in [&a, &a, &via_c] {
        let job = api.upload(&token, &input).await;
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    assert!(ids[0].starts_with("node-a~") && ids[2].starts_with("node-c~"));
    for id in &ids {
        let done = via_c.finished(&token, id).await;
        assert_eq!(done["state"], "done", "{done}");
        assert!(
            converts(&c.nodes[1], id, done["attempt"].as_i64().unwrap()),
            "b converted {id}"
        );
    }
    // The MP3 is the same through every node, and it is the whole input.
    let whole = a.mp3(&token, &ids[0]).await;
    assert_eq!(via_c.mp3(&token, &ids[0]).await, whole);
    assert_eq!(b.mp3(&token, &ids[0]).await, whole);
    let secs = crate::common::mp3_seconds(dir.path(), &whole);
    assert!((secs - 8.0).abs() < 0.05, "{secs} s");
    // What b produced is recorded by the owner: size and duration, seen from any node.
    let job = b.get_json(&token, &format!("/v1/jobs/{}", ids[0])).await;
    assert_eq!(job["mp3_bytes"].as_u64(), Some(whole.len() as u64), "{job}");
    let stated = job["duration_seconds"].as_f64().unwrap();
    assert!(
        (stated - secs).abs() < 0.05,
        "the job says {stated} s, ffprobe {secs} s"
    );
    // One email per job, from its owner; nothing left in b's reception dir.
    assert_eq!(c.nodes[0].eml_files().len(), 2);
    assert_eq!(c.nodes[2].eml_files().len(), 1);
    poll(Duration::from_secs(5), "b's received files to be cleaned", || async {
        (remote_files(dir.path(), "node-b") == 0).then_some(())
    })
    .await;

    // Stop c (SIGTERM): a and b keep serving their own jobs and converting.
    let status = c.nodes[2].terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    for api in [&a, &b] {
        let job = api.upload(&token, &input).await;
        let id = job["id"].as_str().unwrap().to_string();
        let done = api.finished(&token, &id).await;
        assert_eq!(done["state"], "done", "{done}");
        assert_eq!(api.mp3(&token, &id).await.len(), whole.len());
    }
    assert_eq!(b.mp3(&token, &ids[1]).await, a.mp3(&token, &ids[1]).await);
}

/// Uploads a 5-minute input on a (no slots) and returns its id and the node converting it.
async fn long_job_placed(c: &Cluster, token: &str) -> (String, usize) {
    let a = Api::new(&c.nodes[0]);
    let input = crate::common::tone("placement_300s.m4a", 440, 44100, 300.0, 2, &["-c:a", "aac"]);
    let job = a.upload(token, &input).await;
    let id = job["id"].as_str().unwrap().to_string();
    let at = converting_node(c, &id, 1).await;
    assert_ne!(at, 0, "a has no slots");
    (id, at)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_converting_node_loses_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), &[0, 1, 1]).await;
    let a = Api::new(&c.nodes[0]);
    let token = a.login(ADMIN.0, ADMIN.1).await;
    let (id, at) = long_job_placed(&c, &token).await;
    c.nodes[at].kill9();
    let other = 3 - at;
    let done = a.finished(&token, &id).await;
    assert_eq!(done["state"], "done", "{done}");
    let attempt = done["attempt"].as_i64().unwrap();
    assert!(attempt >= 2, "placed again: {done}");
    assert!(converts(&c.nodes[other], &id, attempt), "the survivor converted it");
    let secs = crate::common::mp3_seconds(dir.path(), &a.mp3(&token, &id).await);
    assert!((secs - 300.0).abs() < 0.05, "{secs} s");
    // Exactly one email.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.nodes[0].eml_files().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_converting_node_is_fenced_and_its_late_result_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), &[0, 1, 1]).await;
    let a = Api::new(&c.nodes[0]);
    let token = a.login(ADMIN.0, ADMIN.1).await;
    let (id, at) = long_job_placed(&c, &token).await;
    c.nodes[at].signal(libc::SIGSTOP);
    let done = a.finished(&token, &id).await;
    assert_eq!(done["state"], "done", "{done}");
    let attempt = done["attempt"].as_i64().unwrap();
    assert!(converts(&c.nodes[3 - at], &id, attempt), "the other node converted it");
    let first = a.mp3(&token, &id).await;

    // Thawed, the old placement finishes and hands in its result: the owner refuses it.
    c.nodes[at].signal(libc::SIGCONT);
    c.nodes[0]
        .logged(&["stale conversion result refused", &id, "attempt=1"], WAIT)
        .await;
    // The old host was told (it logs the answer a moment after the owner logs the refusal).
    c.nodes[at]
        .logged(&["the owner refused this result", &id, "attempt=1"], WAIT)
        .await;
    assert_eq!(a.mp3(&token, &id).await, first, "the accepted MP3 is unchanged");
    let job: Value = a.job(&token, &id).await.json().await.unwrap();
    assert_eq!(job["attempt"], attempt);
    assert_eq!(c.nodes[0].eml_files().len(), 1, "one email");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_owner_resumes_its_placed_and_queued_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), &[0, 1]).await;
    let a = Api::new(&c.nodes[0]);
    let token = a.login(ADMIN.0, ADMIN.1).await;
    // One job converting on b, one waiting for b's only slot.
    let (placed, at) = long_job_placed(&c, &token).await;
    assert_eq!(at, 1);
    let input = crate::common::tone("placement_8s.m4a", 440, 44100, 8.0, 2, &["-c:a", "aac"]);
    let queued = a.upload(&token, &input).await["id"].as_str().unwrap().to_string();

    c.nodes[0].kill9();
    c.nodes[0].restart().await;
    let a = Api::new(&c.nodes[0]);
    let token = a.login(ADMIN.0, ADMIN.1).await;
    for (id, secs) in [(&placed, 300.0), (&queued, 8.0)] {
        let done = a.finished(&token, id).await;
        assert_eq!(done["state"], "done", "{done}");
        let got = crate::common::mp3_seconds(dir.path(), &a.mp3(&token, id).await);
        assert!((got - secs).abs() < 0.05, "{got} s");
    }
    // b's result for the first placement came back to a new incarnation: refused.
    c.nodes[1]
        .logged(&["the owner refused this result", &placed, "attempt=1"], WAIT)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.nodes[0].eml_files().len(), 2, "one email per job");
}
