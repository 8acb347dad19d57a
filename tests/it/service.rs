//! The service end to end: the real binary over real HTTP, a real SMTP server, real files.

use std::path::Path;
use std::time::Duration;

use crate::common::api::Api;
use crate::common::service::{ADMIN, JWT_SECRET, Node, Smtp, first_link, mail_header, mail_text, poll};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn save(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn login_upload_email_link_download_over_smtp() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path()).await;
    let port = smtp.port.to_string();
    let node = Node::start(
        &dir.path().join("a"),
        &["--smtp-host", "127.0.0.1", "--smtp-port", &port, "--smtp-tls", "none"],
    )
    .await;
    let api = Api::new(&node);
    let input = crate::common::video(12);
    let token = api.login(ADMIN.0, ADMIN.1).await;

    let job = api.upload(&token, &input).await;
    let id = job["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("node-a~"), "the id names the owner node: {id}");
    assert!(
        matches!(job["state"].as_str(), Some("queued" | "converting" | "done")),
        "{job}"
    );
    let done = api.finished(&token, &id).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["progress"], 1.0);

    // Exactly one mail, and its link downloads the MP3 without a login.
    let mails = poll(WAIT, "the email", || async {
        let m = smtp.messages();
        (!m.is_empty()).then_some(m)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.messages().len(), 1, "exactly one mail per job");
    let mail = &mails[0];
    assert!(mail_header(mail, "Subject").unwrap().contains("ready"));
    assert_eq!(mail_header(mail, "To").unwrap(), ADMIN.0);
    let raw = String::from_utf8_lossy(mail);
    assert!(raw.contains("text/html"), "an HTML part too");
    let link = first_link(&mail_text(mail)).expect("a link in the mail");
    let r = reqwest::get(&link).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "audio/mpeg");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"video_12s.mp3\"; filename*=UTF-8''video_12s.mp3"
    );
    let mp3 = r.bytes().await.unwrap();
    let path = save(dir.path(), "link.mp3", &mp3);
    let secs = crate::common::duration(&path);
    assert!((secs - 12.0).abs() < 0.05, "the MP3 lasts {secs} s, the input 12 s");
    assert_eq!(done["mp3_bytes"].as_u64(), Some(mp3.len() as u64), "{done}");
    let stated = done["duration_seconds"].as_f64().unwrap();
    assert!(
        (stated - secs).abs() < 0.05,
        "the job says {stated} s, ffprobe {secs} s"
    );
    assert!(done["warnings"].is_null(), "a whole input has no warnings: {done}");

    // The same bytes through the seed's route and the v1 route; Range works.
    let seed = api
        .http
        .get(api.url(&format!("/download?fid={id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(seed.status(), StatusCode::OK);
    assert_eq!(seed.bytes().await.unwrap(), mp3);
    let part = api
        .http
        .get(api.url(&format!("/v1/jobs/{id}/mp3")))
        .bearer_auth(&token)
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap(), mp3[100..200]);

    // A tampered link is refused.
    let bad = format!("{}x", link);
    assert_eq!(reqwest::get(&bad).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // /metrics counts what happened, in the Prometheus text format.
    let text = reqwest::get(api.url("/metrics")).await.unwrap().text().await.unwrap();
    let value = |series: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{series} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("mp4tomp3_jobs{state=\"done\"}"), 1.0);
    assert_eq!(value("mp4tomp3_emails_total{outcome=\"sent\"}"), 1.0);
    assert_eq!(value("mp4tomp3_conversion_seconds_count"), 1.0);
    assert_eq!(value("mp4tomp3_conversion_realtime_factor_count"), 1.0);
    assert_eq!(value("mp4tomp3_queue_depth"), 0.0);
    assert_eq!(value("mp4tomp3_converter_slots{slot=\"busy\"}"), 0.0);
    assert!(value("mp4tomp3_converter_slots{slot=\"free\"}") >= 1.0);
    assert_eq!(value("mp4tomp3_cluster_members"), 0.0);
    assert_eq!(
        value("mp4tomp3_http_requests_total{route=\"/v1/jobs/{id}/mp3\",method=\"GET\",status=\"206\"}"),
        1.0
    );
    assert!(value("mp4tomp3_http_requests_total{route=\"/v1/links/{token}\",method=\"GET\",status=\"401\"}") >= 1.0);
}

/// `--metrics-listen`: `/metrics` on its own port, and no longer on the API's.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_have_a_port_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &["--metrics-listen", "127.0.0.1:0"]).await;
    let line = node
        .log_text()
        .lines()
        .find(|l| l.contains("mp4tomp3 serving"))
        .unwrap()
        .to_string();
    let at = line.find("metrics=").expect("the metrics address is logged") + "metrics=".len();
    let metrics: std::net::SocketAddr = line[at..].split_whitespace().next().unwrap().parse().unwrap();
    assert_ne!(metrics, node.addr);
    let text = reqwest::get(format!("http://{metrics}/metrics")).await.unwrap();
    assert_eq!(text.status(), StatusCode::OK);
    let text = text.text().await.unwrap();
    assert!(text.contains("mp4tomp3_cluster_replicas 1"), "{text}");
    assert!(text.contains("mp4tomp3_jobs"), "{text}");
    let public = reqwest::get(node.url("/metrics")).await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND, "not on the API's port");
    let other = reqwest::get(format!("http://{metrics}/v1/jobs")).await.unwrap();
    assert_eq!(
        other.status(),
        StatusCode::NOT_FOUND,
        "nothing else on the metrics port"
    );
    // Both stay in the OpenAPI document's terms: the API's port publishes no /metrics.
    let doc: serde_json::Value = reqwest::get(node.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/metrics"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn url_import_from_an_allow_listed_local_server() {
    let dir = tempfile::tempdir().unwrap();
    let input = crate::common::tone("import_440.m4a", 440, 44100, 7.0, 2, &["-c:a", "aac"]);
    let server = crate::common::files::file_server("127.0.0.1", Some(input), None).await;
    let node = Node::start(&dir.path().join("a"), &["--fetch-allow-hosts", "127.0.0.1"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    // The seed's download request: the token in the JSON body.
    let url = format!("http://{}/a.mp4", server.addr);
    let r = api
        .http
        .post(api.url("/v1/jobs"))
        .json(&json!({"url": url, "access_token": token, "bitrate": 128}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["source"], "url");
    let id = job["id"].as_str().unwrap();
    let done = api.finished(&token, id).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["bitrate"], 128);
    let mp3 = api
        .http
        .get(api.url(&format!("/v1/jobs/{id}/mp3")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let path = save(dir.path(), "import.mp3", &mp3);
    assert!((crate::common::duration(&path) - 7.0).abs() < 0.05);
    assert_eq!(crate::common::probe(&path)["streams"][0]["bit_rate"], "128000");
    assert!(server.hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // One .eml per job (no SMTP configured).
    poll(WAIT, "the .eml", || async {
        (node.eml_files().len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ssrf_targets_are_refused_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let input = crate::common::tone("import_440.m4a", 440, 44100, 7.0, 2, &["-c:a", "aac"]);
    // The victim: a loopback server that must never see a connection.
    let victim = crate::common::files::file_server("127.0.0.1", Some(input), None).await;
    let port = victim.addr.port();
    // An allow-listed server (127.0.0.2) that redirects to the victim.
    let redirector =
        crate::common::files::file_server("127.0.0.2", None, Some(format!("http://127.0.0.1:{port}/a.mp4"))).await;
    let node = Node::start(&dir.path().join("a"), &["--fetch-allow-hosts", "127.0.0.2"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    for url in [
        format!("http://127.0.0.1:{port}/a.mp4"),
        format!("http://[::1]:{port}/a.mp4"),
        format!("http://[::ffff:127.0.0.1]:{port}/a.mp4"),
        format!("http://localhost:{port}/a.mp4"),
        format!("http://0x7f000001:{port}/a.mp4"),
        format!("http://2130706433:{port}/a.mp4"),
    ] {
        let r = api.import(&token, &url).await;
        assert_eq!(
            Api::error_code(r).await,
            (StatusCode::UNPROCESSABLE_ENTITY, "forbidden_url".into()),
            "{url}"
        );
    }
    // A name that resolves inside is refused without saying what it resolves to.
    let r = api.import(&token, &format!("http://localhost:{port}/a.mp4")).await;
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("localhost is not a public address"), "{body}");
    assert!(!message.contains("127.0.0.1") && !message.contains("::1"), "{body}");
    for url in [
        "ftp://127.0.0.2/a.mp4",
        "file:///etc/passwd",
        "http://user:pw@127.0.0.2/",
    ] {
        let r = api.import(&token, url).await;
        assert_eq!(
            Api::error_code(r).await,
            (StatusCode::BAD_REQUEST, "invalid_url".into()),
            "{url}"
        );
    }
    // The redirect is followed only after its target is checked: the job fails.
    let url = format!("http://{}/r", redirector.addr);
    let r = api.import(&token, &url).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let job: Value = r.json().await.unwrap();
    let failed = api.finished(&token, job["id"].as_str().unwrap()).await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["error"]["code"], "forbidden_url", "{failed}");
    assert_eq!(
        redirector.hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the redirector was asked"
    );
    assert_eq!(
        victim.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the loopback victim never was"
    );
}

/// A token signed with the test key, with chosen claims.
fn forge(claims: Value, key: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(key.as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_other_users_bad_media_and_oversize_uploads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &["--max-upload-bytes", "300000"]).await;
    let api = Api::new(&node);
    let admin = api.login(ADMIN.0, ADMIN.1).await;
    let input = crate::common::tone("small_440.m4a", 440, 44100, 3.0, 1, &["-c:a", "aac"]);

    // No token, expired, forged, alg none, wrong audience.
    let r = api.http.get(api.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::UNAUTHORIZED, "missing_credentials".into())
    );
    let r = api.http.post(api.url("/upload")).send().await.unwrap();
    assert_eq!(
        (r.status(), r.text().await.unwrap()),
        (StatusCode::UNAUTHORIZED, "missing credentials".into())
    );
    let claims = |exp: u64, aud: &str| json!({"iss": "mp4tomp3", "aud": aud, "sub": ADMIN.0, "exp": exp, "adm": true});
    let expired = forge(claims(now() - 60, "mp4tomp3"), JWT_SECRET);
    let r = api
        .http
        .get(api.url("/v1/jobs"))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::UNAUTHORIZED, "token_expired".into())
    );
    let forged = forge(claims(now() + 60, "mp4tomp3"), "some-other-key-some-other-key-0123456");
    let wrong_aud = forge(claims(now() + 60, "mp4tomp3-download"), JWT_SECRET);
    let none = format!("eyJhbGciOiJub25lIn0.{}.", admin.split('.').nth(1).unwrap());
    for bad in [forged, wrong_aud, none, "garbage".to_string()] {
        let r = api
            .http
            .get(api.url("/v1/jobs"))
            .bearer_auth(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(
            Api::error_code(r).await,
            (StatusCode::UNAUTHORIZED, "invalid_token".into()),
            "{bad}"
        );
    }

    // An admin creates Bob; Bob cannot see or download the admin's job, nor create users.
    let r = api
        .http
        .post(api.url("/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({"email": "bob@example.com", "password": "bob-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = api
        .http
        .post(api.url("/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({"email": "bob@example.com", "password": "bob-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(Api::error_code(r).await, (StatusCode::CONFLICT, "exists".into()));
    let r = api
        .http
        .post(api.url("/v1/auth/token"))
        .json(&json!({"email": "bob@example.com", "password": "bob-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let bob = body["access_token"].as_str().unwrap().to_string();
    let r = api
        .http
        .post(api.url("/v1/users"))
        .bearer_auth(&bob)
        .json(&json!({"email": "eve@example.com", "password": "eve-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(Api::error_code(r).await, (StatusCode::FORBIDDEN, "forbidden".into()));

    let job = api.upload(&admin, &input).await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(api.finished(&admin, id).await["state"], "done");
    assert_eq!(
        Api::error_code(api.job(&bob, id).await).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let r = api
        .http
        .get(api.url(&format!("/v1/jobs/{id}/mp3")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = api
        .http
        .get(api.url(&format!("/download?fid={id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = api
        .http
        .delete(api.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let listed: Value = api
        .http
        .get(api.url("/v1/jobs"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 0);
    let listed: Value = api
        .http
        .get(api.url("/v1/jobs?all=true"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["id"], id);

    // Not an MP4: accepted, then failed with the converter's code, and a mail says why.
    let text = save(dir.path(), "notes.mp4", &[b'x'; 5000]);
    let job = api.upload(&bob, &text).await;
    let failed = api.finished(&bob, job["id"].as_str().unwrap()).await;
    assert_eq!(
        (failed["state"].as_str(), failed["error"]["code"].as_str()),
        (Some("failed"), Some("not_mp4")),
        "{failed}"
    );
    let mails = poll(WAIT, "two mails", || async {
        let m = node.eml_files();
        (m.len() == 2).then_some(m)
    })
    .await;
    let failure = mails
        .iter()
        .find(|m| mail_header(m, "To").unwrap() == "bob@example.com")
        .unwrap();
    assert!(mail_text(failure).contains("not_mp4"));

    // Oversize: 413 from both upload routes, and nothing is left in tmp/.
    let big = save(dir.path(), "big.mp4", &vec![0u8; 400_000]);
    let r = api.upload_as("/v1/jobs", &bob, &big, None).await;
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large".into())
    );
    let r = api.upload_as("/upload", &bob, &big, None).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Streamed without a length (chunked): refused once the cap is passed, and the client
    // still reads the answer (the rest of the body is drained, not reset).
    for _ in 0..3 {
        let stream = futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![0u8; 50_000])));
        let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(stream)).file_name("big.mp4");
        let form = reqwest::multipart::Form::new().part("file", part);
        let r = api
            .http
            .post(api.url("/v1/jobs"))
            .bearer_auth(&bob)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    assert_eq!(std::fs::read_dir(node.data.join("tmp")).unwrap().count(), 0);

    // Exactly one file.
    let form = reqwest::multipart::Form::new().text("bitrate", "128");
    let r = api
        .http
        .post(api.url("/upload"))
        .bearer_auth(&bob)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), r.text().await.unwrap()),
        (StatusCode::BAD_REQUEST, "exactly 1 file required".into())
    );
    let r = api
        .http
        .post(api.url("/v1/jobs"))
        .bearer_auth(&bob)
        .body("x")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = api
        .http
        .get(api.url("/download"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), r.text().await.unwrap()),
        (StatusCode::BAD_REQUEST, "fid is required".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logins_are_rate_limited_and_accounts_lock_out() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        &dir.path().join("a"),
        &["--login-per-minute", "6", "--lockout-after", "3"],
    )
    .await;
    let api = Api::new(&node);
    let wrong = || {
        api.http
            .post(api.url("/login"))
            .basic_auth(ADMIN.0, Some("wrong-password"))
            .send()
    };
    for _ in 0..3 {
        let r = wrong().await.unwrap();
        assert_eq!(
            (r.status(), r.text().await.unwrap()),
            (StatusCode::UNAUTHORIZED, "invalid credentials".into())
        );
    }
    // Locked now, even with the right password.
    let r = api
        .http
        .post(api.url("/v1/auth/token"))
        .json(&json!({"email": ADMIN.0, "password": ADMIN.1}))
        .send()
        .await
        .unwrap();
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 200, "locked for minutes: {retry}");
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::TOO_MANY_REQUESTS, "too_many_requests".into())
    );
    // The address's budget (6/min) runs out too, for any account.
    let mut limited = false;
    for _ in 0..4 {
        let r = api
            .http
            .post(api.url("/login"))
            .basic_auth("nobody@example.com", Some("whatever1"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
            limited = true;
        }
    }
    assert!(limited, "the per-address limit applies");
}

/// No user enumeration by timing: a login for an unknown email costs what a wrong password
/// for a real one costs (both run one Argon2 verification), within noise.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_users_and_wrong_passwords_take_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        &dir.path().join("a"),
        &["--login-per-minute", "100000", "--lockout-after", "100000"],
    )
    .await;
    let api = Api::new(&node);
    let timed = |email: &'static str| {
        let api = &api;
        async move {
            let start = std::time::Instant::now();
            let r = api
                .http
                .post(api.url("/login"))
                .basic_auth(email, Some("wrong-password"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(r.text().await.unwrap(), "invalid credentials", "one answer for both");
            start.elapsed().as_secs_f64()
        }
    };
    timed(ADMIN.0).await; // warm-up: the first verification builds the dummy hash
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        unknown.push(timed("nobody@example.com").await);
        wrong.push(timed(ADMIN.0).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (u, w) = (median(&mut unknown), median(&mut wrong));
    // Without the dummy verification an unknown user answers in well under a millisecond,
    // a wrong password in tens of milliseconds: a ratio near 0.01. The other tests of this
    // binary run alongside (conversions on 2 cores), so the band is wide: it only has to
    // tell "one argon2 verification each" from "none for unknown users".
    let ratio = u / w;
    assert!(
        (0.5..2.0).contains(&ratio),
        "unknown user {u:.4} s, wrong password {w:.4} s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_conversions_then_restart_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&dir.path().join("a"), &["--converter-slots", "1"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let input = crate::common::video(90);
    let mut ids = Vec::new();
    for n in 0..4 {
        let r = api
            .upload_as("/v1/jobs", &token, &input, Some(&format!("key-{n}")))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let job: Value = r.json().await.unwrap();
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    // Wait until a conversion is under way, then crash.
    poll(WAIT, "a conversion in progress", || async {
        let job: Value = api.job(&token, &ids[0]).await.json().await.ok()?;
        (job["state"] == "converting" && job["progress"].as_f64()? > 0.0).then_some(())
    })
    .await;
    node.kill9();
    node.restart().await;
    let api = Api::new(&node);
    // The client retries its submissions (it never saw some answers): same jobs come back.
    for (n, id) in ids.iter().enumerate() {
        let r = api
            .upload_as("/v1/jobs", &token, &input, Some(&format!("key-{n}")))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "a retry is not a new job");
        let job: Value = r.json().await.unwrap();
        assert_eq!(job["id"].as_str(), Some(id.as_str()));
    }
    for id in &ids {
        let done = api.finished(&token, id).await;
        assert_eq!(done["state"], "done", "{done}");
        let mp3 = api
            .http
            .get(api.url(&format!("/v1/jobs/{id}/mp3")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let path = save(dir.path(), "out.mp3", &mp3);
        assert!((crate::common::duration(&path) - 90.0).abs() < 0.05);
    }
    let listed: Value = api
        .http
        .get(api.url("/v1/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 4, "no job lost or duplicated");
    let mails = poll(WAIT, "four mails", || async {
        let m = node.eml_files();
        (m.len() >= 4).then_some(m)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(node.eml_files().len(), 4, "one mail per job");
    let mut ids_mailed: Vec<String> = mails.iter().map(|m| mail_header(m, "Message-ID").unwrap()).collect();
    ids_mailed.sort();
    ids_mailed.dedup();
    assert_eq!(ids_mailed.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_conversions_finish_and_cancel_deletes_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&dir.path().join("a"), &["--converter-slots", "1", "--grace", "60s"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let input = crate::common::video(90);
    let first = api.upload(&token, &input).await;
    let second = api.upload(&token, &input).await;
    let (first, second) = (
        first["id"].as_str().unwrap().to_string(),
        second["id"].as_str().unwrap().to_string(),
    );
    // Cancel the queued one: its files go, its state says canceled; deleting again removes it.
    let r = api
        .http
        .delete(api.url(&format!("/v1/jobs/{second}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "canceled");
    assert!(!node.data.join("jobs").join(&second).exists());
    let r = api
        .http
        .delete(api.url(&format!("/v1/jobs/{second}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(api.job(&token, &second).await.status(), StatusCode::NOT_FOUND);

    poll(WAIT, "the conversion to start", || async {
        let job: Value = api.job(&token, &first).await.json().await.ok()?;
        (job["state"] == "converting").then_some(())
    })
    .await;
    let status = node.terminate(Duration::from_secs(60));
    assert!(status.success(), "clean exit: {status}");
    let log = node.log_text();
    assert!(log.contains("running conversions finished"), "{log}");
    node.restart().await;
    let api = Api::new(&node);
    let job: Value = api.job(&token, &first).await.json().await.unwrap();
    assert_eq!(job["state"], "done", "finished before the exit, not resumed: {job}");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_add_works_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mp4tomp3"))
        .args(["user", "add", "Carol@Example.com", "--data-dir"])
        .arg(&node.data)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"carol-password\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let api = Api::new(&node);
    let token = api.login("carol@example.com", "carol-password").await;
    let r = api
        .http
        .get(api.url("/v1/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A short password is refused with one line and exit 2.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mp4tomp3"))
        .args(["user", "add", "dan@example.com", "--data-dir"])
        .arg(&node.data)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"short\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_running_job_stops_its_conversion_and_frees_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &["--converter-slots", "1"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let long = api.upload(&token, &crate::common::video(600)).await;
    let id = long["id"].as_str().unwrap().to_string();
    poll(WAIT, "the conversion to make progress", || async {
        let job: Value = api.job(&token, &id).await.json().await.ok()?;
        (job["state"] == "converting" && job["progress"].as_f64()? > 0.0).then_some(())
    })
    .await;
    let r = api
        .http
        .delete(api.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The slot comes free long before the 10-minute input could have been converted.
    let next = api
        .upload(
            &token,
            &crate::common::tone("small_440.m4a", 440, 44100, 3.0, 1, &["-c:a", "aac"]),
        )
        .await;
    let done = api.finished(&token, next["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "done");
    let job: Value = api.job(&token, &id).await.json().await.unwrap();
    assert_eq!(job["state"], "canceled", "{job}");
    assert!(!node.data.join("jobs").join(&id).exists(), "its files are gone");
    poll(WAIT, "the finished job's mail", || async {
        (node.eml_files().len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        node.eml_files().len(),
        1,
        "no mail for the canceled job, one for the other"
    );
}

/// The audit's burst: 100 uploads at once → 100 done jobs, 100 emails (one per job, each to
/// its owner only), and nothing left in `tmp/`.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_uploads_make_a_hundred_jobs_and_a_hundred_emails() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path()).await;
    let port = smtp.port.to_string();
    let data = dir.path().join("a");
    let node = Node::start(
        &data,
        &["--smtp-host", "127.0.0.1", "--smtp-port", &port, "--smtp-tls", "none"],
    )
    .await;
    let api = std::sync::Arc::new(Api::new(&node));
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let bytes = std::fs::read(crate::common::video(12)).unwrap();
    let uploads = (0..100).map(|i| {
        let (api, token, bytes) = (api.clone(), token.clone(), bytes.clone());
        tokio::spawn(async move {
            let form = reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(format!("clip-{i}.mp4")),
            );
            let r = api
                .http
                .post(api.url("/v1/jobs"))
                .bearer_auth(&token)
                .multipart(form)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED, "upload {i}");
            r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
        })
    });
    let mut ids = Vec::new();
    for upload in uploads.collect::<Vec<_>>() {
        ids.push(upload.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100, "100 distinct jobs");
    for id in &ids {
        assert_eq!(api.finished(&token, id).await["state"], "done", "{id}");
    }
    let mails = poll(WAIT, "100 emails", || async {
        let m = smtp.messages();
        (m.len() >= 100).then_some(m)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.messages().len(), 100, "one email per job, no more");
    let mut mailed: Vec<String> = mails
        .iter()
        .map(|m| {
            assert_eq!(
                mail_header(m, "X-RcptTo").as_deref(),
                Some(ADMIN.0),
                "to the owner only"
            );
            let id = mail_header(m, "Message-ID").unwrap();
            id.trim_matches(['<', '>']).trim_end_matches("@mp4tomp3").to_string()
        })
        .collect();
    mailed.sort();
    assert_eq!(mailed, ids, "each job's Message-ID exactly once");
    let tmp: Vec<_> = std::fs::read_dir(data.join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "tmp/ is empty after the burst: {tmp:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_upload_is_done_with_a_warning_in_the_job_and_the_email() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let whole = std::fs::read(crate::common::fragmented("service_cut_frag_8s.m4a", 8.0)).unwrap();
    // A recording cut short: half of it converts.
    let cut = save(dir.path(), "cut.m4a", &whole[..whole.len() / 2]);
    let id = api.upload(&token, &cut).await["id"].as_str().unwrap().to_string();
    let done = api.finished(&token, &id).await;
    assert_eq!(done["state"], "done", "{done}");
    let warnings = done["warnings"].as_str().unwrap_or_else(|| panic!("a warning: {done}"));
    assert!(
        warnings.starts_with("recovered ") && warnings.ends_with("(the file ends early)"),
        "{warnings}"
    );
    let mp3 = api.mp3(&token, &id).await;
    let secs = crate::common::duration(&save(dir.path(), "cut.mp3", &mp3));
    assert!((2.5..5.5).contains(&secs), "about half of 8 s: {secs}");
    let mail = poll(WAIT, "the .eml", || async {
        let files = node.eml_files();
        (files.len() == 1).then(|| files[0].clone())
    })
    .await;
    let text = mail_text(&mail);
    assert!(text.contains(&format!("the MP3 is partial: {warnings}.")), "{text}");
}

/// `mp4tomp3 backup` while the node serves, then `restore` into a new data dir: a node
/// started on it has the users, the job, its MP3 and its idempotency key.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_while_serving_restores_users_jobs_and_mp3s() {
    let dir = tempfile::tempdir().unwrap();
    let input = crate::common::tone("backup_440.m4a", 440, 44100, 2.0, 1, &["-c:a", "aac"]);
    let data = dir.path().join("a");
    let mut node = Node::start(&data, &[]).await;
    let api = Api::new(&node);
    let admin = api.login(ADMIN.0, ADMIN.1).await;
    api.create_user(&admin, "bob@example.com", "bob-password-1").await;
    let bob = api.login("bob@example.com", "bob-password-1").await;
    let r = api.upload_as("/v1/jobs", &bob, &input, Some("backup-key")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.finished(&bob, &id).await;
    let mp3 = api.mp3(&bob, &id).await;
    let backup = dir.path().join("backup");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mp4tomp3"))
            .args(args)
            .env_remove("MP4TOMP3_DATA_DIR")
            .output()
            .unwrap()
    };
    let out = run(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--to",
        backup.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backed up 2 database(s)"));
    // Work after the backup is not in it.
    let later = api.upload(&bob, &input).await["id"].as_str().unwrap().to_string();
    node.kill9();
    // Restoring onto the served data dir is refused while it holds data (without --force).
    let restored = dir.path().join("restored");
    let refused = run(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    let out = run(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = Node::start(&restored, &[]).await;
    let api = Api::new(&again);
    let bob = api.login("bob@example.com", "bob-password-1").await;
    assert_eq!(api.finished(&bob, &id).await["state"], "done");
    assert_eq!(api.mp3(&bob, &id).await, mp3, "the same MP3");
    assert_eq!(api.job(&bob, &later).await.status(), StatusCode::NOT_FOUND);
    let retry = api.upload_as("/v1/jobs", &bob, &input, Some("backup-key")).await;
    assert_eq!(retry.status(), StatusCode::OK, "the key still names the job");
    assert_eq!(retry.json::<serde_json::Value>().await.unwrap()["id"], id.as_str());
}

/// A gauge's value in a node's `/metrics`.
async fn gauge(node: &Node, line_start: &str) -> Option<f64> {
    let text = reqwest::get(node.url("/metrics")).await.ok()?.text().await.ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_job_borrows_free_slots_and_a_short_one_does_not_wait_for_them() {
    // Two slots, one long job: it encodes its segments on both. A short job then takes
    // the lent slot back at the long job's next segment and is done long before it.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &["--converter-slots", "2"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let long = crate::common::tone(
        "mixed-long-30min.m4a",
        330,
        44_100,
        1800.0,
        2,
        &["-c:a", "aac", "-b:a", "96k"],
    );
    let short = crate::common::tone("mixed-short-30s.m4a", 550, 44_100, 30.0, 2, &["-c:a", "aac"]);
    let long_job = api.upload(&token, &long).await;
    let long_id = long_job["id"].as_str().unwrap().to_string();
    let lent = r#"mp4tomp3_converter_slots{slot="lent"}"#;
    poll(WAIT, "the long job encoding on the free slot too", || async {
        (gauge(&node, lent).await? >= 1.0).then_some(())
    })
    .await;
    let short_job = api.upload(&token, &short).await;
    let short_id = short_job["id"].as_str().unwrap().to_string();
    let done = api.finished(&token, &short_id).await;
    assert_eq!(done["state"], "done", "{done}");
    let long_now: Value = api.job(&token, &long_id).await.json().await.unwrap();
    assert_ne!(long_now["state"], "done", "the short job finished first: {long_now}");
    assert_eq!(long_now["state"], "converting", "{long_now}");
    let done = api.finished(&token, &long_id).await;
    assert_eq!(done["state"], "done", "{done}");
    let mp3 = api.mp3(&token, &long_id).await;
    let path = save(dir.path(), "long.mp3", &mp3);
    assert!(
        (crate::common::duration(&path) - 1800.0).abs() < 0.05,
        "gapless: {}",
        crate::common::duration(&path)
    );
    assert_eq!(gauge(&node, lent).await, Some(0.0), "every lent slot came back");
}
