//! A node whose wall clock jumps an hour (libfaketime moves it inside the running process):
//! its tokens, its records' times and what it accepts stay as if nothing happened.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;

use crate::common::api::Api;
use crate::common::service::{ADMIN, Node, free_port, poll};

/// Debian's libfaketime (CI installs it): the preloaded library that fakes the wall clock.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

fn real_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A JWT's claims (not verified: the server did that).
fn claims(token: &str) -> Value {
    let body = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap()
}

/// Seconds since the epoch of an RFC 3339 time.
fn rfc3339_secs(t: &Value) -> i64 {
    let t = humantime::parse_rfc3339_weak(t.as_str().unwrap()).unwrap();
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn start(dir: &Path, name: &str, ip: &str, port: u16, peers: &str, env: &[(&str, &str)]) -> Node {
    let listen = format!("{ip}:{port}");
    let args = ["--node-name", name, "--cluster-listen", &listen, "--peers", peers];
    Node::start_with_env(&dir.join(name), &args, env).await
}

/// Moves the faked wall clock of the node reading `file`; waits until the node has read it
/// (libfaketime reads the file at most once a second) and checked its clock (once a second).
async fn jump(file: &Path, offset: &str) {
    std::fs::write(file, format!("{offset}\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_wall_clock_jumps_an_hour_keeps_tokens_and_times_right() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install libfaketime"
    );
    let dir = tempfile::tempdir().unwrap();
    let clock_file = dir.path().join("b.clock");
    std::fs::write(&clock_file, "+0\n").unwrap();
    let clock_path = clock_file.to_str().unwrap().to_string();
    let faked = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", clock_path.as_str()),
        ("FAKETIME_CACHE_DURATION", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let ports = [free_port(), free_port()];
    let peers = format!("127.0.0.2:{},127.0.0.3:{}", ports[0], ports[1]);
    let a = start(dir.path(), "node-a", "127.0.0.2", ports[0], &peers, &[]).await;
    let b = start(dir.path(), "node-b", "127.0.0.3", ports[1], &peers, &faked).await;
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    let token_a = api_a.login(ADMIN.0, ADMIN.1).await;
    poll(Duration::from_secs(20), "a and b in one metadata group", || async {
        let view = api_a.get_json(&token_a, "/v1/cluster").await;
        let member = view["members"].as_array()?.first()?.clone();
        (member["state"] == "up"
            && member["clock_offset_ms"].is_i64()
            && view["metadata"]["voters"].as_array()?.len() == 2)
            .then_some(())
    })
    .await;
    let input = crate::common::tone("clock_440.m4a", 440, 44100, 1.0, 1, &["-c:a", "aac"]);

    for (steps, offset) in [(1, "+1h"), (2, "-1h")] {
        jump(&clock_file, offset).await;
        // The jump is real inside b: its HTTP `Date` header (hyper reads the wall clock).
        let r = reqwest::get(b.url("/healthz")).await.unwrap();
        let date = httpdate(r.headers()["date"].to_str().unwrap());
        assert!(
            (date - real_secs()).abs() > 3000,
            "b's wall clock did not move {offset}: {date}"
        );
        // b noticed this step (a second step is a new one); it checks once a second, which a
        // loaded machine may delay.
        poll(Duration::from_secs(15), "b logs each step", || async {
            (b.log_text().matches("the wall clock jumped").count() >= steps).then_some(())
        })
        .await;

        // a's token is still good on b (an hour ahead, b would find it expired).
        assert_eq!(jobs_status(&b, &token_a).await, 200, "a's token on b at {offset}");
        // b's new token lives as long as any other, and works on a (an hour behind, it
        // would be born expired).
        let token_b = api_b.login(ADMIN.0, ADMIN.1).await;
        let exp = claims(&token_b)["exp"].as_i64().unwrap();
        assert!(
            (exp - real_secs() - 3600).abs() < 30,
            "b's token at {offset} expires at {exp}"
        );
        assert_eq!(jobs_status(&a, &token_b).await, 200, "b's token on a at {offset}");
        // A job b accepts now carries the real time.
        let r = api_b
            .upload_as("/v1/jobs", &token_b, &input, Some(&format!("clock{offset}")))
            .await;
        assert_eq!(r.status(), 202, "an upload on b at {offset}");
        let job: Value = r.json().await.unwrap();
        let created = rfc3339_secs(&job["created_at"]);
        assert!((created - real_secs()).abs() < 30, "the job's time at {offset}: {job}");
        // a sees b's time where its own is.
        let view = api_a.get_json(&token_a, "/v1/cluster").await;
        let offset_ms = view["members"][0]["clock_offset_ms"].as_i64().unwrap();
        assert!(offset_ms.abs() < 1000, "b's clock as a sees it at {offset}: {view}");
    }
    jump(&clock_file, "+0").await;
    assert_eq!(jobs_status(&b, &token_a).await, 200, "after the clock came back");
}

/// What `GET /v1/jobs` with `token` answers on `node`.
async fn jobs_status(node: &Node, token: &str) -> u16 {
    let r = reqwest::Client::new()
        .get(node.url("/v1/jobs"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

/// Seconds since the epoch of an HTTP date (`Mon, 07 Dec 2026 10:01:04 GMT`).
fn httpdate(s: &str) -> i64 {
    let t = humantime::parse_rfc3339_weak(&{
        let parts: Vec<&str> = s.split_whitespace().collect();
        let month = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ]
        .iter()
        .position(|m| *m == parts[2])
        .unwrap()
            + 1;
        format!("{}-{month:02}-{:0>2} {}", parts[3], parts[1], parts[4])
    })
    .unwrap();
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}
