//! A real browser for the web page's tests: Debian's headless Chromium driven through
//! chromedriver (WebDriver) by fantoccini; axe-core (npm) checks accessibility; screenshots
//! go under `target/screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// A headless Chromium with its own profile and download directory.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    pub downloads: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    pub async fn start(downloads: &Path) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver)");
        let profile = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(downloads).unwrap();
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.to_str().unwrap(),
                    "download.prompt_for_download": false,
                },
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
            downloads: downloads.to_path_buf(),
        }
    }

    /// Replaces the text of the input with this id.
    pub async fn fill(&self, id: &str, text: &str) {
        let input = self.client.find(Locator::Id(id)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Types `text` on the keyboard, into whatever has the focus (no element is targeted,
    /// as for a user without a mouse).
    pub async fn keys(&self, text: &str) {
        let mut typing = KeyActions::new("keyboard".into());
        for c in text.chars() {
            typing = typing
                .then(KeyAction::Down { value: c })
                .then(KeyAction::Up { value: c });
        }
        self.client.perform_actions(typing).await.unwrap();
    }

    /// Presses one key (Tab, Enter, Space, an arrow...).
    pub async fn key(&self, key: Key) {
        self.keys(&char::from(key).to_string()).await;
    }

    /// Presses Tab until the element `css` selects has the focus, and checks that the
    /// focus can be seen there (an outline on it, or on the drop zone around the file
    /// input). Panics when 60 presses do not reach it.
    pub async fn tab_to(&self, css: &str) {
        let selector = serde_json::to_string(css).unwrap();
        let check = format!(
            "const e = document.activeElement;\
             if (!e || !e.matches({selector})) return 'elsewhere: ' + (e ? e.outerHTML.slice(0, 120) : 'none');\
             const shown = e.closest('.drop') || e;\
             const s = getComputedStyle(shown);\
             return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2 ? 'visible' : 'invisible focus';"
        );
        let mut last = Value::Null;
        for _ in 0..60 {
            last = self.js(&check).await;
            if last == "visible" {
                return;
            }
            assert_ne!(last, "invisible focus", "{css} has the focus but shows no outline");
            self.key(Key::Tab).await;
        }
        panic!("{css} cannot be reached with Tab (the focus is {last})");
    }

    /// Runs `script` (a function body; `arguments` as in WebDriver) and returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits (up to `limit`) until `condition` (a JavaScript expression) is truthy.
    pub async fn until(&self, limit: Duration, what: &str, condition: &str) {
        let deadline = Instant::now() + limit;
        let script = format!("return !!({condition});");
        while Instant::now() < deadline {
            if self.js(&script).await == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let html = self.client.source().await.unwrap_or_default();
        panic!("timed out waiting for {what} ({condition}); the page:\n{html}");
    }

    /// Sets the window to `width` × 1400 and saves a screenshot as
    /// `target/screenshots/{name}-{width}.png`.
    pub async fn screenshot(&self, name: &str, width: u32) {
        self.client.set_window_size(width, 1400).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = self.client.screenshot().await.unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}-{width}.png")), png).unwrap();
    }

    /// Both screenshot widths (375 and 1280 px), ending at 1280; and at 360 and 1440 px,
    /// the widths the page must work at, nothing sticks out sideways.
    pub async fn screenshots(&self, name: &str) {
        for width in [360, 1440] {
            self.client.set_window_size(width, 1400).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let widths = self
                .js("return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
                .await;
            assert!(
                widths[0].as_u64() <= widths[1].as_u64(),
                "the {name} page is wider than the window at {width} px: {widths}"
            );
        }
        self.screenshot(name, 375).await;
        self.screenshot(name, 1280).await;
    }

    /// axe-core's serious and critical violations on the page now (WCAG 2.1 A and AA).
    pub async fn axe(&self) -> Vec<String> {
        let path = std::env::var("AXE_JS").map(PathBuf::from).unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm/node_modules/axe-core/axe.min.js")
        });
        let source = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "axe-core at {}: npm install --prefix target/npm axe-core",
                path.display()
            )
        });
        self.client.execute(&source, vec![]).await.unwrap();
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];\
                 axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})\
                   .then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')\
                     .map(v => v.id + ': ' + v.help + ' — ' + v.nodes.map(n => n.target.join(' ')).join(', '))))\
                   .catch(e => done(['axe failed: ' + e]));",
                vec![],
            )
            .await
            .unwrap();
        serde_json::from_value(found).unwrap()
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
