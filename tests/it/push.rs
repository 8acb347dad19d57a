//! Push: the event stream (`/v1/events`) on one node and across a cluster, and webhooks.

use std::path::Path;
use std::time::Duration;

use crate::common::api::Api;
use crate::common::service::{ADMIN, Node, free_port, poll};
use crate::common::sse::{Ev, Sse};
use reqwest::StatusCode;

const WAIT: Duration = Duration::from_secs(90);

async fn events(api: &Api, token: &str, query: &str, last: Option<&str>) -> Sse {
    let sse = Sse::open(&api.http, &api.url(&format!("/v1/events{query}")), token, last).await;
    assert_eq!(sse.status, StatusCode::OK);
    sse
}

fn finished(id: &str) -> impl FnMut(&Ev) -> bool + '_ {
    move |e| e.job_id() == id && e.event == "job.finished"
}

/// The events of one job, in order: created first, then progress that never goes back,
/// then exactly one final event, `job.finished`.
fn assert_one_job_lifecycle(events: &[Ev], id: &str) {
    let mine: Vec<&Ev> = events.iter().filter(|e| e.job_id() == id).collect();
    let kinds: Vec<&str> = mine.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"job.created"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"job.finished"), "{kinds:?}");
    assert!(
        kinds[1..kinds.len() - 1].iter().all(|k| *k == "job.progress"),
        "{kinds:?}"
    );
    assert!(kinds.len() >= 3, "at least one progress event: {kinds:?}");
    let progress: Vec<f64> = mine.iter().map(|e| e.job().1).collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    let last = mine.last().unwrap();
    assert_eq!(last.job().0, "done");
    assert_eq!(last.data["type"], "job.finished");
    assert_eq!(last.data["id"], last.id.as_str(), "the data names its event id");
    assert!(last.data["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_node_streams_each_users_job_events_in_order_and_resumes_after_the_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let api = Api::new(&node);
    let admin = api.login(ADMIN.0, ADMIN.1).await;
    api.create_user(&admin, "ann@example.com", "ann-password-1").await;
    api.create_user(&admin, "bob@example.com", "bob-password-1").await;
    let ann = api.login("ann@example.com", "ann-password-1").await;
    let bob = api.login("bob@example.com", "bob-password-1").await;

    // Only admins follow everyone; credentials are required.
    let r = api
        .http
        .get(api.url("/v1/events?all=true"))
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap();
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::FORBIDDEN, "forbidden".to_string())
    );
    let r = api.http.get(api.url("/v1/events")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let mut ann_feed = events(&api, &ann, "", None).await;
    assert_eq!(ann_feed.headers["content-type"], "text/event-stream");
    assert_eq!(ann_feed.headers["cache-control"], "no-cache");
    assert_eq!(ann_feed.headers["x-accel-buffering"], "no");
    let mut everyone = events(&api, &admin, "?all=true", None).await;

    // Bob's job first, then Ann's (long enough to report progress).
    let short = crate::common::tone("push_2s.m4a", 440, 44100, 2.0, 2, &["-c:a", "aac"]);
    let long = crate::common::tone("push_60s.m4a", 440, 44100, 60.0, 2, &["-c:a", "aac"]);
    let bobs = api.upload(&bob, &short).await["id"].as_str().unwrap().to_string();
    let anns = api.upload(&ann, &long).await["id"].as_str().unwrap().to_string();
    let seen = ann_feed.until(WAIT, finished(&anns)).await;
    assert!(
        seen.iter().all(|e| e.job_id() == anns),
        "Ann sees only her job: {seen:#?}"
    );
    assert_one_job_lifecycle(&seen, &anns);
    let all = everyone
        .until(WAIT, |e| e.job_id() == anns && e.event == "job.finished")
        .await;
    assert!(all.iter().any(|e| e.job_id() == bobs), "the admin sees Bob's job too");
    // The same events, with the same ids, on both streams.
    let anns_in_all: Vec<&str> = all
        .iter()
        .filter(|e| e.job_id() == anns)
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(anns_in_all, seen.iter().map(|e| e.id.as_str()).collect::<Vec<_>>());

    // Ann disconnects after her job's creation event; while she is away, her job ends and
    // another one runs. Reconnecting with the last id she saw gets exactly what she missed.
    let created_id = seen[0].id.clone();
    drop(ann_feed);
    let second = api.upload(&ann, &short).await["id"].as_str().unwrap().to_string();
    let _ = everyone.until(WAIT, finished(&second)).await;
    let mut resumed = events(&api, &ann, "", Some(&created_id)).await;
    let missed = resumed.until(Duration::from_secs(10), finished(&second)).await;
    let expected: Vec<&str> = seen[1..].iter().map(|e| e.id.as_str()).collect();
    let got: Vec<&str> = missed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        &got[..expected.len()],
        expected.as_slice(),
        "the rest of the first job, in order"
    );
    assert_one_job_lifecycle(&missed, &second);
    assert!(missed.iter().all(|e| e.job_id() == anns || e.job_id() == second));

    // A canceled job says so; nothing else is pending for Ann; a heartbeat comment comes
    // within 15 s of silence.
    let third = api.upload(&ann, &long).await["id"].as_str().unwrap().to_string();
    let r = api
        .http
        .delete(api.url(&format!("/v1/jobs/{third}")))
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let end = resumed
        .until(WAIT, |e| e.job_id() == third && e.event == "job.canceled")
        .await;
    assert_eq!(end.last().unwrap().job().0, "canceled");
    assert!(resumed.next(Duration::from_secs(17)).await.is_none(), "nothing more");
    assert!(
        resumed.comments.iter().any(|c| c == "heartbeat"),
        "{:?}",
        resumed.comments
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_on_one_node_sees_a_job_owned_by_another_converted_on_a_third_even_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    // a and b have no converter slots: b owns the job, c converts it, a streams it.
    let mut nodes = crate::common::service::cluster(dir.path(), &[0, 0, 1]).await;
    let (a, b) = (Api::new(&nodes[0]), Api::new(&nodes[1]));
    let token = a.login(ADMIN.0, ADMIN.1).await;
    let mut feed = events(&a, &token, "", None).await;
    let input = crate::common::tone("push_600s.m4a", 440, 44100, 600.0, 2, &["-c:a", "aac"]);
    let id = b.upload(&token, &input).await["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("node-b~"));

    // Progress of the first attempt reaches a; then c is killed mid-conversion.
    let before = feed
        .until(WAIT, |e| e.job_id() == id && e.job().2 == 1 && e.job().1 > 0.0)
        .await;
    assert_eq!(before[0].event, "job.created");
    nodes[2].kill9();
    nodes[2].restart().await;

    // b places the job again on c once it is back; a sees that attempt through to the end.
    let after = feed.until(Duration::from_secs(180), finished(&id)).await;
    let attempts: Vec<i64> = after.iter().map(|e| e.job().2).collect();
    assert!(
        attempts.iter().any(|a| *a >= 2),
        "the re-placed attempt's events: {after:#?}"
    );
    assert!(
        after
            .iter()
            .any(|e| e.job().2 >= 2 && e.event == "job.progress" && e.job().1 > 0.0),
        "its progress too: {after:#?}"
    );
    let done = after.last().unwrap();
    assert_eq!(done.job().0, "done");
    // Exactly one final event for the job.
    assert_eq!(
        after
            .iter()
            .filter(|e| e.job_id() == id && e.event != "job.progress")
            .count(),
        1
    );
}

async fn put_webhook(api: &Api, token: &str, body: serde_json::Value) -> reqwest::Response {
    let r = api.http.put(api.url("/v1/me/webhook")).bearer_auth(token).json(&body);
    r.send().await.unwrap()
}

/// The job `id` once its latest webhook call is its `job.finished` event's and is no
/// longer pending.
async fn webhook_settled(api: &Api, token: &str, id: &str) -> serde_json::Value {
    poll(WAIT, "the webhook call to settle", || async {
        let job = api.get_json(token, &format!("/v1/jobs/{id}")).await;
        let state = job["webhook"]["state"].as_str().unwrap_or("pending");
        (job["webhook"]["type"] == "job.finished" && state != "pending").then_some(job)
    })
    .await
}

/// The README's receiver, run as written, verifying signatures with `secret`; its stdout
/// lines are the events it accepted.
struct ReadmeReceiver {
    child: std::process::Child,
    url: String,
    out: std::path::PathBuf,
}

impl ReadmeReceiver {
    fn start(dir: &Path, secret: &str) -> ReadmeReceiver {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let start = readme.find("```python\n").expect("a Python receiver in the README") + "```python\n".len();
        let code = &readme[start..start + readme[start..].find("```").unwrap()];
        assert!(code.lines().count() <= 10, "the README's receiver is 10 lines:\n{code}");
        let script = dir.join("receiver.py");
        std::fs::write(&script, code).unwrap();
        let port = free_port();
        let out = dir.join("receiver.out");
        let child = std::process::Command::new("python3")
            .arg(&script)
            .env("MP4TOMP3_WEBHOOK_SECRET", secret)
            .env("PORT", port.to_string())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.join("receiver.err")).unwrap())
            .spawn()
            .unwrap();
        ReadmeReceiver {
            child,
            url: format!("http://127.0.0.1:{port}/hook"),
            out,
        }
    }

    fn accepted(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for ReadmeReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_are_signed_retried_on_5xx_disabled_by_410_failed_by_4xx_and_guarded() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &["--fetch-allow-hosts", "127.0.0.1"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let input = crate::common::tone("push_2s.m4a", 440, 44100, 2.0, 2, &["-c:a", "aac"]);

    // A loopback address that is not allow-listed is refused at registration, as are
    // unknown events and non-http URLs.
    let r = put_webhook(&api, &token, serde_json::json!({"url": "http://127.0.0.3:9/hook"})).await;
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "forbidden_url".to_string())
    );
    let flaky = crate::common::receiver::Receiver::start(&[500, 500], 200).await;
    let r = put_webhook(
        &api,
        &token,
        serde_json::json!({"url": flaky.url, "events": ["job.started"]}),
    )
    .await;
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::BAD_REQUEST, "invalid_webhook".to_string())
    );
    let r = put_webhook(&api, &token, serde_json::json!({"url": "ftp://127.0.0.1/x"})).await;
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::BAD_REQUEST, "invalid_webhook".to_string())
    );

    // The first PUT makes the signing secret and shows it once.
    let r = put_webhook(&api, &token, serde_json::json!({"url": flaky.url})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let set: serde_json::Value = r.json().await.unwrap();
    let secret = set["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(set["events"], serde_json::json!(["job.finished", "job.failed"]));
    let shown = api.get_json(&token, "/v1/me/webhook").await;
    assert_eq!(shown["url"], flaky.url.as_str());
    assert_eq!(shown["has_secret"], true);
    assert!(shown.get("secret").is_none(), "shown once: {shown}");

    // 500, 500, then 200: three attempts, one success, the same event each time.
    let id = api.upload(&token, &input).await["id"].as_str().unwrap().to_string();
    let job = webhook_settled(&api, &token, &id).await;
    let hook = &job["webhook"];
    assert_eq!(hook["state"], "delivered", "{job}");
    assert_eq!(hook["attempts"], 3);
    assert_eq!(hook["last_status"], 200);
    assert_eq!(hook["type"], "job.finished");
    let hits = flaky.hits();
    assert_eq!(hits.iter().map(|h| h.answered).collect::<Vec<_>>(), [500, 500, 200]);
    for hit in &hits {
        let body = hit.json();
        assert_eq!(body["id"], hook["event_id"]);
        assert_eq!(body["type"], "job.finished");
        assert_eq!(body["job"]["id"], id.as_str());
        assert_eq!(body["job"]["state"], "done");
        assert_eq!(hit.headers["content-type"], "application/json");
    }

    // The signature verifies with the secret, checked by the README's receiver (Python's
    // hmac, not our code).
    let readme = ReadmeReceiver::start(dir.path(), &secret);
    let r = put_webhook(
        &api,
        &token,
        serde_json::json!({"url": readme.url, "events": ["job.created", "job.finished"]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.json::<serde_json::Value>().await.unwrap().get("secret").is_none(),
        "the secret is kept"
    );
    let id = api.upload(&token, &input).await["id"].as_str().unwrap().to_string();
    let job = webhook_settled(&api, &token, &id).await;
    assert_eq!(job["webhook"]["state"], "delivered", "{job}");
    assert_eq!(
        job["webhook"]["last_status"], 204,
        "the receiver verified the signature"
    );
    let accepted = poll(Duration::from_secs(10), "the receiver's lines", || async {
        let lines = readme.accepted();
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    let mut accepted = accepted;
    accepted.sort();
    assert_eq!(
        accepted,
        [
            format!("{id}.job.created job.created queued"),
            format!("{id}.job.finished job.finished done")
        ]
    );
    // After a rotation, calls are signed with the new secret: the receiver (old secret)
    // refuses them (400), which fails the call for good.
    let r = api
        .http
        .post(api.url("/v1/me/webhook/secret"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let rotated = r.json::<serde_json::Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(rotated, secret);
    let id = api.upload(&token, &input).await["id"].as_str().unwrap().to_string();
    let job = webhook_settled(&api, &token, &id).await;
    assert_eq!(
        (job["webhook"]["state"].as_str(), job["webhook"]["attempts"].as_i64()),
        (Some("failed"), Some(1)),
        "{job}"
    );
    assert_eq!(job["webhook"]["last_status"], 400);

    // 410 disables the URL: the call stops, and the default URL is removed.
    let gone = crate::common::receiver::Receiver::start(&[], 410).await;
    let r = put_webhook(&api, &token, serde_json::json!({"url": gone.url})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let id = api.upload(&token, &input).await["id"].as_str().unwrap().to_string();
    let job = webhook_settled(&api, &token, &id).await;
    assert_eq!(job["webhook"]["state"], "disabled", "{job}");
    assert_eq!(gone.hits().len(), 1);
    assert_eq!(
        api.get_json(&token, "/v1/me/webhook").await["url"],
        serde_json::Value::Null
    );
    let id = api.upload(&token, &input).await["id"].as_str().unwrap().to_string();
    let done = api.finished(&token, &id).await;
    assert_eq!(done["webhook"], serde_json::Value::Null, "no URL, no call");

    // A job's own URL (multipart field) is used instead of the default, and checked too.
    let own = crate::common::receiver::Receiver::start(&[], 200).await;
    let form = |url: &str| {
        let bytes = std::fs::read(&input).unwrap();
        reqwest::multipart::Form::new()
            .text("webhook_url", url.to_string())
            .part("file", reqwest::multipart::Part::bytes(bytes).file_name("a.m4a"))
    };
    let r = api
        .http
        .post(api.url("/v1/jobs"))
        .bearer_auth(&token)
        .multipart(form("http://10.0.0.1/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "forbidden_url".to_string())
    );
    let r = api
        .http
        .post(api.url("/v1/jobs"))
        .bearer_auth(&token)
        .multipart(form(&own.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = webhook_settled(&api, &token, &id).await;
    assert_eq!(
        (job["webhook"]["state"].as_str(), job["webhook_url"].as_str()),
        (Some("delivered"), Some(own.url.as_str()))
    );
    assert_eq!(own.hits().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_committed_before_a_kill_9_is_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&dir.path().join("a"), &["--fetch-allow-hosts", "127.0.0.1"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    // The first call is held unanswered; the node dies while it waits.
    let receiver = crate::common::receiver::Receiver::start(&[0], 200).await;
    let r = put_webhook(&api, &token, serde_json::json!({"url": receiver.url})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let input = crate::common::tone("push_2s.m4a", 440, 44100, 2.0, 2, &["-c:a", "aac"]);
    let id = api.upload(&token, &input).await["id"].as_str().unwrap().to_string();
    poll(WAIT, "the first call", || async {
        (!receiver.hits().is_empty()).then_some(())
    })
    .await;
    node.kill9();
    node.restart().await;
    let api = Api::new(&node);
    let job = webhook_settled(&api, &token, &id).await;
    assert_eq!(job["webhook"]["state"], "delivered", "{job}");
    let hits = receiver.hits();
    assert!(hits.len() >= 2, "{hits:?}");
    let ids: Vec<String> = hits
        .iter()
        .map(|h| h.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "the same event id every time: {ids:?}"
    );
    assert_eq!(ids[0], format!("{id}.job.finished"));
}

#[tokio::test(flavor = "multi_thread")]
async fn open_streams_end_when_their_token_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let api = Api::new(&node);
    let admin = api.login(ADMIN.0, ADMIN.1).await;
    let patch_admin = |email: &str, admin_flag: bool| {
        api.http
            .patch(api.url(&format!("/v1/users/{email}")))
            .bearer_auth(&admin)
            .json(&serde_json::json!({ "admin": admin_flag }))
            .send()
    };

    // An admin follows every user's jobs, then loses the rights.
    api.create_user(&admin, "eve@example.com", "eve-password").await;
    assert!(
        patch_admin("eve@example.com", true)
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let eve = api.login("eve@example.com", "eve-password").await;
    let mut all = events(&api, &eve, "?all=true", None).await;
    assert!(
        !all.ends_within(Duration::from_secs(3)).await,
        "the stream stays open while its token holds"
    );
    assert!(
        patch_admin("eve@example.com", false)
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert!(
        all.ends_within(Duration::from_secs(5)).await,
        "the demoted admin's every-user stream ended"
    );
    let again = Sse::open(&api.http, &api.url("/v1/events?all=true"), &eve, None).await;
    assert_eq!(
        again.status,
        StatusCode::UNAUTHORIZED,
        "and cannot be reopened with that token"
    );

    // A user's own stream ends when the password changes (the token is revoked).
    api.create_user(&admin, "bob@example.com", "bob-password").await;
    let bob = api.login("bob@example.com", "bob-password").await;
    let mut mine = events(&api, &bob, "", None).await;
    let r = api
        .http
        .post(api.url("/v1/me/password"))
        .bearer_auth(&bob)
        .json(&serde_json::json!({"current_password": "bob-password", "new_password": "bob-password-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        mine.ends_within(Duration::from_secs(5)).await,
        "the stream ended with the password change"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_users_stalled_webhook_receiver_does_not_delay_anothers() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &["--fetch-allow-hosts", "127.0.0.1"]).await;
    let api = Api::new(&node);
    let admin = api.login(ADMIN.0, ADMIN.1).await;
    api.create_user(&admin, "ann@example.com", "ann-password").await;
    let ann = api.login("ann@example.com", "ann-password").await;
    // Ann's receiver takes every call and never answers; the admin's answers at once.
    let stalled = crate::common::receiver::Receiver::start(&[], 0).await;
    let fast = crate::common::receiver::Receiver::start(&[], 200).await;
    assert_eq!(
        put_webhook(&api, &ann, serde_json::json!({"url": stalled.url}))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        put_webhook(&api, &admin, serde_json::json!({"url": fast.url}))
            .await
            .status(),
        StatusCode::OK
    );
    let input = crate::common::tone("push_stall_1s.m4a", 440, 44100, 1.0, 1, &["-c:a", "aac"]);
    // More finished jobs than there are delivery slots in all.
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(api.upload(&ann, &input).await["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        api.finished(&ann, id).await;
    }
    poll(Duration::from_secs(20), "calls to the stalled receiver", || async {
        (!stalled.hits().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = stalled.hits().len();
    assert!(held <= 2, "{held} calls held by one receiver at once");

    let mine = api.upload(&admin, &input).await["id"].as_str().unwrap().to_string();
    api.finished(&admin, &mine).await;
    poll(Duration::from_secs(10), "the other user's webhook, on time", || async {
        fast.hits()
            .iter()
            .any(|h| h.json()["job"]["id"] == mine.as_str())
            .then_some(())
    })
    .await;
}
