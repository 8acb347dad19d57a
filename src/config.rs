//! The service's configuration: one clap struct, every flag also read from `MP4TOMP3_*`.
//!
//! [`ServeArgs`] is what the command line gives; [`Config::from_args`] validates it once at
//! start-up and fills the embedded defaults (data dir `./data`, HTTP on `127.0.0.1:8080`,
//! emails as `.eml` files, a JWT key generated into the data dir), so `mp4tomp3 serve` runs
//! with no configuration at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::auth::jwt::Keys;
use crate::convert::{ConvertOptions, Quality};
use crate::store::Quota;

/// How the notifier reaches the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SmtpTls {
    /// Plain SMTP (a local relay, or tests).
    None,
    /// SMTP upgraded with STARTTLS (usually port 587).
    Starttls,
    /// Implicit TLS (usually port 465).
    Tls,
}

/// How peers are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Discovery {
    /// The `--peers` list (none: a single node).
    Static,
    /// The pods of our StatefulSet, through the kube API.
    Kube,
}

/// `mp4tomp3 serve`: flags, each also read from the environment.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where the database, the files and the generated keys live.
    #[arg(long, env = "MP4TOMP3_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The HTTP listen address.
    #[arg(long, env = "MP4TOMP3_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Serve `/metrics` on this address alone (e.g. `0.0.0.0:9090`) instead of the API's
    /// port, so scrapers need no route to the public port and users none to the metrics.
    #[arg(long, env = "MP4TOMP3_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// The base URL users reach this service at, for the links in emails.
    /// Default: `http://` + the HTTP listen address.
    #[arg(long, env = "MP4TOMP3_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// This node's stable name (job ids carry it). Default: the pod name, else the host name.
    #[arg(long, env = "MP4TOMP3_NODE_NAME")]
    pub node_name: Option<String>,
    /// Conversions run at once on this node. Default: the number of CPU cores.
    #[arg(long, env = "MP4TOMP3_CONVERTER_SLOTS")]
    pub converter_slots: Option<usize>,
    /// Nodes that hold each done job's MP3 (its own node and copies on the next nodes), so
    /// that a download works while a pod restarts. Default: 2 in a cluster, 1 alone.
    #[arg(long, env = "MP4TOMP3_MP3_REPLICAS", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub mp3_replicas: Option<u8>,
    /// Largest accepted upload or download, in bytes.
    #[arg(long, env = "MP4TOMP3_MAX_UPLOAD_BYTES", default_value_t = 2 << 30)]
    pub max_upload_bytes: u64,
    /// Free space kept on the data volume: uploads and imports are refused with 507 (and no
    /// conversion is placed here) while less is free, counting the upload's length.
    #[arg(long, env = "MP4TOMP3_MIN_FREE_BYTES", default_value_t = 256 << 20)]
    pub min_free_bytes: u64,
    /// Longest wait for a request's headers, and longest idle keep-alive connection.
    #[arg(long, env = "MP4TOMP3_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Most open HTTP connections from one IP address (more are closed at once).
    #[arg(long, env = "MP4TOMP3_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// Uploads slower than this many bytes per second over `--slow-upload-window` are
    /// dropped (their staged file deleted).
    #[arg(long, env = "MP4TOMP3_MIN_UPLOAD_RATE", default_value_t = 1024)]
    pub min_upload_rate: u64,
    /// The window `--min-upload-rate` is measured over.
    #[arg(long, env = "MP4TOMP3_SLOW_UPLOAD_WINDOW", default_value = "30s", value_parser = humantime::parse_duration)]
    pub slow_upload_window: Duration,
    /// Longest accepted audio, in seconds.
    #[arg(long, env = "MP4TOMP3_MAX_DURATION_SECS", default_value_t = 6 * 3600)]
    pub max_duration_secs: u64,
    /// On SIGTERM, how long running conversions may take to finish (e.g. `30s`, `2m`).
    #[arg(long, env = "MP4TOMP3_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// The HS256 key that signs tokens and download links. Default: read from, or generated
    /// into, `DATA/jwt.key`.
    #[arg(long, env = "MP4TOMP3_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A file holding the JWT key (for Kubernetes Secrets mounted as files).
    #[arg(long, env = "MP4TOMP3_JWT_SECRET_FILE", conflicts_with = "jwt_secret")]
    pub jwt_secret_file: Option<PathBuf>,
    /// How long an access token lives.
    #[arg(long, env = "MP4TOMP3_TOKEN_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,
    /// How long the download link in an email works.
    #[arg(long, env = "MP4TOMP3_LINK_TTL", default_value = "7days", value_parser = humantime::parse_duration)]
    pub link_ttl: Duration,
    /// How long a job (its row and files) is kept after it ends; later it answers `410`.
    #[arg(long, env = "MP4TOMP3_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Keep each job's input MP4 until the job expires (by default it goes when the job ends).
    #[arg(long, env = "MP4TOMP3_KEEP_INPUTS")]
    pub keep_inputs: bool,
    /// How long an unfinished resumable upload (`/v1/uploads`) is kept after its last byte.
    #[arg(long, env = "MP4TOMP3_UPLOAD_EXPIRY", default_value = "24h", value_parser = humantime::parse_duration)]
    pub upload_expiry: Duration,
    /// Default per-user limit: unfinished jobs (and uploads) at once (admins have none;
    /// `mp4tomp3 user set` or `PUT /v1/users/{email}/quota` set a user's own).
    #[arg(long, env = "MP4TOMP3_QUOTA_ACTIVE", default_value_t = 50)]
    pub quota_active: i64,
    /// Default per-user limit: jobs created in any 24 hours.
    #[arg(long, env = "MP4TOMP3_QUOTA_JOBS_PER_DAY", default_value_t = 1000)]
    pub quota_jobs_per_day: i64,
    /// Default per-user limit: bytes stored (inputs, MP3s, unfinished uploads).
    #[arg(long, env = "MP4TOMP3_QUOTA_STORED_BYTES", default_value_t = 50_000_000_000)]
    pub quota_stored_bytes: i64,
    /// Login attempts allowed per client address per minute.
    #[arg(long, env = "MP4TOMP3_LOGIN_PER_MINUTE", default_value_t = 20)]
    pub login_per_minute: u32,
    /// Failed logins in a row that lock an account.
    #[arg(long, env = "MP4TOMP3_LOCKOUT_AFTER", default_value_t = 5)]
    pub lockout_after: u32,
    /// How long a locked account stays locked.
    #[arg(long, env = "MP4TOMP3_LOCKOUT_FOR", default_value = "5m", value_parser = humantime::parse_duration)]
    pub lockout_for: Duration,
    /// An admin account created at first start, if missing.
    #[arg(long, env = "MP4TOMP3_ADMIN_EMAIL")]
    pub admin_email: Option<String>,
    /// The password of `--admin-email`.
    #[arg(
        long,
        env = "MP4TOMP3_ADMIN_PASSWORD",
        hide_env_values = true,
        requires = "admin_email"
    )]
    pub admin_password: Option<String>,
    /// SMTP server for the emails. Without it, emails are written to `DATA/mail/*.eml`.
    #[arg(long, env = "MP4TOMP3_SMTP_HOST")]
    pub smtp_host: Option<String>,
    /// SMTP port. Default: 25 (none), 587 (starttls), 465 (tls).
    #[arg(long, env = "MP4TOMP3_SMTP_PORT")]
    pub smtp_port: Option<u16>,
    /// SMTP transport security.
    #[arg(long, env = "MP4TOMP3_SMTP_TLS", value_enum, default_value_t = SmtpTls::Starttls)]
    pub smtp_tls: SmtpTls,
    /// SMTP user name.
    #[arg(long, env = "MP4TOMP3_SMTP_USER")]
    pub smtp_user: Option<String>,
    /// SMTP password.
    #[arg(long, env = "MP4TOMP3_SMTP_PASSWORD", hide_env_values = true, requires = "smtp_user")]
    pub smtp_password: Option<String>,
    /// The sender of the emails.
    #[arg(long, env = "MP4TOMP3_MAIL_FROM", default_value = "mp4tomp3 <mp4tomp3@localhost>")]
    pub mail_from: String,
    /// Hosts that URL imports may reach even on private or loopback addresses
    /// (comma-separated host names or IPs; for tests and intranets).
    #[arg(long, env = "MP4TOMP3_FETCH_ALLOW_HOSTS", value_delimiter = ',')]
    pub fetch_allow_hosts: Vec<String>,
    /// Where this node listens for cluster peers (e.g. `0.0.0.0:4697`). Without it the
    /// node runs alone.
    #[arg(long, env = "MP4TOMP3_CLUSTER_LISTEN")]
    pub cluster_listen: Option<SocketAddr>,
    /// The `host:port` peers reach this node at. Default: the listen address, or
    /// `$POD_IP:port` when listening on all interfaces.
    #[arg(long, env = "MP4TOMP3_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// The shared secret of the cluster handshake (required with peers).
    #[arg(long, env = "MP4TOMP3_CLUSTER_COOKIE", hide_env_values = true)]
    pub cluster_cookie: Option<String>,
    /// TLS between nodes: this node's certificate chain (PEM). With `--cluster-tls-key` and
    /// `--cluster-tls-ca`; every node then accepts and dials only TLS peers whose
    /// certificate the CA signed (mutual TLS).
    #[arg(long, env = "MP4TOMP3_CLUSTER_TLS_CERT")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// TLS between nodes: this node's private key (PEM).
    #[arg(long, env = "MP4TOMP3_CLUSTER_TLS_KEY")]
    pub cluster_tls_key: Option<PathBuf>,
    /// TLS between nodes: the CA certificate(s) that sign node certificates (PEM).
    #[arg(long, env = "MP4TOMP3_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// TLS between nodes: the DNS name every node certificate carries (peers are dialled by
    /// IP, so this shared name is what dialers verify).
    #[arg(long, env = "MP4TOMP3_CLUSTER_TLS_SERVER_NAME", default_value = "mp4tomp3-cluster")]
    pub cluster_tls_server_name: String,
    /// Run the mesh in clear text under kube discovery (which otherwise requires
    /// `--cluster-tls-*`): MP4 and MP3 bytes and replicated password hashes then cross the
    /// pod network protected by the cookie alone. Every status says so.
    #[arg(long, env = "MP4TOMP3_CLUSTER_INSECURE")]
    pub cluster_insecure: bool,
    /// How peers are found.
    #[arg(long, env = "MP4TOMP3_DISCOVERY", value_enum, default_value_t = Discovery::Static)]
    pub discovery: Discovery,
    /// `--discovery kube`: the label selector of our pods.
    #[arg(
        long,
        env = "MP4TOMP3_KUBE_SELECTOR",
        default_value = "app.kubernetes.io/name=mp4tomp3"
    )]
    pub kube_selector: String,
    /// Static discovery: the other nodes' `host:port` (comma-separated). None: one node.
    #[arg(long, env = "MP4TOMP3_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Connect timeout for URL imports.
    #[arg(long, env = "MP4TOMP3_FETCH_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub fetch_connect_timeout: Duration,
    /// Read timeout (between bytes) for URL imports.
    #[arg(long, env = "MP4TOMP3_FETCH_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub fetch_read_timeout: Duration,
}

/// A configuration the service refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of range or malformed.
    #[error("invalid --{flag}: {reason}")]
    Invalid {
        /// The flag (without dashes).
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the file is for.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Where emails go.
#[derive(Debug, Clone)]
pub enum MailConfig {
    /// `.eml` files in this directory.
    Files(PathBuf),
    /// An SMTP server.
    Smtp {
        /// Host name.
        host: String,
        /// Port.
        port: u16,
        /// Transport security.
        tls: SmtpTls,
        /// User and password.
        credentials: Option<(String, String)>,
    },
}

/// How this node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The listen address.
    pub listen: SocketAddr,
    /// `host:port` peers reach us at.
    pub advertise: String,
    /// The handshake secret.
    pub cookie: String,
    /// Static peers (`host:port`), without ourselves.
    pub peers: Vec<String>,
    /// Kube discovery: the label selector (`None`: static discovery).
    pub kube_selector: Option<String>,
    /// Kube discovery: the namespace (`POD_NAMESPACE`, else the client's default).
    pub kube_namespace: Option<String>,
    /// TLS between nodes (`None`: plain TCP, authenticated by the cookie only).
    pub tls: Option<TlsFiles>,
    /// Kube discovery without TLS, asked for (`--cluster-insecure`): every status says so.
    pub insecure: bool,
}

/// TLS between nodes, as configured: the files (PEM) and the name every node certificate
/// carries. The mesh loads them when it starts (`cluster/tls.rs`); `mp4tomp3 serve` loads
/// them once before anything else, so that a bad file is a configuration error.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// This node's certificate chain.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// The CA certificate(s) that sign node certificates.
    pub ca: PathBuf,
    /// The DNS name dialers verify.
    pub server_name: String,
}

/// The HTTP server's bounds.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Longest wait for a complete request head, and longest idle keep-alive.
    pub header_timeout: Duration,
    /// Most open connections from one IP address.
    pub per_address: usize,
}

/// The validated configuration every part of the service reads.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data dir (created at start).
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// `/metrics` on its own address (`None`: on the API's port).
    pub metrics_listen: Option<SocketAddr>,
    /// Base URL for links, without a trailing slash.
    pub public_url: String,
    /// `public_url` was configured (not derived from the listen address).
    pub public_url_explicit: bool,
    /// This node's stable name.
    pub node_name: String,
    /// Concurrent conversions on this node.
    pub converter_slots: usize,
    /// Nodes holding each done job's MP3 (1: only its own).
    pub mp3_replicas: usize,
    /// Upload/download size cap in bytes.
    pub max_upload_bytes: u64,
    /// The HTTP server's bounds.
    pub http_limits: HttpLimits,
    /// Uploads slower than this (bytes per second) over `slow_upload_window` are dropped.
    pub min_upload_rate: u64,
    /// The window of `min_upload_rate`.
    pub slow_upload_window: Duration,
    /// Free space kept on the data volume.
    pub min_free_bytes: u64,
    /// Longest accepted audio.
    pub max_duration: Duration,
    /// Drain time on SIGTERM.
    pub grace: Duration,
    /// Token and link signing keys.
    pub keys: Keys,
    /// Access token lifetime.
    pub token_ttl: Duration,
    /// Download link lifetime.
    pub link_ttl: Duration,
    /// How long an unfinished resumable upload is kept after its last byte.
    pub upload_expiry: Duration,
    /// How long an ended job is kept.
    pub retention: Duration,
    /// Keep inputs until their job expires.
    pub keep_inputs: bool,
    /// Per-user limits where a user has none of their own.
    pub quota: Quota,
    /// Logins per client address per minute.
    pub login_per_minute: u32,
    /// Failures before an account locks.
    pub lockout_after: u32,
    /// Lock duration.
    pub lockout_for: Duration,
    /// Admin to create at start.
    pub admin: Option<(String, Option<String>)>,
    /// Where mail goes.
    pub mail: MailConfig,
    /// The `From:` of emails.
    pub mail_from: String,
    /// Hosts URL imports may reach despite the address checks.
    pub fetch_allow_hosts: Vec<String>,
    /// URL import connect timeout.
    pub fetch_connect_timeout: Duration,
    /// URL import read timeout.
    pub fetch_read_timeout: Duration,
    /// The cluster, if this node is part of one.
    pub cluster: Option<ClusterConfig>,
}

impl Config {
    /// Validates `args`, creating the data dir and (if needed) the JWT key file in it.
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let invalid = |flag, reason: &str| ConfigError::Invalid {
            flag,
            reason: reason.to_string(),
        };
        std::fs::create_dir_all(&args.data_dir).map_err(|source| ConfigError::Io {
            what: "cannot create the data dir",
            path: args.data_dir.clone(),
            source,
        })?;
        let node_name = match args.node_name {
            Some(name) => name,
            None => default_node_name(),
        };
        if crate::store::JobId::parse(&format!("{node_name}~{}", "0".repeat(24))).is_none() {
            return Err(invalid("node-name", "use letters, digits, '-' and '.' only"));
        }
        let public_url_explicit = args.public_url.is_some();
        let public_url = args
            .public_url
            .unwrap_or_else(|| format!("http://{}", args.http))
            .trim_end_matches('/')
            .to_string();
        if url::Url::parse(&public_url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
            return Err(invalid("public-url", "must be an http:// or https:// URL"));
        }
        let converter_slots = args
            .converter_slots
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if converter_slots > 256 {
            return Err(invalid("converter-slots", "at most 256"));
        }
        if args.max_connections_per_ip == 0 {
            return Err(invalid("max-connections-per-ip", "must be at least 1"));
        }
        if args.header_timeout.is_zero() || args.slow_upload_window.is_zero() {
            return Err(invalid("header-timeout", "timeouts must be longer than zero"));
        }
        if args.max_upload_bytes == 0 {
            return Err(invalid("max-upload-bytes", "must be positive"));
        }
        if args.quota_active < 0 || args.quota_jobs_per_day < 0 || args.quota_stored_bytes < 0 {
            return Err(invalid("quota-active", "quotas must not be negative"));
        }
        if args.login_per_minute == 0 || args.lockout_after == 0 {
            return Err(invalid("login-per-minute", "limits must be positive"));
        }
        let mail = match args.smtp_host {
            None => MailConfig::Files(args.data_dir.join("mail")),
            Some(host) => MailConfig::Smtp {
                port: args.smtp_port.unwrap_or(match args.smtp_tls {
                    SmtpTls::None => 25,
                    SmtpTls::Starttls => 587,
                    SmtpTls::Tls => 465,
                }),
                host,
                tls: args.smtp_tls,
                credentials: args.smtp_user.map(|u| (u, args.smtp_password.unwrap_or_default())),
            },
        };
        if args.mail_from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(invalid("mail-from", "not an email address"));
        }
        let mut cluster = cluster_config(
            args.cluster_listen,
            args.cluster_advertise,
            args.cluster_cookie,
            args.peers,
        )?;
        if args.discovery == Discovery::Kube {
            let Some(cluster) = cluster.as_mut() else {
                return Err(invalid(
                    "discovery",
                    "kube needs --cluster-listen and MP4TOMP3_CLUSTER_COOKIE",
                ));
            };
            cluster.kube_selector = Some(args.kube_selector);
            cluster.kube_namespace = std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty());
        }
        let tls_files = (args.cluster_tls_cert, args.cluster_tls_key, args.cluster_tls_ca);
        match (tls_files, cluster.as_mut()) {
            ((None, None, None), _) => {}
            ((Some(cert), Some(key), Some(ca)), Some(cluster)) => {
                cluster.tls = Some(TlsFiles {
                    cert,
                    key,
                    ca,
                    server_name: args.cluster_tls_server_name,
                });
            }
            (_, None) => return Err(invalid("cluster-tls-cert", "TLS between nodes needs --cluster-listen")),
            _ => {
                return Err(invalid(
                    "cluster-tls-cert",
                    "--cluster-tls-cert, --cluster-tls-key and --cluster-tls-ca go together",
                ));
            }
        }
        if let Some(cluster) = cluster.as_mut()
            && cluster.kube_selector.is_some()
            && cluster.tls.is_none()
        {
            if !args.cluster_insecure {
                return Err(invalid(
                    "cluster-tls-cert",
                    "kube discovery needs TLS between pods (--cluster-tls-cert, --cluster-tls-key, \
                     --cluster-tls-ca: see statefulset/tls/), or --cluster-insecure to run the mesh in clear text",
                ));
            }
            cluster.insecure = true;
        }
        // Last: a generated key is written to the data dir, so only once all else is valid.
        let secret = match (args.jwt_secret, args.jwt_secret_file) {
            (Some(secret), _) => secret.into_bytes(),
            (None, Some(path)) => std::fs::read(&path).map_err(|source| ConfigError::Io {
                what: "cannot read the JWT key file",
                path,
                source,
            })?,
            // Every node of a cluster must sign and verify with one key (behind the
            // StatefulSet's Service a client's next request lands on any pod): derive it
            // from the secret they already share.
            (None, None) => match &cluster {
                Some(cluster) => cluster_jwt_key(&cluster.cookie),
                None => generated_key(&args.data_dir.join("jwt.key"))?,
            },
        };
        let secret = trim_ascii(&secret);
        let keys = Keys::new(&secret).filter(|_| secret.len() >= 32);
        let Some(keys) = keys else {
            return Err(invalid("jwt-secret", "must be at least 32 bytes"));
        };
        let mp3_replicas = usize::from(args.mp3_replicas.unwrap_or(if cluster.is_some() { 2 } else { 1 }));
        Ok(Config {
            cluster,
            data_dir: args.data_dir,
            http: args.http,
            metrics_listen: args.metrics_listen,
            public_url,
            public_url_explicit,
            node_name,
            converter_slots,
            mp3_replicas,
            max_upload_bytes: args.max_upload_bytes,
            http_limits: HttpLimits {
                header_timeout: args.header_timeout,
                per_address: args.max_connections_per_ip,
            },
            min_upload_rate: args.min_upload_rate,
            min_free_bytes: args.min_free_bytes,
            slow_upload_window: args.slow_upload_window,
            max_duration: Duration::from_secs(args.max_duration_secs),
            grace: args.grace,
            keys,
            token_ttl: args.token_ttl,
            link_ttl: args.link_ttl,
            upload_expiry: args.upload_expiry,
            quota: Quota {
                max_active: Some(args.quota_active),
                max_jobs_per_day: Some(args.quota_jobs_per_day),
                max_stored_bytes: Some(args.quota_stored_bytes),
            },
            retention: args.retention,
            keep_inputs: args.keep_inputs,
            login_per_minute: args.login_per_minute,
            lockout_after: args.lockout_after,
            lockout_for: args.lockout_for,
            admin: args.admin_email.map(|e| (e, args.admin_password)),
            mail,
            mail_from: args.mail_from,
            fetch_allow_hosts: args
                .fetch_allow_hosts
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            fetch_connect_timeout: args.fetch_connect_timeout,
            fetch_read_timeout: args.fetch_read_timeout,
        })
    }

    /// Conversion settings for a job that asked for `bitrate` or `vbr` (or neither).
    pub fn convert_options(&self, bitrate: Option<u16>, vbr: Option<u8>) -> ConvertOptions {
        let quality = match (vbr, bitrate) {
            (Some(quality), _) => Quality::Vbr { quality },
            (None, Some(kbps)) => Quality::Cbr { kbps },
            (None, None) => Quality::default(),
        };
        ConvertOptions {
            quality,
            track: None,
            max_duration: Some(self.max_duration),
            // The converter lends a conversion its free slots (converter.rs).
            threads: 1,
            slots: None,
            segment_secs: None,
        }
    }

    /// Derives the default public URL from the address actually bound (e.g. port 0).
    pub fn bound_to(mut self, addr: std::net::SocketAddr) -> Self {
        if !self.public_url_explicit {
            self.public_url = format!("http://{addr}");
        }
        self
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("node.db")
    }
}

fn cluster_config(
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    cookie: Option<String>,
    peers: Vec<String>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let invalid = |flag, reason: &str| ConfigError::Invalid {
        flag,
        reason: reason.to_string(),
    };
    let peers: Vec<String> = peers
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let Some(listen) = listen else {
        if !peers.is_empty() {
            return Err(invalid("cluster-listen", "is required when --peers are given"));
        }
        return Ok(None);
    };
    let cookie = cookie.filter(|c| !c.is_empty());
    let Some(cookie) = cookie else {
        return Err(invalid(
            "cluster-cookie",
            "set MP4TOMP3_CLUSTER_COOKIE: every node of a cluster needs the shared cookie",
        ));
    };
    let advertise = match advertise {
        Some(a) => a,
        None if !listen.ip().is_unspecified() => listen.to_string(),
        None => match std::env::var("POD_IP") {
            Ok(ip) if !ip.is_empty() => format!("{ip}:{}", listen.port()),
            _ => {
                return Err(invalid(
                    "cluster-advertise",
                    "needed when listening on all interfaces without POD_IP",
                ));
            }
        },
    };
    for peer in &peers {
        if peer
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(invalid("peers", &format!("{peer:?} is not host:port")));
        }
    }
    let peers = peers.into_iter().filter(|p| *p != advertise).collect();
    Ok(Some(ClusterConfig {
        listen,
        advertise,
        cookie,
        peers,
        kube_selector: None,
        kube_namespace: None,
        tls: None,
        insecure: false,
    }))
}

/// The pod name (StatefulSet pods get `POD_NAME` from the downward API), else the host name.
fn default_node_name() -> String {
    let raw = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_else(|| "node".to_string());
    let cleaned: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "node".to_string()
    } else {
        cleaned
    }
}

fn trim_ascii(bytes: &[u8]) -> Vec<u8> {
    bytes.trim_ascii().to_vec()
}

/// The JWT key of a cluster without `MP4TOMP3_JWT_SECRET`: HMAC-SHA256 of a fixed label
/// under the cluster cookie, so every node with the cookie derives the same key and the
/// key reveals nothing of the cookie.
fn cluster_jwt_key(cookie: &str) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, cookie.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, b"mp4tomp3 JWT signing key v1");
    hex::encode(tag.as_ref()).into_bytes()
}

/// Reads the key kept in the data dir, generating it (with a warning) on first start.
fn generated_key(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let io = |what| {
        move |source| ConfigError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    match std::fs::read(path) {
        Ok(key) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = [0u8; 32];
            getrandom::fill(&mut raw).map_err(|e| io("cannot generate the JWT key")(std::io::Error::other(e)))?;
            let key = hex::encode(raw);
            crate::store::files::write_atomically(path, key.as_bytes()).map_err(io("cannot write the JWT key"))?;
            tracing::warn!(path = %path.display(), "generated a JWT signing key; set MP4TOMP3_JWT_SECRET to share one across nodes");
            Ok(key.into_bytes())
        }
        Err(e) => Err(io("cannot read the JWT key")(e)),
    }
}

#[cfg(test)]
mod tests;
