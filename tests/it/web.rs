//! The web page in a real browser (headless Chromium through chromedriver): sign in, convert
//! several files at once, see them end live, download, stay safe with hostile file names,
//! and meet WCAG 2.1 AA (axe-core). Screenshots of every page at 375 and 1280 px are saved
//! under `target/screenshots/`.

use std::time::Duration;

use crate::common::api::Api;
use crate::common::browser::Browser;
use crate::common::service::{ADMIN, Node, poll};
use fantoccini::Locator;
use fantoccini::key::Key;

const XSS: &str = "<img src=x onerror=alert(1)>.mp4";

async fn sign_in(b: &Browser, email: &str, password: &str) {
    b.fill("signin-email", email).await;
    b.fill("signin-password", password).await;
    b.click("#signin-form button[type=submit]").await;
}

/// Opens the page at `url`, signs in as the admin and waits for the convert page.
async fn open_signed_in(b: &Browser, url: &str) {
    b.client.goto(url).await.unwrap();
    b.until(
        Duration::from_secs(10),
        "the sign-in form",
        "!document.getElementById('view-signin').hidden",
    )
    .await;
    sign_in(b, ADMIN.0, ADMIN.1).await;
    b.until(
        Duration::from_secs(10),
        "the convert page",
        "!document.getElementById('view-convert').hidden",
    )
    .await;
}

async fn no_violations(b: &Browser, page: &str) {
    let found = b.axe().await;
    assert!(found.is_empty(), "axe-core on the {page} page: {found:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_signs_in_converts_two_files_at_once_and_downloads_the_mp3() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let api = Api::new(&node);
    let b = Browser::start(&dir.path().join("downloads")).await;
    b.client.goto(&node.url("/")).await.unwrap();
    b.until(
        Duration::from_secs(10),
        "the sign-in form",
        "!document.getElementById('view-signin').hidden",
    )
    .await;
    b.screenshots("signin").await;
    no_violations(&b, "sign-in").await;

    // A wrong password says so, in words.
    sign_in(&b, ADMIN.0, "not the password").await;
    b.until(
        Duration::from_secs(10),
        "the wrong-password message",
        "document.getElementById('signin-error').textContent.includes('Wrong email or password')",
    )
    .await;
    sign_in(&b, ADMIN.0, ADMIN.1).await;
    b.until(
        Duration::from_secs(10),
        "the convert page",
        "!document.getElementById('view-convert').hidden",
    )
    .await;
    // The session is an HttpOnly cookie: the page's script cannot read it.
    assert_eq!(b.js("return document.cookie").await, "");
    b.screenshots("convert").await;
    no_violations(&b, "convert").await;

    // Two files at once: a real M4A and a text file under a hostile name.
    let good = dir.path().join("talk.m4a");
    std::fs::copy(
        crate::common::tone("web_2s.m4a", 440, 44100, 2.0, 2, &["-c:a", "aac"]),
        &good,
    )
    .unwrap();
    let bad = dir.path().join(XSS);
    std::fs::write(&bad, "this is not a video").unwrap();
    let input = b.client.find(Locator::Id("files")).await.unwrap();
    let both = format!("{}\n{}", good.display(), bad.display());
    input.send_keys(&both).await.unwrap();
    b.until(
        Duration::from_secs(60),
        "one done and one failed",
        "document.querySelectorAll('#uploads li.done').length === 1 && \
         document.querySelectorAll('#uploads li.failed').length === 1",
    )
    .await;
    let failed = b
        .js("const li = document.querySelector('#uploads li.failed'); \
             return [li.querySelector('.name').textContent, li.querySelector('.reason').textContent]")
        .await;
    assert_eq!(failed[0], XSS, "the name is shown as text");
    assert_eq!(failed[1], "This file is not an MP4/M4A/MOV video or audio file");
    // Nothing of the name became markup, and no script ran.
    assert_eq!(b.js("return document.querySelectorAll('main img').length").await, 0);
    assert!(b.client.get_alert_text().await.is_err(), "no alert");
    b.screenshots("convert-done").await;

    // My jobs: both there, live; the download is the API's MP3, byte for byte.
    b.client.goto(&node.url("/#jobs")).await.unwrap();
    b.until(
        Duration::from_secs(10),
        "the jobs list",
        "document.querySelectorAll('#jobs li').length === 2",
    )
    .await;
    b.screenshots("jobs").await;
    no_violations(&b, "jobs").await;
    let id = b
        .js("return document.querySelector('#jobs li.done').dataset.job")
        .await
        .as_str()
        .unwrap()
        .to_string();
    // Its duration and the MP3's size, as the API states them.
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let job = api.get_json(&token, &format!("/v1/jobs/{id}")).await;
    let kb = job["mp3_bytes"].as_f64().unwrap() / 1024.0;
    let detail = b
        .js("return document.querySelector('#jobs li.done .detail').textContent")
        .await;
    let detail = detail.as_str().unwrap();
    assert!(
        detail.contains(" · 2 s · ") && detail.contains(&format!("MP3 {kb:.0} KB")),
        "size and duration in the list: {detail:?} for {job}"
    );
    b.client
        .find(Locator::Css("#jobs li.done .item-actions a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let mp3 = api.mp3(&token, &id).await;
    let downloaded = poll(Duration::from_secs(20), "the downloaded MP3", || async {
        let file = b.downloads.join("talk.mp3");
        let bytes = std::fs::read(&file).ok()?;
        (bytes.len() == mp3.len()).then_some(bytes)
    })
    .await;
    assert!(downloaded == mp3, "the browser's download is the MP3");

    for (view, name) in [("account", "account"), ("admin", "admin")] {
        b.client.goto(&node.url(&format!("/#{view}"))).await.unwrap();
        b.until(
            Duration::from_secs(10),
            view,
            &format!("!document.getElementById('view-{view}').hidden"),
        )
        .await;
        if view == "admin" {
            b.until(
                Duration::from_secs(10),
                "the cluster table",
                "document.querySelectorAll('#cluster tbody tr').length >= 1",
            )
            .await;
            // Add a user from the form, then make them an admin from the list.
            b.fill("user-email", "bob@example.com").await;
            b.fill("user-password", "bob-password-1").await;
            b.click("#user-form button[type=submit]").await;
            b.until(
                Duration::from_secs(10),
                "Bob in the list",
                "[...document.querySelectorAll('#users tbody th')].some(t => t.textContent === 'bob@example.com')",
            )
            .await;
            b.js("const row = [...document.querySelectorAll('#users tbody tr')]\
                   .find(r => r.querySelector('th').textContent === 'bob@example.com');\
                 row.querySelector('button').click(); return 1;")
                .await;
            let users = poll(Duration::from_secs(10), "Bob an admin", || async {
                let users = api.get_json(&token, "/v1/users").await;
                let bob = users
                    .as_array()?
                    .iter()
                    .find(|u| u["email"] == "bob@example.com")?
                    .clone();
                (bob["admin"] == true).then_some(users)
            })
            .await;
            assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
        }
        b.screenshots(name).await;
        no_violations(&b, name).await;
    }
    b.close().await;
}

/// A valid 2 s M4A followed by a `free` box of `extra` bytes: big, quick to convert.
fn big_m4a(dir: &std::path::Path, extra: usize) -> std::path::PathBuf {
    let tone = crate::common::tone("web_big_2s.m4a", 440, 44100, 2.0, 2, &["-c:a", "aac"]);
    let mut bytes = std::fs::read(tone).unwrap();
    bytes.extend_from_slice(&((16 + extra) as u32).to_be_bytes());
    bytes.extend_from_slice(b"free");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    bytes.extend((0..extra).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    let path = dir.join("lecture.m4a");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_by_a_server_restart_resumes_by_itself_and_a_queued_job_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = format!("127.0.0.1:{port}");
    // No converter: jobs wait in the queue (to be canceled).
    let mut node = Node::start(
        &dir.path().join("a"),
        &["--http", &http, "--converter-slots", "0", "--keep-inputs"],
    )
    .await;
    let b = Browser::start(&dir.path().join("downloads")).await;
    open_signed_in(&b, &node.url("/")).await;
    let file = big_m4a(dir.path(), 300 << 20);
    let input = b.client.find(Locator::Id("files")).await.unwrap();
    input.send_keys(file.to_str().unwrap()).await.unwrap();
    // Once some of it is on the server, the server dies and comes back on the same port.
    b.until(
        Duration::from_secs(30),
        "the upload under way",
        "Number(document.querySelector('#uploads li .bar').getAttribute('aria-valuenow')) >= 3",
    )
    .await;
    node.kill9();
    b.until(
        Duration::from_secs(20),
        "the page to notice",
        "document.querySelector('#uploads li .detail').textContent.includes('resuming')",
    )
    .await;
    b.screenshots("convert-resuming").await;
    node.restart().await;
    b.until(
        Duration::from_secs(120),
        "the upload to finish as a job",
        "document.querySelector('#uploads li').dataset.job !== undefined",
    )
    .await;
    let id = b.js("return document.querySelector('#uploads li').dataset.job").await;
    let id = id.as_str().unwrap().to_string();
    let stored = std::fs::read(node.data.join("jobs").join(&id).join("input.mp4")).unwrap();
    assert!(
        stored == std::fs::read(&file).unwrap(),
        "the resumed upload is the file, byte for byte"
    );

    // The job waits (no converter); Cancel from My jobs.
    b.client.goto(&node.url("/#jobs")).await.unwrap();
    b.until(
        Duration::from_secs(10),
        "the queued job",
        "document.querySelectorAll('#jobs li.queued').length === 1",
    )
    .await;
    b.client
        .find(Locator::Css("#jobs li.queued .item-actions button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.until(
        Duration::from_secs(10),
        "the job canceled",
        "document.querySelectorAll('#jobs li.canceled').length === 1",
    )
    .await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    assert_eq!(
        api.get_json(&token, &format!("/v1/jobs/{id}")).await["state"],
        "canceled"
    );
    b.close().await;
}

/// Issue 37, point 1: a URL import the server fails within milliseconds (a 404) used to
/// stay "downloading" until a reload — its `job.failed` event arrived before the page had
/// read the answer that created the job, and the answer ("fetching") overwrote it. Twenty
/// in a row must each end *failed* on the page by themselves.
#[tokio::test(flavor = "multi_thread")]
async fn a_url_import_that_fails_at_once_ends_failed_without_a_reload_20_times() {
    let dir = tempfile::tempdir().unwrap();
    let missing = crate::common::files::file_server("127.0.0.1", None, None).await;
    let node = Node::start(&dir.path().join("a"), &["--fetch-allow-hosts", "127.0.0.1"]).await;
    let b = Browser::start(&dir.path().join("downloads")).await;
    open_signed_in(&b, &node.url("/")).await;
    let url = format!("http://{}/a.mp4", missing.addr);
    for i in 1..=20 {
        b.fill("url", &url).await;
        b.click("#url-form button[type=submit]").await;
        b.until(
            Duration::from_secs(10),
            &format!("import {i} to be shown failed"),
            &format!("document.querySelectorAll('#uploads li.failed').length === {i}"),
        )
        .await;
    }
    let stuck = b
        .js("return document.querySelectorAll('#uploads li.fetching, #uploads li.queued').length")
        .await;
    assert_eq!(stuck, serde_json::json!(0), "an import still shown as in progress");
    assert!(
        missing.hits.load(std::sync::atomic::Ordering::SeqCst) >= 20,
        "each import asked the server"
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_converted_on_another_node_moves_live_on_the_page() {
    let dir = tempfile::tempdir().unwrap();
    // Signed in on A, which converts nothing; B converts.
    let nodes = crate::common::service::cluster(dir.path(), &[0, 1]).await;
    let b = Browser::start(&dir.path().join("downloads")).await;
    open_signed_in(&b, &nodes[0].url("/")).await;
    // Record every progress the bar shows, without reloading.
    b.js("window.seen = new Set(); setInterval(() => { const bar = document.querySelector('#uploads li .bar'); \
          const li = document.querySelector('#uploads li'); \
          if (bar && li && li.classList.contains('converting')) window.seen.add(bar.getAttribute('aria-valuenow')); }, 50); \
          return 1;")
        .await;
    let long = crate::common::tone("web_20min.m4a", 440, 44100, 1200.0, 1, &["-c:a", "aac", "-b:a", "32k"]);
    let input = b.client.find(Locator::Id("files")).await.unwrap();
    input.send_keys(long.to_str().unwrap()).await.unwrap();
    b.until(
        Duration::from_secs(120),
        "done",
        "document.querySelectorAll('#uploads li.done').length === 1",
    )
    .await;
    let seen = b.js("return [...window.seen].map(Number).sort((a, b) => a - b)").await;
    let seen: Vec<u64> = serde_json::from_value(seen).unwrap();
    assert!(
        seen.iter().filter(|p| **p > 0 && **p < 100).count() >= 2,
        "the bar moved while B converted: {seen:?}"
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_cookie_is_httponly_strict_and_needs_our_origin_and_its_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let http = reqwest::Client::new();
    let page = http.get(node.url("/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    for part in [
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "default-src 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("<script src=\"/app.js\" defer></script>")
    );

    let sign_in = |password: &str| {
        http.post(node.url("/v1/session"))
            .json(&serde_json::json!({"email": ADMIN.0, "password": password}))
            .send()
    };
    assert_eq!(sign_in("wrong").await.unwrap().status(), 401);
    let r = sign_in(ADMIN.1).await.unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for part in ["mp4tomp3_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "plain http: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let csrf = r.json::<serde_json::Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_string();

    // Reads need only the cookie.
    let r = http
        .get(node.url("/v1/jobs"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let me = http
        .get(node.url("/v1/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        me.json::<serde_json::Value>().await.unwrap()["csrf_token"],
        csrf.as_str()
    );
    // Changes need the CSRF token, and our origin.
    let change = |token: Option<&str>, origin: Option<&str>| {
        let mut r = http
            .put(node.url("/v1/me/webhook"))
            .header("cookie", &cookie)
            .json(&serde_json::json!({"url": "http://127.0.0.1:9/hook"}));
        if let Some(t) = token {
            r = r.header("x-csrf-token", t);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    assert_eq!(change(None, None).await.unwrap().status(), 403);
    assert_eq!(change(Some("00ff"), None).await.unwrap().status(), 403);
    assert_eq!(
        change(Some(&csrf), Some("http://evil.example")).await.unwrap().status(),
        403
    );
    let own = node.url("");
    // Our host under another scheme is another origin.
    let other_scheme = own.replacen("http://", "https://", 1);
    assert_eq!(change(Some(&csrf), Some(&other_scheme)).await.unwrap().status(), 403);
    let r = change(Some(&csrf), Some(&own)).await.unwrap();
    assert!(
        ![401, 403].contains(&r.status().as_u16()),
        "authenticated: {}",
        r.status()
    );
    // A Bearer token needs neither.
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let r = http
        .delete(node.url("/v1/me/webhook"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(![401, 403].contains(&r.status().as_u16()), "{}", r.status());
    // Two session cookies (one tossed in by a page on another port or a sibling subdomain,
    // for a narrower path, which the browser sends first) are refused, not either taken.
    let tossed = format!("mp4tomp3_session=attacker-token; {cookie}");
    let r = http
        .get(node.url("/v1/jobs"))
        .header("cookie", &tossed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff", "JSON answers too");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than one session cookie"),
        "{body}"
    );
    let r = http.get(node.url("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    // Another origin cannot sign a browser in.
    let r = http
        .post(node.url("/v1/session"))
        .header("origin", "http://evil.example")
        .json(&serde_json::json!({"email": ADMIN.0, "password": ADMIN.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Signing out clears the cookie.
    let r = http
        .delete(node.url("/v1/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    // ... and its token is revoked: the cookie's value no longer works, as a cookie or as
    // a Bearer token, while a token from another sign-in goes on.
    let value = cookie.split_once('=').unwrap().1;
    let r = http.get(node.url("/v1/jobs")).bearer_auth(value).send().await.unwrap();
    assert_eq!(r.status(), 401, "the signed-out session's token");
    let r = http
        .get(node.url("/v1/jobs"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the signed-out cookie");
    let r = http.get(node.url("/v1/jobs")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200, "another session");

    // Behind https, the cookie is Secure.
    let secure = Node::start(&dir.path().join("b"), &["--public-url", "https://mp3.example.org"]).await;
    let r = http
        .post(secure.url("/v1/session"))
        .header("origin", "https://mp3.example.org")
        .json(&serde_json::json!({"email": ADMIN.0, "password": ADMIN.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.starts_with("__Host-mp4tomp3_session="), "{set}");
    for part in ["Secure", "Path=/", "HttpOnly"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Domain"), "{set}");
    let value = set.split(';').next().unwrap().split_once('=').unwrap().1.to_string();
    let with = |name: &str| {
        http.get(secure.url("/v1/session"))
            .header("cookie", format!("{name}={value}"))
            .send()
    };
    assert_eq!(with("__Host-mp4tomp3_session").await.unwrap().status(), 200);
    // Over https the plain name (which any subdomain could set) is not a session.
    assert_eq!(with("mp4tomp3_session").await.unwrap().status(), 401);
}

/// `true` when the MP3 starts with a Xing (VBR) info frame rather than an Info (CBR) one.
fn is_vbr(mp3: &[u8]) -> bool {
    let head = &mp3[..mp3.len().min(4096)];
    let has = |tag: &[u8]| head.windows(4).any(|w| w == tag);
    assert!(has(b"Xing") != has(b"Info"), "one LAME info frame");
    has(b"Xing")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keyboard_user_reaches_every_control_and_each_form_does_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &["--fetch-allow-hosts", "127.0.0.1"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let served = crate::common::tone("web_kbd_3s.m4a", 330, 44100, 3.0, 2, &["-c:a", "aac"]);
    let files = crate::common::files::file_server("127.0.0.1", Some(served), None).await;
    let hooks = crate::common::receiver::Receiver::start(&[], 200).await;
    let b = Browser::start(&dir.path().join("downloads")).await;
    b.client.goto(&node.url("/")).await.unwrap();
    b.until(
        Duration::from_secs(10),
        "the sign-in form",
        "!document.getElementById('view-signin').hidden",
    )
    .await;

    // Sign in with Tab, typing and Enter; the focus lands on the convert page's heading.
    b.tab_to("#signin-email").await;
    b.keys(ADMIN.0).await;
    b.key(Key::Tab).await;
    b.keys(ADMIN.1).await;
    b.key(Key::Enter).await;
    b.until(
        Duration::from_secs(10),
        "the convert page, focused",
        "document.activeElement === document.getElementById('convert-title')",
    )
    .await;

    // VBR with the arrow keys: the radio, then "Good (V4)" in its list.
    b.tab_to("input[name=mode][value=cbr]").await;
    b.key(Key::Down).await;
    b.until(
        Duration::from_secs(5),
        "VBR chosen",
        "document.querySelector('input[name=mode]:checked').value === 'vbr' && !document.getElementById('vbr').disabled",
    )
    .await;
    b.tab_to("#vbr").await;
    b.key(Key::Down).await;
    assert_eq!(b.js("return document.getElementById('vbr').value").await, "4");
    // The file picker is reachable too (a user presses Space there to open it).
    b.tab_to("#files").await;

    // A file dropped on the zone (a drag from the desktop, made with the same DragEvent):
    // a recording cut short, so the job ends done with a warning.
    let dropped = dir.path().join("dropped.m4a");
    let whole = std::fs::read(crate::common::fragmented("web_kbd_frag_4s.m4a", 4.0)).unwrap();
    std::fs::write(&dropped, &whole[..whole.len() * 3 / 4]).unwrap();
    b.js(
        "const i = document.createElement('input'); i.type = 'file'; i.id = 'dnd-source'; \
          document.body.append(i); return 1;",
    )
    .await;
    let source = b.client.find(Locator::Id("dnd-source")).await.unwrap();
    source.send_keys(dropped.to_str().unwrap()).await.unwrap();
    let highlighted = b
        .js(
            "const src = document.getElementById('dnd-source'); const dt = new DataTransfer(); \
             for (const f of src.files) dt.items.add(f); src.remove(); \
             const zone = document.getElementById('drop'); \
             for (const t of ['dragenter', 'dragover']) \
               zone.dispatchEvent(new DragEvent(t, {dataTransfer: dt, bubbles: true, cancelable: true})); \
             const over = zone.classList.contains('over'); \
             zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})); \
             return over && !zone.classList.contains('over');",
        )
        .await;
    assert_eq!(highlighted, true, "the zone lights up while a file is over it");

    // A link, typed into the URL form and sent with Enter.
    let link = format!("http://{}/a.mp4", files.addr);
    b.tab_to("#url").await;
    b.keys(&link).await;
    b.key(Key::Enter).await;
    b.until(
        Duration::from_secs(60),
        "both done",
        "document.querySelectorAll('#uploads li.done').length === 2",
    )
    .await;
    let jobs = api.get_json(&token, "/v1/jobs").await["jobs"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let by_name = |name: &str| {
        jobs.iter()
            .find(|j| j["file_name"] == name)
            .unwrap_or_else(|| panic!("{name} in {jobs:?}"))
            .clone()
    };
    let (drop_job, url_job) = (by_name("dropped.m4a"), by_name("a.mp4"));
    assert_eq!(url_job["url"], link.as_str());
    let mut mp3s = Vec::new();
    for job in [&drop_job, &url_job] {
        assert_eq!(job["vbr"], 4, "the chosen quality: {job}");
        let mp3 = api.mp3(&token, job["id"].as_str().unwrap()).await;
        assert!(is_vbr(&mp3), "a VBR MP3");
        mp3s.push(mp3);
    }

    // My jobs: select both with Space, then the ZIP button with Enter.
    b.tab_to("#nav a[data-view=jobs]").await;
    b.key(Key::Enter).await;
    b.until(
        Duration::from_secs(10),
        "the jobs list, focused",
        "document.activeElement === document.getElementById('jobs-title') && \
         document.querySelectorAll('#jobs li.done').length === 2",
    )
    .await;
    let shown = b
        .js(&format!(
            "return document.querySelector('#jobs li[data-job=\"{}\"] .warning').textContent",
            drop_job["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        shown.as_str().unwrap(),
        format!(
            "Partial: the file was damaged, {}.",
            drop_job["warnings"].as_str().unwrap()
        ),
        "the warning in the list: {drop_job}"
    );
    b.screenshots("jobs-partial").await;
    let order = b
        .js("return [...document.querySelectorAll('#jobs li.done')].map(li => li.dataset.job)")
        .await;
    for id in order.as_array().unwrap() {
        let id = id.as_str().unwrap();
        b.tab_to(&format!("#jobs li[data-job=\"{id}\"] input.select")).await;
        b.key(Key::Space).await;
    }
    b.until(
        Duration::from_secs(5),
        "the ZIP button enabled",
        "!document.getElementById('zip').disabled",
    )
    .await;
    b.tab_to("#zip").await;
    b.key(Key::Enter).await;
    let zip = poll(Duration::from_secs(20), "the ZIP download", || async {
        let entry = std::fs::read_dir(&b.downloads)
            .ok()?
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "zip"))?;
        let bytes = std::fs::read(entry.path()).ok()?;
        (bytes.len() > mp3s[0].len() + mp3s[1].len()).then_some(bytes)
    })
    .await;
    let mut got: Vec<Vec<u8>> = crate::common::files::zip_entries(dir.path(), &zip)
        .into_iter()
        .map(|(_, _, bytes)| bytes)
        .collect();
    got.sort();
    mp3s.sort();
    assert!(got == mp3s, "the ZIP holds both MP3s, byte for byte");

    // Delete with the keyboard.
    let gone = drop_job["id"].as_str().unwrap();
    b.tab_to(&format!("#jobs li[data-job=\"{gone}\"] button.danger")).await;
    b.key(Key::Enter).await;
    b.until(
        Duration::from_secs(10),
        "the deleted job gone from the list",
        "document.querySelectorAll('#jobs li').length === 1",
    )
    .await;
    let r = api.job(&token, gone).await;
    assert_eq!(r.status(), 404);

    // Account: the webhook form saves, shows the secret once, makes a new one, removes.
    b.tab_to("#nav a[data-view=account]").await;
    b.key(Key::Enter).await;
    b.until(
        Duration::from_secs(10),
        "the account page",
        "document.activeElement === document.getElementById('account-title')",
    )
    .await;
    b.tab_to("#webhook-url").await;
    b.keys(&hooks.url).await;
    b.key(Key::Enter).await;
    b.until(
        Duration::from_secs(10),
        "the webhook saved",
        "document.getElementById('webhook-msg').textContent === 'Webhook saved.' && \
         !document.getElementById('webhook-secret').hidden",
    )
    .await;
    let secret = || async {
        let text = b
            .js("return document.getElementById('webhook-secret').textContent")
            .await;
        text.as_str().unwrap().rsplit(' ').next().unwrap().to_string()
    };
    let first = secret().await;
    assert_eq!(api.get_json(&token, "/v1/me/webhook").await["url"], hooks.url.as_str());
    b.tab_to("#webhook-rotate").await;
    b.key(Key::Enter).await;
    b.until(
        Duration::from_secs(10),
        "a new secret",
        "document.getElementById('webhook-msg').textContent === 'New signing secret made.'",
    )
    .await;
    assert_ne!(secret().await, first);
    let id = api.upload(&token, &dropped).await["id"].as_str().unwrap().to_string();
    poll(Duration::from_secs(30), "the job's webhook call", || async {
        hooks
            .hits()
            .iter()
            .any(|h| h.json()["type"] == "job.finished" && h.json()["job"]["id"] == id.as_str())
            .then_some(())
    })
    .await;
    b.tab_to("#webhook-remove").await;
    b.key(Key::Enter).await;
    b.until(
        Duration::from_secs(10),
        "the webhook removed",
        "document.getElementById('webhook-msg').textContent === 'Webhook removed.'",
    )
    .await;
    assert!(api.get_json(&token, "/v1/me/webhook").await["url"].is_null());

    // The password form: the new password works, the old one no longer, the page stays in.
    let new_password = "a-new-keyboard-password";
    b.tab_to("#pw-current").await;
    b.keys(ADMIN.1).await;
    b.key(Key::Tab).await;
    b.keys(new_password).await;
    b.key(Key::Enter).await;
    b.until(
        Duration::from_secs(10),
        "the password changed",
        "document.getElementById('password-msg').textContent.startsWith('Password changed')",
    )
    .await;
    assert!(
        api.try_login(ADMIN.0, ADMIN.1).await.is_none(),
        "the old password is refused"
    );
    assert!(api.try_login(ADMIN.0, new_password).await.is_some());
    b.tab_to("#nav a[data-view=jobs]").await;
    b.key(Key::Enter).await;
    b.until(
        Duration::from_secs(10),
        "the list, still signed in",
        "document.querySelectorAll('#jobs li.done').length === 2",
    )
    .await;

    // Sign out: back to the sign-in form, focused on its heading.
    b.tab_to("#signout").await;
    b.key(Key::Enter).await;
    b.until(
        Duration::from_secs(10),
        "the sign-in page",
        "!document.getElementById('view-signin').hidden && \
         document.activeElement === document.getElementById('signin-title')",
    )
    .await;
    b.close().await;
}
