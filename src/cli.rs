//! The command line: `mp4tomp3 convert ...` (and, later, `serve` and `user`).
//!
//! `main.rs` only parses and calls [`run`]; everything a command does lives here or below,
//! so it can be tested without spawning the binary.

use crate::meta::users::UserOp;
use std::fs::File;
use std::io::{self, IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::auth::{normalize_email, password};
use crate::config::{Config, ConfigError, ServeArgs};
use crate::convert::{self, ConvertError, ConvertOptions, Hooks, Quality};
use crate::store::{Quota, Store};

/// The log filter when `RUST_LOG` is not set: our warnings, none of symphonia's chatter
/// (every failure it reports reaches the user as our own error).
pub const DEFAULT_LOG_FILTER: &str = "warn,symphonia_core=off,symphonia_format_isomp4=off,\
symphonia_codec_aac=off,symphonia_codec_alac=off,symphonia_bundle_mp3=off,symphonia_bundle_flac=off";

impl Cli {
    /// The log filter when `RUST_LOG` is not set: the service logs its work (info); the
    /// one-shot commands only warn.
    pub fn default_log_filter(&self) -> String {
        match self.command {
            Command::Serve(_) => DEFAULT_LOG_FILTER.replacen("warn", "info", 1),
            _ => DEFAULT_LOG_FILTER.to_string(),
        }
    }
}

/// mp4tomp3: turn MP4 files into MP3s.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text, or as one JSON object per line (for log collectors).
    #[arg(long, global = true, env = "MP4TOMP3_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert one MP4/M4A/MOV file to MP3, locally, without a server.
    Convert(ConvertArgs),
    /// Run the service (HTTP API, conversions, emails) until SIGTERM or Ctrl-C.
    Serve(Box<ServeArgs>),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Copy a node's data dir (databases through SQLite's online backup, then the files)
    /// into a new directory. Works while the node serves.
    Backup(BackupArgs),
    /// Put a backup back into a data dir (the node must be stopped).
    Restore(RestoreArgs),
}

/// `mp4tomp3 backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The new directory to write the backup into (absent or empty).
    #[arg(long)]
    pub to: PathBuf,
    /// The service's data dir.
    #[arg(long, env = "MP4TOMP3_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// `mp4tomp3 restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup's directory.
    #[arg(long)]
    pub from: PathBuf,
    /// The service's data dir (empty, unless `--force`).
    #[arg(long, env = "MP4TOMP3_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Replace the data the data dir holds.
    #[arg(long)]
    pub force: bool,
    /// Leave the replicated metadata out (a pod of a running cluster: it comes back as an
    /// empty member and the others send it their state).
    #[arg(long)]
    pub without_metadata: bool,
}

/// `mp4tomp3 user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (or reset its password), reading the password from standard input.
    /// Works while the server runs.
    Add(UserAddArgs),
    /// Remove a user: their tokens stop working and their jobs and files are deleted, on
    /// every node of the cluster. Works while the server runs.
    Remove(UserRemoveArgs),
    /// Set a user's limits (they replicate to every node): a flag left out keeps that
    /// limit as it is, `default` returns it to the configured default. Works while the
    /// server runs.
    Set(UserSetArgs),
}

/// `mp4tomp3 user set`.
#[derive(Debug, Args)]
pub struct UserSetArgs {
    /// The user's email.
    pub email: String,
    /// Unfinished jobs (and uploads) at once: a number or `default`.
    #[arg(long, value_parser = limit)]
    pub max_active: Option<Limit>,
    /// Jobs created in any 24 hours: a number or `default`.
    #[arg(long, value_parser = limit)]
    pub max_jobs_per_day: Option<Limit>,
    /// Bytes stored (inputs, MP3s, unfinished uploads): a number or `default`.
    #[arg(long, value_parser = limit)]
    pub max_stored_bytes: Option<Limit>,
    /// The service's data dir.
    #[arg(long, env = "MP4TOMP3_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// A limit on the command line.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// The configured default.
    Default,
    /// This many.
    At(i64),
}

fn limit(raw: &str) -> Result<Limit, String> {
    if raw.eq_ignore_ascii_case("default") {
        return Ok(Limit::Default);
    }
    match raw.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(Limit::At(n)),
        _ => Err(format!("{raw:?} is neither a number (0 or more) nor `default`")),
    }
}

/// `mp4tomp3 user remove`.
#[derive(Debug, Args)]
pub struct UserRemoveArgs {
    /// The user's email.
    pub email: String,
    /// The service's data dir.
    #[arg(long, env = "MP4TOMP3_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// `mp4tomp3 user add`.
#[derive(Debug, Args)]
pub struct UserAddArgs {
    /// The user's email.
    pub email: String,
    /// Make the user an admin.
    #[arg(long)]
    pub admin: bool,
    /// The service's data dir.
    #[arg(long, env = "MP4TOMP3_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// `mp4tomp3 convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The input file; `-` reads standard input.
    pub input: PathBuf,
    /// The MP3 to write; `-` writes standard output. Default: the input with `.mp3`.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Constant bitrate in kbps (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320).
    #[arg(long, conflicts_with = "vbr")]
    pub bitrate: Option<u16>,
    /// Variable bitrate at LAME quality 0 (best) to 9 (smallest).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub vbr: Option<u8>,
    /// Which audio track to convert, counting audio tracks from 0. Default: the first.
    #[arg(long)]
    pub track: Option<usize>,
    /// Refuse inputs whose audio is longer than this many seconds.
    #[arg(long)]
    pub max_duration: Option<u64>,
    /// Overwrite the output if it exists.
    #[arg(long)]
    pub force: bool,
    /// Encoder threads: a long input is cut into segments on the MP3 frame grid, encoded
    /// on N cores at once and joined into the same stream one core would write (VBR audio
    /// bit-identical). Default: every core; 1 encodes in one piece.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// The same as `--threads 1`.
    #[arg(long, conflicts_with = "threads")]
    pub sequential: bool,
    /// Segment length in seconds (default: 60–120 s, several per thread).
    #[arg(long, hide = true, value_parser = parse_segment_secs)]
    pub segment_secs: Option<f64>,
    /// Refuse a damaged input rather than keep what could be recovered from it (exit 2,
    /// no output).
    #[arg(long)]
    pub strict: bool,
}

/// A failed command: what to print and how to exit.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The user's input or arguments are wrong: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The conversion failed.
    #[error("{0}")]
    Convert(#[from] ConvertError),
    /// Something outside the input went wrong (disk, permissions): exit 1.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The service's configuration is invalid: exit 2.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The service failed: exit 1.
    #[error("{0:#}")]
    Service(#[from] anyhow::Error),
}

impl CliError {
    /// What starts the error's line on stderr: a conversion error's code (as in the
    /// README and the API), else `error`.
    pub fn code(&self) -> &'static str {
        match self {
            CliError::Convert(e) => e.code(),
            _ => "error",
        }
    }

    /// 2 for bad input, 1 for internal failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => 2,
            CliError::Convert(e) if e.is_input_error() => 2,
            CliError::Convert(_) | CliError::Io(_) | CliError::Service(_) => 1,
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Convert(args) => run_convert(&args),
        Command::Serve(args) => run_serve(*args),
        Command::User(UserCommand::Add(args)) => run_user_add(&args),
        Command::User(UserCommand::Remove(args)) => run_user_remove(&args),
        Command::User(UserCommand::Set(args)) => run_user_set(&args),
        Command::Backup(args) => {
            let copied = crate::backup::backup(&args.data_dir, &args.to).map_err(backup_error)?;
            writeln!(
                io::stderr(),
                "mp4tomp3: backed up {} database(s) and {} file(s), {} bytes, into {}",
                copied.databases,
                copied.files,
                copied.bytes,
                args.to.display()
            )?;
            Ok(())
        }
        Command::Restore(args) => {
            let copied = crate::backup::restore(&args.from, &args.data_dir, !args.without_metadata, args.force)
                .map_err(backup_error)?;
            writeln!(
                io::stderr(),
                "mp4tomp3: restored {} database(s) and {} file(s), {} bytes, into {}",
                copied.databases,
                copied.files,
                copied.bytes,
                args.data_dir.display()
            )?;
            Ok(())
        }
    }
}

/// A refused backup or restore is bad input (exit 2); a failed one, exit 1.
fn backup_error(e: crate::backup::BackupError) -> CliError {
    match e {
        crate::backup::BackupError::Refused(why) => CliError::Usage(why),
        other => CliError::Service(other.into()),
    }
}

fn run_serve(args: ServeArgs) -> Result<(), CliError> {
    let config = Config::from_args(args)?;
    // The mesh loads its TLS files when it starts; a bad one is a configuration error here.
    if let Some(files) = config.cluster.as_ref().and_then(|c| c.tls.as_ref()) {
        crate::cluster::tls::ClusterTls::from_files(files).map_err(|reason| ConfigError::Invalid {
            flag: "cluster-tls-cert",
            reason,
        })?;
    }
    let bind = |address: std::net::SocketAddr| {
        std::net::TcpListener::bind(address).map_err(|e| CliError::Usage(format!("cannot listen on {address}: {e}")))
    };
    let listeners = crate::node::Listeners {
        http: bind(config.http)?,
        metrics: config.metrics_listen.map(bind).transpose()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(crate::node::run(config, listeners, Box::pin(shutdown_signal())))?;
    Ok(())
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn run_user_add(args: &UserAddArgs) -> Result<(), CliError> {
    let email = normalize_email(&args.email)
        .ok_or_else(|| CliError::Usage(format!("{:?} is not an email address", args.email)))?;
    let mut line = String::new();
    io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    let hash = password::hash(password).map_err(|e| CliError::Usage(e.to_string()))?;
    std::fs::create_dir_all(&args.data_dir)?;
    let mut store = Store::open(&args.data_dir.join("node.db")).map_err(|e| CliError::Service(e.into()))?;
    // Here at once (a login on this node works now), and queued for the replicated
    // metadata, which a running node commits within moments (the next start otherwise).
    let created = store
        .put_user(&email, &hash, args.admin)
        .map_err(|e| CliError::Service(e.into()))?;
    let op = UserOp::Put {
        password_hash: hash,
        admin: args.admin,
    };
    let when = queue(&mut store, &args.data_dir, &email, &op)?;
    let verb = if created { "created" } else { "updated" };
    let role = if args.admin { "admin" } else { "user" };
    tracing::info!(%email, "user {verb}");
    writeln!(io::stderr(), "mp4tomp3: {role} {email} {verb}{when}")?;
    Ok(())
}

/// Queues `op` of user `email` for the replicated metadata (done here already); with a
/// node serving the data dir, waits (up to 15 s) for it to be committed. Answers what to add
/// to the report if it is still waiting.
fn queue(store: &mut Store, data_dir: &std::path::Path, email: &str, op: &UserOp) -> Result<&'static str, CliError> {
    let op = serde_json::to_string(op).map_err(|e| CliError::Service(e.into()))?;
    let queued = store
        .queue_user_op(email, Some(&op))
        .map_err(|e| CliError::Service(e.into()))?;
    if !crate::node::serving(data_dir) {
        return Ok("");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while store.user_op_waiting(queued).map_err(|e| CliError::Service(e.into()))? {
        if std::time::Instant::now() > deadline {
            return Ok(" (the running service commits it once its metadata group has a leader)");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok("")
}

/// The normalized email and the database of an existing data dir.
fn existing(email: &str, data_dir: &std::path::Path) -> Result<(String, Store), CliError> {
    let normalized =
        normalize_email(email).ok_or_else(|| CliError::Usage(format!("{email:?} is not an email address")))?;
    let db = data_dir.join("node.db");
    if !db.exists() {
        return Err(CliError::Usage(format!("no database at {}", db.display())));
    }
    let store = Store::open(&db).map_err(|e| CliError::Service(e.into()))?;
    Ok((normalized, store))
}

fn run_user_remove(args: &UserRemoveArgs) -> Result<(), CliError> {
    let (email, mut store) = existing(&args.email, &args.data_dir)?;
    if !store.remove_user(&email).map_err(|e| CliError::Service(e.into()))? {
        return Err(CliError::Usage(format!("no user {email}")));
    }
    let when = queue(&mut store, &args.data_dir, &email, &UserOp::Remove)?;
    tracing::info!(%email, "user removed");
    writeln!(io::stderr(), "mp4tomp3: user {email} removed{when}")?;
    Ok(())
}

fn run_user_set(args: &UserSetArgs) -> Result<(), CliError> {
    let (email, mut store) = existing(&args.email, &args.data_dir)?;
    let user = store
        .user(&email)
        .map_err(|e| CliError::Service(e.into()))?
        .ok_or_else(|| CliError::Usage(format!("no user {email}")))?;
    let pick = |given: Option<Limit>, now: Option<i64>| match given {
        None => now,
        Some(Limit::Default) => None,
        Some(Limit::At(n)) => Some(n),
    };
    let quota = Quota {
        max_active: pick(args.max_active, user.quota.max_active),
        max_jobs_per_day: pick(args.max_jobs_per_day, user.quota.max_jobs_per_day),
        max_stored_bytes: pick(args.max_stored_bytes, user.quota.max_stored_bytes),
    };
    store
        .set_quota(&email, &quota)
        .map_err(|e| CliError::Service(e.into()))?;
    let when = queue(&mut store, &args.data_dir, &email, &UserOp::SetQuota(quota))?;
    let show = |n: Option<i64>| n.map_or_else(|| "default".to_string(), |n| n.to_string());
    tracing::info!(%email, "user limits set");
    writeln!(
        io::stderr(),
        "mp4tomp3: {email}: max_active {}, max_jobs_per_day {}, max_stored_bytes {}{when}",
        show(quota.max_active),
        show(quota.max_jobs_per_day),
        show(quota.max_stored_bytes)
    )?;
    Ok(())
}

fn parse_segment_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(secs) if (1.0..=3600.0).contains(&secs) => Ok(secs),
        _ => Err("a number of seconds from 1 to 3600".into()),
    }
}

fn run_convert(args: &ConvertArgs) -> Result<(), CliError> {
    let quality = match (args.bitrate, args.vbr) {
        (_, Some(quality)) => Quality::Vbr { quality },
        (Some(kbps), None) => Quality::Cbr { kbps },
        (None, None) => Quality::default(),
    }
    .validate()?;
    let opts = ConvertOptions {
        quality,
        track: args.track,
        max_duration: args.max_duration.map(Duration::from_secs),
        threads: if args.sequential {
            1
        } else {
            args.threads.map_or(0, usize::from)
        },
        slots: None,
        segment_secs: args.segment_secs,
    };
    let from_stdin = args.input.as_os_str() == "-";
    let output = match (&args.output, from_stdin) {
        (Some(out), _) => out.clone(),
        (None, false) => args.input.with_extension("mp3"),
        (None, true) => {
            return Err(CliError::Usage(
                "reading standard input needs -o OUT (or -o - for standard output)".into(),
            ));
        }
    };
    let to_stdout = output.as_os_str() == "-";
    if !to_stdout && output.exists() && !args.force {
        return Err(CliError::Usage(format!(
            "{} already exists; pass --force to overwrite it",
            output.display()
        )));
    }
    let input = if from_stdin {
        convert::spool(io::stdin().lock())?
    } else {
        File::open(&args.input).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", args.input.display())))?
    };

    let bar = progress_bar();
    let on_progress = |f: f64| bar.set_position((f * 1000.0) as u64);
    let hooks = Hooks {
        progress: Some(&on_progress),
        cancel: None,
    };
    // A partial result (a damaged input) is kept with a warning, or refused with --strict.
    let checked = |summary: convert::Summary| match summary.warning() {
        Some(warning) if args.strict => Err(ConvertError::Corrupt(format!(
            "the input is damaged ({warning}); --strict refuses a partial result"
        ))),
        warning => Ok(warning),
    };
    let result = if to_stdout {
        let mut tmp = tempfile::tempfile()?;
        let warning = checked(convert::convert(input, &mut tmp, &opts, hooks)?)?;
        tmp.seek(SeekFrom::Start(0))?;
        io::copy(&mut tmp, &mut io::stdout().lock())?;
        Ok(warning)
    } else {
        let mut warning = None;
        write_atomically(&output, args.force, |file| {
            warning = checked(convert::convert(input, file, &opts, hooks)?)?;
            Ok(())
        })
        .map(|()| warning)
    };
    bar.finish_and_clear();
    if let Some(warning) = result? {
        writeln!(io::stderr(), "mp4tomp3: warning: {warning}")?;
    }
    Ok(())
}

/// Writes `path` through a temp file beside it, fsynced and renamed into place, so a
/// failed or interrupted conversion never leaves a partial MP3 under the final name.
fn write_atomically(
    path: &Path,
    force: bool,
    write: impl FnOnce(&mut File) -> Result<(), ConvertError>,
) -> Result<(), CliError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".mp4tomp3-")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| CliError::Usage(format!("cannot write in {}: {e}", dir.display())))?;
    write(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    let persisted = if force {
        tmp.persist(path)
    } else {
        tmp.persist_noclobber(path)
    };
    persisted.map_err(|e| match e.error.kind() {
        io::ErrorKind::AlreadyExists => CliError::Usage(format!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        )),
        _ => CliError::Io(e.error),
    })?;
    Ok(())
}

/// A progress bar on a terminal; hidden when stderr is not one.
fn progress_bar() -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1000);
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}
