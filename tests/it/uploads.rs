//! Resumable uploads (tus 1.0.0) at /v1/uploads, driven by the tus project's own Python
//! client (tuspy) and by hand for the protocol's refusals.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::api::Api;
use crate::common::service::{ADMIN, Node, poll};
use reqwest::StatusCode;

/// A valid M4A (2 s of tone) followed by a `free` box of `extra` pseudo-random bytes: a big
/// file that converts quickly, and whose every byte matters for the identity check.
fn big_input(dir: &Path, extra: u64, seed: u64) -> PathBuf {
    let tone = crate::common::tone("uploads_2s.m4a", 440, 44100, 2.0, 2, &["-c:a", "aac"]);
    let path = dir.join(format!("big-{extra}.m4a"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    out.write_all(&std::fs::read(tone).unwrap()).unwrap();
    let size = 16 + extra;
    out.write_all(&1u32.to_be_bytes()).unwrap();
    out.write_all(b"free").unwrap();
    out.write_all(&size.to_be_bytes()).unwrap();
    let mut x = seed | 1;
    let mut block = vec![0u8; 1 << 16];
    let mut left = extra;
    while left > 0 {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
    path
}

fn client(node: &Node, token: &str, file: &Path, url_file: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/uploads/tus_client.py"))
        .arg(node.url("/v1/uploads"))
        .arg(token)
        .arg(file)
        .arg(url_file)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs the client to the end; its `done` line's job URL.
fn finish(mut c: Command) -> String {
    let out = c.output().expect("python3 with tuspy (pip install tuspy)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = text
        .lines()
        .find(|l| l.starts_with("done "))
        .unwrap_or_else(|| panic!("{text}"));
    line.split_whitespace().nth(2).unwrap_or("").to_string()
}

/// The stored input of job `id` equals `file`, byte for byte.
fn same_input(node_dir: &Path, id: &str, file: &Path) {
    let stored = node_dir.join("jobs").join(id).join("input.mp4");
    let (a, b) = (std::fs::read(&stored).unwrap(), std::fs::read(file).unwrap());
    assert_eq!(a.len(), b.len());
    assert!(a == b, "the stored input differs from the file sent");
}

/// Starts a client (resuming the upload in `url_file` if there is one) and returns once it
/// has set the upload up (created it, or asked its offset).
async fn started(node: &Node, token: &str, file: &Path, url_file: &Path, chunk: &str) -> std::process::Child {
    let resume = url_file.with_extension("resume");
    let mut args = vec!["--chunk".to_string(), chunk.to_string()];
    if url_file.exists() {
        std::fs::rename(url_file, &resume).unwrap();
        args.extend(["--resume-from".to_string(), resume.to_str().unwrap().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = client(node, token, file, url_file, &args).spawn().unwrap();
    poll(Duration::from_secs(20), "the client to set the upload up", || async {
        url_file.exists().then_some(())
    })
    .await;
    child
}

async fn head(api: &Api, token: &str, url: &str) -> reqwest::Response {
    api.http
        .head(url)
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn tuspy_uploads_200_mb_that_become_a_job_with_a_byte_identical_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    // Inputs are kept, to compare them with the files sent.
    let node = Node::start(&data, &["--keep-inputs"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let file = big_input(dir.path(), 200 << 20, 7);
    let url_file = dir.path().join("url");
    let meta = ["--meta", "filename=talk.m4a", "--meta", "bitrate=128"];
    let mut args = vec!["--chunk", "16777216", "--checksum"];
    args.extend(meta);
    let job_url = finish(client(&node, &token, &file, &url_file, &args));
    let id = job_url
        .strip_prefix("/v1/jobs/")
        .unwrap_or_else(|| panic!("a job URL: {job_url:?}"))
        .to_string();
    let upload_url = std::fs::read_to_string(&url_file).unwrap();
    assert!(
        upload_url.ends_with(&id),
        "the job has the upload's id: {upload_url} {id}"
    );
    let done = api.finished(&token, &id).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        (done["file_name"].as_str(), done["bitrate"].as_i64()),
        (Some("talk.m4a"), Some(128))
    );
    same_input(&data, &id, &file);
    // HEAD names the job from now on.
    let r = head(&api, &token, &upload_url).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["upload-offset"].to_str().unwrap(),
        (file.metadata().unwrap().len()).to_string()
    );
    assert_eq!(r.headers()["mp4tomp3-job"].to_str().unwrap(), job_url);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_at_random_points_and_across_a_server_kill_resumes_to_an_identical_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let mut node = Node::start(&data, &["--keep-inputs"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let file = big_input(dir.path(), 128 << 20, 11);
    let size = file.metadata().unwrap().len();
    let url_file = dir.path().join("url");
    // A seeded schedule of client kills (printed, so a failure can be replayed).
    let seed: u64 = std::env::var("UPLOAD_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261201);
    eprintln!("UPLOAD_CUT_SEED={seed}");
    let mut x = seed;
    let mut offsets = Vec::new();
    for _ in 0..3 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let after = Duration::from_millis(20 + (x >> 33) % 300);
        // Small chunks (one request each): the upload takes a few seconds on loopback.
        let mut child = started(&node, &token, &file, &url_file, "262144").await;
        // On a loaded machine the client may need a while for its first chunk: the cut
        // comes `after` it has sent something, so each client is cut mid-upload.
        let url = std::fs::read_to_string(&url_file).unwrap();
        let before = offsets.last().copied().unwrap_or(0);
        poll(Duration::from_secs(30), "the client to send a chunk", || async {
            let r = head(&api, &token, &url).await;
            let now: u64 = r.headers()["upload-offset"].to_str().ok()?.parse().ok()?;
            (now > before).then_some(())
        })
        .await;
        tokio::time::sleep(after).await;
        let _ = child.kill(); // SIGKILL: the client dies mid-request
        let _ = child.wait();
        let r = head(&api, &token, &url).await;
        assert_eq!(r.status(), StatusCode::OK);
        let offset: u64 = r.headers()["upload-offset"].to_str().unwrap().parse().unwrap();
        offsets.push(offset);
    }
    eprintln!("offsets after each cut: {offsets:?}");
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "each client got further: {offsets:?}"
    );
    assert!(offsets.iter().all(|o| *o < size), "cut before the end: {offsets:?}");

    // The server is killed while a client sends; after the restart HEAD answers an offset
    // whose bytes are all on disk, and the upload finishes from there.
    let mut child = started(&node, &token, &file, &url_file, "262144").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    node.kill9();
    let _ = child.kill();
    let _ = child.wait();
    node.restart().await;
    let api = Api::new(&node);
    // The restarted node listens on another port: the same upload, at its new address.
    let path = std::fs::read_to_string(&url_file).unwrap();
    let path = &path[path.find("/v1/uploads/").unwrap()..];
    let url = node.url(path);
    std::fs::write(&url_file, &url).unwrap();
    let r = head(&api, &token, &url).await;
    let offset: u64 = r.headers()["upload-offset"].to_str().unwrap().parse().unwrap();
    assert!(offset >= *offsets.last().unwrap() && offset <= size, "{offset}");
    let id = url.rsplit('/').next().unwrap().to_string();
    let part = std::fs::read(data.join("uploads").join(&id)).unwrap();
    let whole = std::fs::read(&file).unwrap();
    assert!(part.len() as u64 >= offset, "the recorded bytes are on disk");
    assert!(
        part[..offset as usize] == whole[..offset as usize],
        "and they are the file's"
    );
    let resume = dir.path().join("resume");
    std::fs::write(&resume, &url).unwrap();
    let resume = resume.to_str().unwrap().to_string();
    let job_url = finish(client(
        &node,
        &token,
        &file,
        &url_file,
        &["--chunk", "8388608", "--resume-from", &resume],
    ));
    assert_eq!(job_url, format!("/v1/jobs/{id}"));
    let done = api.finished(&token, &id).await;
    assert_eq!(done["state"], "done", "{done}");
    same_input(&data, &id, &file);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_sent_through_another_node_is_stored_on_the_node_that_created_it() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = crate::common::service::cluster_with(dir.path(), &[1, 1], &["--keep-inputs"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let (api_a, api_b) = (Api::new(a), Api::new(b));
    let token_a = api_a.login(ADMIN.0, ADMIN.1).await;
    let token_b = api_b.login(ADMIN.0, ADMIN.1).await;
    let file = big_input(dir.path(), 96 << 20, 13);
    let size = file.metadata().unwrap().len();

    // Created on A (its id names A); every later request goes to B.
    let r = tus(&api_a, reqwest::Method::POST, &api_a.url("/v1/uploads"), &token_a)
        .header("upload-length", size.to_string())
        .header("upload-metadata", "filename dmlhLWIubTRh")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let path = r.headers()["location"].to_str().unwrap().to_string();
    let id = path.rsplit('/').next().unwrap().to_string();
    let via_b = api_b.url(&path);
    let url_file = dir.path().join("url");
    std::fs::write(&url_file, &via_b).unwrap();

    // A client cut off while B forwards its bytes: A keeps what B passed on.
    let mut child = started(b, &token_b, &file, &url_file, "4194304").await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let _ = child.kill();
    let _ = child.wait();
    let r = head(&api_b, &token_b, &via_b).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["upload-length"].to_str().unwrap(), size.to_string());
    let offset: u64 = r.headers()["upload-offset"].to_str().unwrap().parse().unwrap();
    assert!(offset < size, "cut before the end: {offset}");
    // B answers as A would: a wrong offset is 409, someone else's upload 404.
    let r = tus(&api_b, reqwest::Method::PATCH, &via_b, &token_b)
        .header("upload-offset", (offset + 1).to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::CONFLICT, "offset_mismatch".to_string())
    );
    api_b.create_user(&token_b, "bob@example.com", "bob-password-1").await;
    let bob = api_b.login("bob@example.com", "bob-password-1").await;
    let r = tus(&api_b, reqwest::Method::HEAD, &via_b, &bob).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The cut request's writer on A ended with it (not 30 s later, when idle): the next
    // PATCH through B is taken within seconds (409 upload_busy until then).
    let whole = std::fs::read(&file).unwrap();
    poll(Duration::from_secs(5), "the cut PATCH's writer to end", || async {
        let r = head(&api_b, &token_b, &via_b).await;
        let at: usize = r.headers()["upload-offset"].to_str().unwrap().parse().unwrap();
        let r = tus(&api_b, reqwest::Method::PATCH, &via_b, &token_b)
            .header("upload-offset", at.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(whole[at..at + 1000].to_vec())
            .send()
            .await
            .unwrap();
        (r.status() == StatusCode::NO_CONTENT).then_some(())
    })
    .await;

    // tuspy finishes through B, with checksums; the job and its input are A's.
    let resume = dir.path().join("resume");
    std::fs::write(&resume, &via_b).unwrap();
    let resume = resume.to_str().unwrap().to_string();
    let job_url = finish(client(
        b,
        &token_b,
        &file,
        &url_file,
        &["--chunk", "6000000", "--checksum", "--resume-from", &resume],
    ));
    assert_eq!(job_url, format!("/v1/jobs/{id}"));
    assert!(!b.data.join("uploads").join(&id).exists(), "nothing stored on B");
    let done = api_b.finished(&token_b, &id).await;
    assert_eq!(
        (done["state"].as_str(), done["file_name"].as_str()),
        (Some("done"), Some("via-b.m4a"))
    );
    same_input(&a.data, &id, &file);
    let r = head(&api_b, &token_b, &via_b).await;
    assert_eq!(r.headers()["mp4tomp3-job"].to_str().unwrap(), job_url);

    // A keyed upload finished on A, created again with the same key through B (a client
    // whose answer was lost, retrying on another pod): B answers A's upload and job, and
    // makes no second job.
    let clip = crate::common::tone("keyed-tus.m4a", 440, 44100, 1.0, 2, &[]);
    let bytes = std::fs::read(&clip).unwrap();
    let create = |api: &Api, token: &str| {
        tus(api, reqwest::Method::POST, &api.url("/v1/uploads"), token)
            .header("idempotency-key", "tus-key-1")
            .header("upload-metadata", "filename a2V5ZWQubTRh")
            .header("upload-length", bytes.len().to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(bytes.clone())
            .send()
    };
    let first = create(&api_a, &token_a).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let job = first.headers()["mp4tomp3-job"].to_str().unwrap().to_string();
    let again = create(&api_b, &token_b).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["mp4tomp3-job"].to_str().unwrap(), job);
    assert_eq!(
        again.headers()["location"].to_str().unwrap(),
        first.headers()["location"].to_str().unwrap()
    );
    let listed = api_b.get_json(&token_b, "/v1/jobs?limit=100").await;
    let keyed = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["file_name"] == "keyed.m4a")
        .count();
    assert_eq!(keyed, 1, "one job for the key: {listed}");

    // Termination through B deletes A's file.
    let r = tus(&api_a, reqwest::Method::POST, &api_a.url("/v1/uploads"), &token_a)
        .header("upload-length", "100")
        .header("content-type", "application/offset+octet-stream")
        .body(vec![3u8; 40])
        .send()
        .await
        .unwrap();
    let path = r.headers()["location"].to_str().unwrap().to_string();
    let other = path.rsplit('/').next().unwrap().to_string();
    assert!(a.data.join("uploads").join(&other).exists());
    let r = tus(&api_b, reqwest::Method::DELETE, &api_b.url(&path), &token_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(!a.data.join("uploads").join(&other).exists());
    let r = tus(&api_b, reqwest::Method::HEAD, &api_b.url(&path), &token_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// A request to /v1/uploads with the tus header and the token.
fn tus(api: &Api, method: reqwest::Method, url: &str, token: &str) -> reqwest::RequestBuilder {
    api.http
        .request(method, url)
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_protocol_refuses_wrong_offsets_sizes_types_and_checksums_and_expires_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let node = Node::start(&data, &["--upload-expiry", "3s", "--max-upload-bytes", "1000000"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let endpoint = api.url("/v1/uploads");

    let r = api
        .http
        .request(reqwest::Method::OPTIONS, &endpoint)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let h = r.headers();
    assert_eq!(
        (h["tus-version"].to_str().unwrap(), h["tus-resumable"].to_str().unwrap()),
        ("1.0.0", "1.0.0")
    );
    assert_eq!(h["tus-max-size"], "1000000");
    for ext in [
        "creation",
        "creation-with-upload",
        "expiration",
        "termination",
        "checksum",
    ] {
        assert!(
            h["tus-extension"].to_str().unwrap().split(',').any(|e| e == ext),
            "{ext}"
        );
    }
    // No Tus-Resumable: 412. Too large: 413 at creation, nothing stored.
    let r = api
        .http
        .post(&endpoint)
        .bearer_auth(&token)
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    let r = tus(&api, reqwest::Method::POST, &endpoint, &token)
        .header("upload-length", "1000001")
        .send()
        .await
        .unwrap();
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large".to_string())
    );
    assert_eq!(std::fs::read_dir(data.join("uploads")).unwrap().count(), 0);

    // Create with its first 10 bytes (creation-with-upload).
    let body = [7u8; 100];
    let r = tus(&api, reqwest::Method::POST, &endpoint, &token)
        .header("upload-length", "100")
        .header("upload-metadata", "filename YS5tcDQ=")
        .header("content-type", "application/offset+octet-stream")
        .body(body[..10].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["upload-offset"], "10");
    assert!(r.headers().contains_key("upload-expires"));
    let url = api.url(r.headers()["location"].to_str().unwrap());
    let patch = |offset: &str, bytes: Vec<u8>| {
        tus(&api, reqwest::Method::PATCH, &url, &token)
            .header("upload-offset", offset.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(bytes)
    };
    // The wrong offset: 409; the wrong type: 415; someone else's upload: 404.
    let r = patch("5", body[5..20].to_vec()).send().await.unwrap();
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::CONFLICT, "offset_mismatch".to_string())
    );
    let r = tus(&api, reqwest::Method::PATCH, &url, &token)
        .header("upload-offset", "10")
        .header("content-type", "application/octet-stream")
        .body(body[10..20].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    api.create_user(&token, "bob@example.com", "bob-password-1").await;
    let bob = api.login("bob@example.com", "bob-password-1").await;
    let r = tus(&api, reqwest::Method::HEAD, &url, &bob).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // A checksum that does not match: 460, nothing kept; one that does: stored.
    let wrong = "sha256 ".to_string() + &base64_of(&[0u8; 32]);
    let r = patch("10", body[10..50].to_vec())
        .header("upload-checksum", wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 460);
    let r = tus(&api, reqwest::Method::HEAD, &url, &token).send().await.unwrap();
    assert_eq!(r.headers()["upload-offset"], "10");
    let right = "sha256 ".to_string() + &base64_of(&sha256(&body[10..50]));
    let r = patch("10", body[10..50].to_vec())
        .header("upload-checksum", right)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["upload-offset"], "50");
    // Past Upload-Length: 413.
    let r = patch("50", vec![1u8; 51]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Termination: 204, then gone with its file.
    let id = url.rsplit('/').next().unwrap().to_string();
    assert!(data.join("uploads").join(&id).exists());
    let r = tus(&api, reqwest::Method::DELETE, &url, &token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = tus(&api, reqwest::Method::HEAD, &url, &token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!data.join("uploads").join(&id).exists());

    // Expiry: an upload left alone past --upload-expiry is deleted with its bytes.
    let r = tus(&api, reqwest::Method::POST, &endpoint, &token)
        .header("upload-length", "100")
        .header("content-type", "application/offset+octet-stream")
        .body(body[..30].to_vec())
        .send()
        .await
        .unwrap();
    let url = api.url(r.headers()["location"].to_str().unwrap());
    let id = url.rsplit('/').next().unwrap().to_string();
    poll(Duration::from_secs(15), "the upload to expire", || async {
        let r = tus(&api, reqwest::Method::HEAD, &url, &token).send().await.unwrap();
        (r.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(!data.join("uploads").join(&id).exists(), "its file is gone");
    node.logged(&["deleted an expired unfinished upload"], Duration::from_secs(10))
        .await;
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uploads_row_goes_with_its_job_and_its_user_and_metadata_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let api = Api::new(&node);
    let admin = api.login(ADMIN.0, ADMIN.1).await;
    let endpoint = api.url("/v1/uploads");
    let create = |token: &str, length: usize, metadata: String, body: Vec<u8>| {
        tus(&api, reqwest::Method::POST, &endpoint, token)
            .header("upload-length", length.to_string())
            .header("upload-metadata", metadata)
            .header("content-type", "application/offset+octet-stream")
            .body(body)
            .send()
    };

    // Metadata beyond 4 KiB is refused, nothing stored.
    let huge = format!("filename {},note {}", base64_of(b"a.mp4"), base64_of(&[b'x'; 5000]));
    let r = create(&admin, 1, huge, Vec::new()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_metadata", "{body}");

    // A finished upload's row is deleted with the job it became: its URL answers 404 after.
    let near_limit = format!("filename {},note {}", base64_of(b"a.mp4"), base64_of(&[b'x'; 2900]));
    for _ in 0..5 {
        let r = create(&admin, 1, near_limit.clone(), vec![0]).await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let url = api.url(r.headers()["location"].to_str().unwrap());
        let id = url.rsplit('/').next().unwrap().to_string();
        assert_eq!(head(&api, &admin, &url).await.status(), StatusCode::OK);
        let job = api.finished(&admin, &id).await;
        assert_eq!(job["state"], "failed", "one byte is no MP4: {job}");
        let r = api.delete_job(&admin, &id).await;
        assert!(r.status().is_success(), "{}", r.status());
        assert_eq!(head(&api, &admin, &url).await.status(), StatusCode::NOT_FOUND, "{url}");
    }

    // A removed user's unfinished upload goes with the account: a user created again under
    // the same email does not inherit it.
    api.create_user(&admin, "carl@example.com", "carl-password").await;
    let carl = api.login("carl@example.com", "carl-password").await;
    let r = create(&carl, 1000, format!("filename {}", base64_of(b"c.mp4")), vec![1; 10])
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let url = api.url(r.headers()["location"].to_str().unwrap());
    let r = api
        .http
        .delete(api.url("/v1/users/carl@example.com"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    node.logged(&["deleted a removed user's unfinished upload"], Duration::from_secs(10))
        .await;
    api.create_user(&admin, "carl@example.com", "carl-password-2").await;
    let carl = api.login("carl@example.com", "carl-password-2").await;
    assert_eq!(head(&api, &carl, &url).await.status(), StatusCode::NOT_FOUND);
    let usage = api.get_json(&carl, "/v1/users/carl@example.com/quota").await;
    assert_eq!(usage["usage"]["active"], 0, "{usage}");
    assert_eq!(usage["usage"]["stored_bytes"], 0, "{usage}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_used_idempotency_key_answers_its_job_first_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let file = crate::common::tone("keys_440.m4a", 440, 44100, 1.0, 1, &["-c:a", "aac"]);
    let first = api.upload_as("/v1/jobs", &token, &file, Some("k-1")).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let id = first.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let import = |key: &str| {
        api.http
            .post(api.url("/v1/jobs"))
            .bearer_auth(&token)
            .header("idempotency-key", key)
            .json(&serde_json::json!({"url": "http://127.0.0.1:9/a.mp4", "bitrate": 128}))
            .send()
    };
    // A JSON import retried under the key: the job, though its URL (loopback) would be
    // refused; its form is checked first (a bad bitrate is 400 even on a retry).
    let r = import("k-1").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["id"], id.as_str());
    // A new key with that body is refused as ever.
    assert_eq!(import("k-2").await.unwrap().status(), StatusCode::UNPROCESSABLE_ENTITY);
    let bad_form = api
        .http
        .post(api.url("/v1/jobs"))
        .bearer_auth(&token)
        .header("idempotency-key", "k-1")
        .json(&serde_json::json!({"url": "http://127.0.0.1:9/a.mp4", "bitrate": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_form.status(), StatusCode::BAD_REQUEST);
    // A resumable upload created under the key: the multipart job, as a finished upload.
    let r = tus(&api, reqwest::Method::POST, &api.url("/v1/uploads"), &token)
        .header("upload-length", "1234")
        .header("idempotency-key", "k-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["mp4tomp3-job"], format!("/v1/jobs/{id}").as_str());
    assert_eq!(r.headers()["upload-offset"], "1234");
    // And a multipart retry gets it too, its body unread.
    let again = api.upload_as("/v1/jobs", &token, &file, Some("k-1")).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<serde_json::Value>().await.unwrap()["id"], id.as_str());
    let jobs = api.get_json(&token, "/v1/jobs").await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patch_whose_upload_is_deleted_meanwhile_answers_404() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let node = Node::start(&data, &[]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let r = tus(&api, reqwest::Method::POST, &api.url("/v1/uploads"), &token)
        .header("upload-length", "100")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let url = api.url(r.headers()["location"].to_str().unwrap());
    let id = url.rsplit('/').next().unwrap().to_string();
    // A PATCH sends 10 bytes, then waits until the upload is deleted, then sends 10 more.
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let body = futures_util::stream::unfold((0u8, Some(wait)), |(i, wait)| async move {
        match (i, wait) {
            (0, wait) => Some((Ok::<_, std::io::Error>(vec![1u8; 10]), (1, wait))),
            (1, Some(wait)) => {
                let _ = wait.await;
                Some((Ok(vec![2u8; 10]), (2, None)))
            }
            _ => None,
        }
    });
    let patch = tus(&api, reqwest::Method::PATCH, &url, &token)
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let patch = tokio::spawn(patch);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = tus(&api, reqwest::Method::DELETE, &url, &token).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "the upload is deleted while a PATCH writes it"
    );
    let _ = go.send(());
    let r = patch.await.unwrap().unwrap();
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::NOT_FOUND, "not_found".to_string()),
        "the PATCH answers that its upload is gone"
    );
    let r = tus(&api, reqwest::Method::HEAD, &url, &token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!data.join("uploads").join(&id).exists(), "its file is gone");
}
