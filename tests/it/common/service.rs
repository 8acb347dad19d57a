//! Running the real `mp4tomp3 serve` binary (and a real SMTP server) for end-to-end tests.
//!
//! Every node listens on `127.0.0.1:0` and the test reads the bound address from its log,
//! so tests never share or guess ports. Waits poll with deadlines.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The JWT key every test node uses, so tests can forge tokens with it.
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";
/// The admin every test node creates.
pub const ADMIN: (&str, &str) = ("admin@example.com", "admin-password");

/// Polls `check` every 50 ms until it returns `Some`, panicking with `what` after `limit`.
pub async fn poll<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One running `mp4tomp3 serve`.
pub struct Node {
    child: Option<Child>,
    /// Its HTTP address.
    pub addr: SocketAddr,
    /// Its data dir.
    pub data: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Node {
    /// Starts a node on `data` with extra flags, and waits until it is ready.
    pub async fn start(data: &Path, args: &[&str]) -> Node {
        Self::start_with_env(data, args, &[]).await
    }

    /// The same with extra environment variables.
    pub async fn start_with_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Node {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::spawn(data, args, env, true).await
    }

    /// Starts a node without waiting for it to be ready (only for it to serve HTTP).
    pub async fn start_unready(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Node {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::spawn(data, args, env, false).await
    }

    async fn spawn(data: &Path, args: Vec<String>, env: Vec<(String, String)>, ready: bool) -> Node {
        std::fs::create_dir_all(data).unwrap();
        let log = data.with_extension(format!(
            "log{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_mp4tomp3"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .args(if args.iter().any(|a| a == "--http") {
                &[][..]
            } else {
                &["--http", "127.0.0.1:0"][..]
            })
            .args(if args.iter().any(|a| a == "--node-name") {
                &[][..]
            } else {
                &["--node-name", "node-a"][..]
            })
            .args(&args)
            .env("MP4TOMP3_CLUSTER_COOKIE", "test-cookie")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .env("MP4TOMP3_JWT_SECRET", JWT_SECRET)
            .env("MP4TOMP3_ADMIN_EMAIL", ADMIN.0)
            .env("MP4TOMP3_ADMIN_PASSWORD", ADMIN.1)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut node = Node {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            data: data.to_path_buf(),
            log,
            args,
            env,
        };
        node.addr = poll(Duration::from_secs(20), "the node to log its address", || {
            let found = node.address_in_log();
            async move { found }
        })
        .await;
        if !ready {
            return node;
        }
        let ready = node.url("/readyz");
        poll(Duration::from_secs(20), "/readyz", || {
            let ready = ready.clone();
            async move {
                reqwest::get(&ready)
                    .await
                    .ok()
                    .filter(|r| r.status() == 200)
                    .map(|_| ())
            }
        })
        .await;
        node
    }

    fn address_in_log(&mut self) -> Option<SocketAddr> {
        let log = self.log_text();
        if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
            panic!("the node exited ({status}) before serving:\n{log}");
        }
        let line = log.lines().find(|l| l.contains("mp4tomp3 serving"))?;
        let at = line.find("address=")? + "address=".len();
        line[at..].split_whitespace().next()?.parse().ok()
    }

    /// The server's resident memory (VmRSS) in bytes.
    pub fn rss(&self) -> u64 {
        let pid = self.child.as_ref().expect("the node runs").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node runs").id()
    }

    /// How many file descriptors the server holds open.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).unwrap().count()
    }

    /// Restarts the node on the same data dir with the same flags (after a kill or stop).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        let fresh = Self::spawn(&self.data, self.args.clone(), self.env.clone(), true).await;
        *self = fresh;
    }

    /// Everything the node logged.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Whether one line of the node's log contains each of `needles`.
    pub fn has_line(&self, needles: &[&str]) -> bool {
        self.log_text().lines().any(|l| needles.iter().all(|n| l.contains(n)))
    }

    /// Waits (up to `limit`) for a line of the node's log containing each of `needles`: a
    /// node logs what it did a moment after others can see it done, so checks of its log
    /// poll.
    pub async fn logged(&self, needles: &[&str], limit: Duration) {
        let what = format!("{needles:?} in {}", self.log.display());
        poll(limit, &what, || async { self.has_line(needles).then_some(()) }).await
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends a signal (SIGSTOP, SIGCONT, ...) to the node.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, signal) };
    }

    /// SIGTERM, and wait for the exit.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the node did not stop within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `.eml` files the node wrote (no SMTP configured).
    pub fn eml_files(&self) -> Vec<Vec<u8>> {
        let dir = self.data.join("mail");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "eml") {
                out.push(std::fs::read(entry.path()).unwrap());
            }
        }
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what each node logged last.
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ---", self.data.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A free loopback port (bound and released; the caller binds it right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real SMTP server: aiosmtpd (PyPI) storing each message in a Maildir.
pub struct Smtp {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    maildir: PathBuf,
}

impl Smtp {
    /// Starts aiosmtpd and waits until it accepts connections.
    pub async fn start(dir: &Path) -> Smtp {
        let maildir = dir.join("maildir");
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd is needed (pip install aiosmtpd)");
        let mut smtp = Smtp { child, port, maildir };
        poll(Duration::from_secs(20), "aiosmtpd to listen", || {
            if let Ok(Some(status)) = smtp.child.try_wait() {
                let mut err = String::new();
                let _ = smtp.child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                panic!("aiosmtpd exited ({status}); is it installed (pip install aiosmtpd)? {err}");
            }
            let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            async move { up.then_some(()) }
        })
        .await;
        smtp
    }

    /// Every message received so far, raw.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            for entry in std::fs::read_dir(self.maildir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(std::fs::read(entry.path()).unwrap());
            }
        }
        out
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text/plain body of a raw message, decoded.
pub fn mail_text(raw: &[u8]) -> String {
    let message = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("a parsable email");
    message.body_text(0).expect("a text part").into_owned()
}

/// A header of a raw message.
pub fn mail_header(raw: &[u8], name: &str) -> Option<String> {
    let message = mail_parser::MessageParser::default().parse(raw)?;
    message.header_raw(name).map(|v| v.trim().to_string())
}

/// The first http(s) URL in a text.
pub fn first_link(text: &str) -> Option<String> {
    let at = text.find("http")?;
    Some(text[at..].split_whitespace().next()?.to_string())
}

/// The (node, state) pairs a node's `/v1/cluster` lists, sorted; empty if it cannot answer.
/// Logs in once per node URL (tests poll this often; logins are throttled).
pub async fn cluster_members(node: &Node) -> Vec<(String, String)> {
    static TOKENS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let http = reqwest::Client::new();
    let url = node.url("");
    let cached = TOKENS
        .lock()
        .unwrap()
        .iter()
        .find(|(u, _)| *u == url)
        .map(|(_, t)| t.clone());
    let token = match cached {
        Some(token) => token,
        None => {
            let Ok(r) = http
                .post(node.url("/login"))
                .basic_auth(ADMIN.0, Some(ADMIN.1))
                .send()
                .await
            else {
                return Vec::new();
            };
            if r.status() != 200 {
                return Vec::new();
            }
            let token = r.text().await.unwrap_or_default();
            TOKENS.lock().unwrap().push((url.clone(), token.clone()));
            token
        }
    };
    let Ok(r) = http.get(node.url("/v1/cluster")).bearer_auth(token).send().await else {
        return Vec::new();
    };
    if r.status() == 401 {
        // A restarted node on the same address with another key: log in again next time.
        TOKENS.lock().unwrap().retain(|(u, _)| *u != url);
        return Vec::new();
    }
    let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    let mut out: Vec<(String, String)> = body["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["node"].as_str().unwrap_or("").to_string(),
                m["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The name of the `i`-th node of [`cluster`]: node-a, node-b, ...
pub fn node_name(i: usize) -> String {
    format!("node-{}", (b'a' + i as u8) as char)
}

/// Starts one node per slot count (`--converter-slots`) on 127.0.0.2, .3, ..., all peers of
/// each other (static discovery), and waits for the full mesh.
pub async fn cluster(dir: &Path, slots: &[usize]) -> Vec<Node> {
    cluster_with(dir, slots, &[]).await
}

/// The same, every node with `extra` arguments too.
pub async fn cluster_with(dir: &Path, slots: &[usize], extra: &[&str]) -> Vec<Node> {
    let ports: Vec<u16> = slots.iter().map(|_| free_port()).collect();
    let addr = |i: usize| format!("127.0.0.{}:{}", i + 2, ports[i]);
    let peers = (0..slots.len()).map(addr).collect::<Vec<_>>().join(",");
    let mut nodes = Vec::new();
    for (i, n) in slots.iter().enumerate() {
        let (name, listen, n) = (node_name(i), addr(i), n.to_string());
        let mut args = vec![
            "--node-name",
            &name,
            "--cluster-listen",
            &listen,
            "--peers",
            &peers,
            "--converter-slots",
            &n,
        ];
        args.extend_from_slice(extra);
        nodes.push(Node::start(&dir.join(&name), &args).await);
    }
    for (i, node) in nodes.iter().enumerate() {
        let others: Vec<(String, String)> = (0..slots.len())
            .filter(|j| *j != i)
            .map(|j| (node_name(j), "up".to_string()))
            .collect();
        poll(Duration::from_secs(20), "a full mesh", || async {
            (cluster_members(node).await == others).then_some(())
        })
        .await;
    }
    nodes
}
