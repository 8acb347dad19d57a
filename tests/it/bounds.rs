//! Hostile clients: every request is bounded before it costs anything (issue: hostile
//! clients and full disks). Runs the real binary over HTTP.

use std::time::Duration;

use crate::common::api::Api;
use crate::common::service::{ADMIN, Node};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, IF_RANGE, LAST_MODIFIED, RANGE};

/// POSTs a JSON body of about `len` bytes (`{"url":"aaa…`) to `/v1/jobs` over a raw
/// connection, announced with a Content-Length or chunked, writing 1 MiB pieces while
/// reading: the server may answer and close long before the body is sent. Returns the
/// answer's status and error code; every answer must be a refusal that says
/// `Connection: close`.
async fn post_json(node: &Node, token: Option<&str>, len: usize, announced: bool) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let framing = if announced {
        format!("Content-Length: {}\r\n", len + 8)
    } else {
        "Transfer-Encoding: chunked\r\n".to_string()
    };
    let head = format!("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}{framing}\r\n");
    let send = async move {
        let piece = vec![b'a'; 1 << 20];
        let frame = |data: &[u8]| {
            if announced {
                data.to_vec()
            } else {
                [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat()
            }
        };
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&frame(b"{\"url\":\"")).await?;
        for _ in 0..len / piece.len() {
            writer.write_all(&frame(&piece)).await?;
        }
        Ok::<_, std::io::Error>(writer)
    };
    let receive = async move {
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n")
                && let Some(length) = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                && body.len() >= length.parse::<usize>().unwrap_or(0)
            {
                break;
            }
        }
        answer
    };
    let (sent, answer) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(60), send),
        tokio::time::timeout(Duration::from_secs(60), receive)
    );
    drop(sent);
    let answer = String::from_utf8_lossy(&answer.expect("an answer in time")).to_string();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(
        head.to_ascii_lowercase().contains("\r\nconnection: close"),
        "a refusal that leaves the body unread closes the connection, and says so: {head}"
    );
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status, json["error"]["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_are_bounded_and_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let before = node.rss();
    const BIG: usize = 200 << 20;
    // No token: 401, announced or chunked.
    for announced in [true, false] {
        assert_eq!(
            post_json(&node, None, BIG, announced).await,
            (401, "missing_credentials".into()),
            "no token, announced: {announced}"
        );
        // A bad token in the header: 401 before the body.
        assert_eq!(post_json(&node, Some("not-a-token"), BIG, announced).await.0, 401);
        // A valid token: 413.
        assert_eq!(
            post_json(&node, Some(&token), BIG, announced).await,
            (413, "too_large".into()),
            "valid token, announced: {announced}"
        );
    }
    // Other JSON routes: 64 KiB at most.
    let big_login = serde_json::json!({"email": "a@b.c", "password": "x".repeat(100 << 10)});
    let r = api
        .http
        .post(api.url("/v1/auth/token"))
        .json(&big_login)
        .send()
        .await
        .unwrap();
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large".into())
    );
    let r = api
        .http
        .post(api.url("/v1/users"))
        .bearer_auth(&token)
        .json(&big_login)
        .send()
        .await
        .unwrap();
    assert_eq!(Api::error_code(r).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    let r = api
        .http
        .post(api.url("/v1/users"))
        .json(&big_login)
        .send()
        .await
        .unwrap();
    assert_eq!(
        Api::error_code(r).await.0,
        StatusCode::UNAUTHORIZED,
        "no token: 401 first"
    );
    let grown = node.rss().saturating_sub(before);
    assert!(grown < 16 << 20, "server RSS grew by {grown} bytes");
    // A small JSON import with the token in the body (the seed's form) still works. (A
    // fresh connection: the refusals above close theirs, which a pooled client may not
    // have noticed yet.)
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let r = fresh
        .post(api.url("/v1/jobs"))
        .json(&serde_json::json!({"url": "http://127.0.0.1:9/a.mp4", "access_token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "forbidden_url".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let r = api
        .http
        .get(api.url("/v1/jobs"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(AUTHORIZATION, "Bearer forged")
        .send()
        .await
        .unwrap();
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    let r = api
        .http
        .get(api.url("/v1/jobs"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "one header still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_follow_rfc_9110() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let input = crate::common::tone("range.m4a", 440, 22_050, 2.0, 1, &["-c:a", "aac"]);
    let job = api.upload(&token, &input).await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(api.finished(&token, id).await["state"], "done");
    let whole = api.mp3(&token, id).await;
    let url = api.url(&format!("/v1/jobs/{id}/mp3"));
    let get = |headers: Vec<(reqwest::header::HeaderName, String)>| {
        let mut req = api.http.get(&url).bearer_auth(&token);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        req.send()
    };
    let r = get(vec![(RANGE, "bytes=0-9".into())]).await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let modified = r.headers()[LAST_MODIFIED].to_str().unwrap().to_string();
    assert_eq!(r.bytes().await.unwrap(), whole[..10]);
    // A matching If-Range keeps the range; a stale one (or an ETag we never gave) gets all.
    let r = get(vec![(RANGE, "bytes=0-9".into()), (IF_RANGE, modified.clone())])
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    for stale in ["Mon, 01 Jan 2024 00:00:00 GMT", "\"some-etag\""] {
        let r = get(vec![(RANGE, "bytes=0-9".into()), (IF_RANGE, stale.into())])
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "If-Range {stale}");
        assert_eq!(r.bytes().await.unwrap(), whole);
    }
    // Several ranges, or another unit: the whole file.
    for range in ["bytes=0-1,5-6", "items=0-9"] {
        let r = get(vec![(RANGE, range.into())]).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "Range {range}");
        assert_eq!(r.headers()["content-type"], "audio/mpeg");
        assert_eq!(r.bytes().await.unwrap(), whole);
    }
    // Outside the file: 416 as a JSON error naming the size.
    let r = get(vec![(RANGE, format!("bytes={}-", whole.len() + 10))])
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()[CONTENT_RANGE], format!("bytes */{}", whole.len()).as_str());
    assert_eq!(r.headers()["content-type"], "application/json");
}

/// Reads until the server closes the connection (or `limit` passes): what it sent.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok().map(|()| got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off_and_their_uploads_deleted() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        &dir.path().join("a"),
        &[
            "--header-timeout",
            "2s",
            "--slow-upload-window",
            "2s",
            "--min-upload-rate",
            "1024",
            "--max-connections-per-ip",
            "6",
        ],
    )
    .await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;

    // Headers trickled one byte every 300 ms: closed about 2 s in, while still sending.
    let mut slow = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let started = std::time::Instant::now();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for byte in request {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let closed = cut || read_until_closed(&mut slow, Duration::from_secs(3)).await.is_some();
    assert!(
        closed,
        "a trickling client is still connected after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut off after {:?}",
        started.elapsed()
    );

    // An idle keep-alive connection is closed after the header timeout.
    let mut idle = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = read_until_closed(&mut idle, Duration::from_secs(8))
        .await
        .expect("the idle connection is closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "kept alive for a while first"
    );

    // An upload at 100 bytes per second is dropped and its staged file deleted.
    let mut upload = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: 1000000\r\n\r\n\
         --XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n"
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    let tmp = node.data.join("tmp");
    let started = std::time::Instant::now();
    let mut staged_seen = false;
    let mut dropped = false;
    while started.elapsed() < Duration::from_secs(12) {
        if upload.write_all(&[b'a'; 100]).await.is_err() {
            dropped = true;
            break;
        }
        staged_seen |= std::fs::read_dir(&tmp).unwrap().count() > 0;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(staged_seen, "the upload was being staged");
    if !dropped {
        let answer = read_until_closed(&mut upload, Duration::from_secs(5)).await;
        assert!(
            answer.is_some(),
            "a 100 B/s upload is still open after {:?}",
            started.elapsed()
        );
    }
    crate::common::service::poll(Duration::from_secs(10), "the slow upload's staged file to go", || {
        let empty = std::fs::read_dir(&tmp).unwrap().count() == 0;
        async move { empty.then_some(()) }
    })
    .await;

    // At most 6 connections from one address: a 7th is closed at once, and a place
    // frees when one closes.
    let mut open = Vec::new();
    for _ in 0..6 {
        open.push(tokio::net::TcpStream::connect(node.addr).await.unwrap());
    }
    let mut seventh = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let refused = read_until_closed(&mut seventh, Duration::from_millis(1500)).await;
    assert_eq!(
        refused.as_deref(),
        Some(&b""[..]),
        "the 7th connection is closed without an answer"
    );
    drop(open);
    crate::common::service::poll(
        Duration::from_secs(5),
        "a connection after the others closed",
        || async {
            reqwest::get(node.url("/healthz"))
                .await
                .ok()
                .filter(|r| r.status() == 200)
        },
    )
    .await;
}

/// What Python's `urllib` (a client that sends the whole body before it reads the answer)
/// sees for a multipart POST of `size` bytes to `url` with no token: `status retry-after`,
/// or the exception it met.
fn urllib_post(url: &str, size: usize) -> String {
    let script = r#"
import sys, urllib.request, urllib.error
url, size = sys.argv[1], int(sys.argv[2])
boundary = "b0undary"
body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n"
        f"Content-Type: video/mp4\r\n\r\n").encode() + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
req = urllib.request.Request(url, data=body, method="POST",
    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code, e.headers.get("Retry-After") or "-", e.headers.get("Connection") or "-")
except Exception as e:
    print("exception", type(e).__name__, e)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, url, &size.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_given_before_the_body_is_read_reaches_every_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &["--max-upload-bytes", "1000000"]).await;
    let url = node.url("/v1/jobs");
    // 401 (no token; urllib) and 413 (over the limit, with a token; curl) come before the
    // body is read.
    for size in [8 << 20, 3 << 20] {
        let answer = tokio::task::spawn_blocking({
            let url = url.clone();
            move || urllib_post(&url, size)
        })
        .await
        .unwrap();
        assert!(answer.starts_with("401 "), "urllib, {size} bytes: {answer}");
    }
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![0u8; 8 << 20]).unwrap();
    let curl = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg("-F")
        .arg(format!("file=@{}", big.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "413", "curl");

    // A raw socket that writes its whole 8 MiB body first, then reads.
    let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let body = vec![b'x'; 8 << 20];
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&body)
        .await
        .expect("the whole body is taken (and discarded)");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .expect("the answer, then a clean close (no reset)");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
}
