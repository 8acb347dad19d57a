//! Per-user quotas, enforced across the cluster: set by an admin (API and CLI), refused
//! with `429 quota_exceeded` naming the limit and when it frees.

use std::time::Duration;

use crate::common::api::Api;
use crate::common::service::{ADMIN, poll};
use reqwest::StatusCode;
use serde_json::{Value, json};

const BOB: (&str, &str) = ("bob@example.com", "bob-password-1");

/// `(status, code, message, Retry-After)` of an answer.
async fn refusal(r: reqwest::Response) -> (StatusCode, String, String, Option<u64>) {
    let status = r.status();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or_default().to_string();
    let message = body["error"]["message"].as_str().unwrap_or_default().to_string();
    (status, code, message, retry)
}

/// Creates a resumable upload of `length` bytes, which must be refused by quota `limit`:
/// its `Retry-After`.
async fn upload_refused(api: &Api, token: &str, length: i64, limit: &str) -> Option<u64> {
    let r = api
        .http
        .post(api.url("/v1/uploads"))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", length.to_string())
        .send()
        .await
        .unwrap();
    let (status, code, message, retry) = refusal(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
    );
    assert!(message.starts_with(limit), "{message}");
    retry
}

async fn quota(api: &Api, token: &str, email: &str) -> Value {
    api.get_json(token, &format!("/v1/users/{email}/quota")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_hold_across_nodes_name_themselves_and_free_when_jobs_end() {
    let dir = tempfile::tempdir().unwrap();
    // No converter anywhere: jobs stay unfinished until canceled. A default of one
    // unfinished job, which admins do not meet.
    let nodes = crate::common::service::cluster_with(dir.path(), &[0, 0], &["--quota-active", "1"]).await;
    let (a, b) = (Api::new(&nodes[0]), Api::new(&nodes[1]));
    let admin = a.login(ADMIN.0, ADMIN.1).await;
    a.create_user(&admin, BOB.0, BOB.1).await;
    let bob_a = a.login(BOB.0, BOB.1).await;
    let bob_b = b.login_soon(BOB.0, BOB.1).await;
    let file = crate::common::tone("quota_1s.m4a", 440, 44100, 1.0, 1, &["-c:a", "aac"]);
    let size = std::fs::metadata(&file).unwrap().len() as i64;

    // The default applies until an admin sets Bob's own.
    assert_eq!(
        a.upload_as("/v1/jobs", &bob_a, &file, None).await.status(),
        StatusCode::ACCEPTED
    );
    let (status, code, message, retry) = refusal(b.upload_as("/v1/jobs", &bob_b, &file, None).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
    );
    assert!(message.starts_with("max_active"), "{message}");
    assert_eq!(retry, Some(30));
    for _ in 0..2 {
        let r = a.upload_as("/v1/jobs", &admin, &file, None).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "admins have no limits");
    }

    let r = a
        .http
        .put(a.url(&format!("/v1/users/{}/quota", BOB.0)))
        .bearer_auth(&admin)
        .json(&json!({"max_active": 2, "max_jobs_per_day": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set: Value = r.json().await.unwrap();
    assert_eq!(set["limits"]["max_active"], 2, "{set}");
    assert_eq!(set["own"]["max_stored_bytes"], Value::Null, "{set}");
    assert_eq!(set["limits"]["max_stored_bytes"], 50_000_000_000_i64, "the default");
    // Only admins set limits; users see their own.
    let r = b
        .http
        .put(b.url(&format!("/v1/users/{}/quota", BOB.0)))
        .bearer_auth(&bob_b)
        .json(&json!({"max_active": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = b
        .http
        .get(b.url(&format!("/v1/users/{}/quota", ADMIN.0)))
        .bearer_auth(&bob_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The limit replicates to B; B counts the job on A: one more fits, then 429 on either.
    let second = poll(Duration::from_secs(10), "Bob's limit on node B", || async {
        let r = b.upload_as("/v1/jobs", &bob_b, &file, Some("second")).await;
        if r.status() != StatusCode::ACCEPTED {
            return None;
        }
        Some(r.json::<Value>().await.unwrap())
    })
    .await;
    for (api, token) in [(&a, &bob_a), (&b, &bob_b)] {
        let (status, code, message, _) = refusal(api.upload_as("/v1/jobs", token, &file, None).await).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
        );
        assert!(message.contains("max_active") && message.contains("is 2"), "{message}");
        let (status, ..) = refusal(api.import(token, "http://127.0.0.1:9/x.mp4").await).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "URL imports count too");
    }
    // A retry of an accepted job is not a new job.
    let r = a.upload_as("/v1/jobs", &bob_a, &file, Some("second")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], second["id"]);
    let usage = quota(&a, &bob_a, BOB.0).await;
    assert_eq!(usage["usage"]["active"], 2, "{usage}");
    assert_eq!(usage["usage"]["jobs_today"], 2, "{usage}");
    assert!(usage["usage"]["stored_bytes"].as_i64().unwrap() >= 2 * size, "{usage}");

    // Canceling one frees a place; the day's count does not go down.
    let id = second["id"].as_str().unwrap();
    let r = a
        .http
        .delete(a.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(&bob_a)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        b.upload_as("/v1/jobs", &bob_b, &file, None).await.status(),
        StatusCode::ACCEPTED
    );
    let listed = a.get_json(&bob_a, "/v1/jobs").await;
    let unfinished: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "queued")
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    let r = b
        .http
        .delete(b.url(&format!("/v1/jobs/{}", unfinished[0])))
        .bearer_auth(&bob_b)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (status, code, message, retry) = refusal(a.upload_as("/v1/jobs", &bob_a, &file, None).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
    );
    assert!(message.starts_with("max_jobs_per_day"), "{message}");
    let retry = retry.unwrap();
    assert!(
        (86_000..=86_400).contains(&retry),
        "frees a day after the first job: {retry}"
    );

    // The CLI sets limits on a running node's database; they replicate like any change.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mp4tomp3"))
        .args([
            "user",
            "set",
            BOB.0,
            "--max-jobs-per-day",
            "default",
            "--max-stored-bytes",
        ])
        .arg((3 * size).to_string())
        .arg("--data-dir")
        .arg(&nodes[0].data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen = poll(Duration::from_secs(10), "the CLI's limit on node B", || async {
        let q = quota(&b, &bob_b, BOB.0).await;
        (q["own"]["max_stored_bytes"] == 3 * size).then_some(q)
    })
    .await;
    assert_eq!(seen["own"]["max_active"], 2, "untouched: {seen}");
    assert_eq!(
        seen["own"]["max_jobs_per_day"],
        Value::Null,
        "back to the default: {seen}"
    );
    // A resumable upload that would take Bob past the bytes is refused at its creation;
    // they free when his first ended job expires (retention, 7 days after it ended).
    let retry = upload_refused(&b, &bob_b, 2 * size + 1, "max_stored_bytes")
        .await
        .unwrap();
    assert!((7 * 86_400 - 120..=7 * 86_400).contains(&retry), "{retry}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_mp4tomp3"))
        .args(["user", "set", BOB.0, "--max-active", "-3", "--data-dir"])
        .arg(&nodes[0].data)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_jobs_gives_none_of_the_days_count_back() {
    let dir = tempfile::tempdir().unwrap();
    let node = crate::common::service::Node::start(&dir.path().join("a"), &["--quota-jobs-per-day", "3"]).await;
    let api = Api::new(&node);
    let admin = api.login(ADMIN.0, ADMIN.1).await;
    api.create_user(&admin, BOB.0, BOB.1).await;
    let bob = api.login(BOB.0, BOB.1).await;
    let file = crate::common::tone("quota_day_440.m4a", 440, 44100, 1.0, 1, &["-c:a", "aac"]);
    for _ in 0..3 {
        let job = api.upload(&bob, &file).await;
        let id = job["id"].as_str().unwrap();
        api.finished(&bob, id).await;
        let r = api.delete_job(&bob, id).await;
        assert!(r.status().is_success(), "{}", r.status());
    }
    assert_eq!(api.get_json(&bob, "/v1/jobs").await["jobs"], json!([]), "all deleted");
    let (status, code, message, _) = refusal(api.upload_as("/v1/jobs", &bob, &file, None).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
        "{message}"
    );
    assert!(message.starts_with("max_jobs_per_day"), "{message}");
    // Resumable uploads are creations too.
    let r = api
        .http
        .post(api.url("/v1/uploads"))
        .bearer_auth(&bob)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "100")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(quota(&api, &bob, BOB.0).await["usage"]["jobs_today"], 3);
}

/// A multipart upload of `bytes` without a length (chunked), its two halves a second apart.
async fn chunked_upload(http: &reqwest::Client, url: &str, token: &str, bytes: &[u8]) -> reqwest::Response {
    use futures_util::StreamExt;
    let half = bytes.len() / 2;
    let pieces = vec![bytes[..half].to_vec(), bytes[half..].to_vec()];
    let stream = futures_util::stream::iter(pieces.into_iter().enumerate()).then(|(i, piece)| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok::<_, std::io::Error>(piece)
    });
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(stream)).file_name("a.m4a");
    http.post(url)
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_uploads_do_not_overshoot_max_active() {
    let dir = tempfile::tempdir().unwrap();
    // No converter: accepted jobs stay unfinished.
    let node = crate::common::service::Node::start(&dir.path().join("a"), &["--converter-slots", "0"]).await;
    let api = Api::new(&node);
    let admin = api.login(ADMIN.0, ADMIN.1).await;
    api.create_user(&admin, BOB.0, BOB.1).await;
    let r = api
        .http
        .put(api.url(&format!("/v1/users/{}/quota", BOB.0)))
        .bearer_auth(&admin)
        .json(&json!({"max_active": 2}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let bob = api.login(BOB.0, BOB.1).await;
    let bytes = std::fs::read(crate::common::tone(
        "quota_race_440.m4a",
        440,
        44100,
        1.0,
        1,
        &["-c:a", "aac"],
    ))
    .unwrap();
    // Twenty chunked uploads at once, each body arriving over a second.
    let sends = (0..20).map(|_| {
        let (http, url, bob, bytes) = (api.http.clone(), api.url("/v1/jobs"), bob.clone(), bytes.clone());
        async move { chunked_upload(&http, &url, &bob, &bytes).await.status() }
    });
    let statuses = futures_util::future::join_all(sends).await;
    let accepted = statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((accepted, refused), (2, 18), "{statuses:?}");
    assert_eq!(quota(&api, &bob, BOB.0).await["usage"]["active"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_uploads_count_their_bytes_as_they_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let node = crate::common::service::Node::start(&dir.path().join("a"), &["--converter-slots", "0"]).await;
    let api = Api::new(&node);
    let admin = api.login(ADMIN.0, ADMIN.1).await;
    api.create_user(&admin, BOB.0, BOB.1).await;
    let file = crate::common::tone("quota_bytes_440.m4a", 440, 44100, 1.0, 1, &["-c:a", "aac"]);
    let bytes = std::fs::read(&file).unwrap();
    let size = bytes.len() as i64;
    // Room for two and a half files; no limit on jobs at once.
    let limit = size * 5 / 2;
    let r = api
        .http
        .put(api.url(&format!("/v1/users/{}/quota", BOB.0)))
        .bearer_auth(&admin)
        .json(&json!({"max_stored_bytes": limit}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let bob = api.login(BOB.0, BOB.1).await;
    // Six chunked uploads at once (no Content-Length: nothing is known of their size up
    // front), each body arriving in two halves a second apart.
    let sends = (0..6).map(|_| {
        let (http, url, bob, bytes) = (api.http.clone(), api.url("/v1/jobs"), bob.clone(), bytes.clone());
        async move {
            let r = chunked_upload(&http, &url, &bob, &bytes).await;
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    let accepted = answers.iter().filter(|(s, _)| *s == StatusCode::ACCEPTED).count();
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::ACCEPTED) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("max_stored_bytes"), "{message}");
    }
    assert!(
        accepted <= 2,
        "{accepted} files of {size} bytes accepted under {limit}: {answers:?}"
    );
    let usage = quota(&api, &bob, BOB.0).await["usage"].clone();
    assert!(usage["stored_bytes"].as_i64().unwrap() <= limit, "{usage}");
    // What the refusals gave back is free again: the next files fit up to the limit.
    for _ in accepted..2 {
        let r = api.upload_as("/v1/jobs", &bob, &file, None).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let (status, code, message, _) = refusal(api.upload_as("/v1/jobs", &bob, &file, None).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
        "{message}"
    );
}

/// The counters are in the replicated log: a burst of uploads spread over three nodes at
/// once is admitted one after another against the same counts, so the cluster takes
/// exactly the limit (before, each node summed what it could see and a burst passed the
/// limit by up to one job per other node); a resumable upload counts the same way.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_over_three_nodes_never_passes_max_active() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = crate::common::service::cluster_with(dir.path(), &[0, 0, 0], &[]).await;
    let apis: Vec<Api> = nodes.iter().map(Api::new).collect();
    let admin = apis[0].login(ADMIN.0, ADMIN.1).await;
    apis[0].create_user(&admin, BOB.0, BOB.1).await;
    let r = apis[0]
        .http
        .put(apis[0].url(&format!("/v1/users/{}/quota", BOB.0)))
        .bearer_auth(&admin)
        .json(&json!({"max_active": 2}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let mut tokens = Vec::new();
    for api in &apis {
        tokens.push(api.login_soon(BOB.0, BOB.1).await);
    }
    let bytes = std::fs::read(crate::common::tone(
        "quota_burst_440.m4a",
        440,
        44100,
        1.0,
        1,
        &["-c:a", "aac"],
    ))
    .unwrap();
    // Five chunked uploads at once on each node, each body arriving over a second.
    let sends = (0..15).map(|i| {
        let api = &apis[i % 3];
        let (http, url, bob, bytes) = (
            api.http.clone(),
            api.url("/v1/jobs"),
            tokens[i % 3].clone(),
            bytes.clone(),
        );
        async move { chunked_upload(&http, &url, &bob, &bytes).await.status() }
    });
    let statuses = futures_util::future::join_all(sends).await;
    let accepted = statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((accepted, refused), (2, 13), "{statuses:?}");
    for (api, token) in apis.iter().zip(&tokens) {
        let usage = quota(api, token, BOB.0).await;
        assert_eq!(usage["usage"]["active"], 2, "{usage}");
        upload_refused(api, token, 1000, "max_active").await;
    }
}
