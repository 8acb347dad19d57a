//! Wiring of one node: prepare the data dir, start the supervision tree, wait for the
//! shutdown signal, and stop in order.
//!
//! Shutdown order: refuse conversions from other nodes, stop accepting HTTP → then either
//! let running conversions finish within the grace period (what does not finish stays
//! `converting` in SQLite and resumes at the next start), or, when the StatefulSet was
//! scaled down below this pod's ordinal, hand every job over to the staying nodes
//! (`actors/request/handoff.rs`) → stop the supervisor and its actors.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use ractor::Actor;

use crate::actors::converter::host::{self, HostMsg};
use crate::actors::request::{RequestMsg, copies, directory, handoff};
use crate::actors::{Role, ask};
use crate::auth::{normalize_email, password};
use crate::cluster::probe::Facts;
use crate::config::Config;
use crate::meta::Meta;
use crate::store::{Db, Files, Store};
use gateway::GatewayMsg;
pub use gateway::Listeners;
use supervisor::{NodeSupervisor, SupervisorArgs, SupervisorMsg};

pub mod gateway;
pub mod metadata;
pub mod supervisor;
pub mod users;

/// Runs a node until `shutdown` completes (or the supervision tree gives up).
///
/// Both futures are boxed so that a caller sees neither the node's future type nor a
/// generic body: a crate that spawns the node otherwise compiles its own copy of the
/// node's state machine (a test that runs a node in its process took 5.6 minutes of CI's
/// build for that copy).
pub fn run(
    config: Config,
    listeners: Listeners,
    shutdown: BoxFuture<'static, ()>,
) -> BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(run_node(config, listeners, shutdown))
}

async fn run_node(config: Config, listeners: Listeners, shutdown: BoxFuture<'static, ()>) -> anyhow::Result<()> {
    let config = Arc::new(config.bound_to(listeners.http.local_addr()?));
    let prepared = config.clone();
    tokio::task::spawn_blocking(move || prepare(&prepared)).await??;
    // Held while serving: `mp4tomp3 user add` waits for its change to be committed when
    // it finds the lock held (`serving`).
    let _serving = serving_lock(&config.data_dir);
    let clock = tokio::spawn(crate::clock::watch());
    let address = listeners.http.local_addr()?;
    let metrics = listeners.metrics.as_ref().map(|m| m.local_addr()).transpose()?;
    // The replicated metadata outlives the roles' restarts: started here, beside the tree.
    let meta = Meta::start(&config.node_name, &config.data_dir, &[])
        .await
        .context("cannot open the metadata store")?;
    let facts = Facts::new(Role::ALL.map(Role::name));
    let keeper = tokio::spawn(metadata::keep(meta.clone(), config.clone(), facts.clone()));
    let jobs_db = Db::open(&config.db_path()).context("cannot open the database")?;
    let publisher = tokio::spawn(directory::publish(
        meta.clone(),
        jobs_db.clone(),
        config.node_name.clone(),
    ));
    let copier = tokio::spawn(copies::keep(meta.clone(), config.clone()));
    let mirror = tokio::spawn(users::mirror(meta.clone(), jobs_db.clone()));
    let queue = tokio::spawn(users::commit_queued(meta.clone(), jobs_db.clone()));
    let (supervisor, mut tree) = Actor::spawn(
        Some(format!("node:{}", config.node_name)),
        NodeSupervisor,
        SupervisorArgs {
            config: config.clone(),
            listeners,
            facts,
            meta: meta.clone(),
        },
    )
    .await
    .context("cannot start the node")?;
    match metrics {
        Some(metrics) => {
            tracing::info!(%address, %metrics, node = %config.node_name, slots = config.converter_slots, "mp4tomp3 serving")
        }
        None => tracing::info!(%address, node = %config.node_name, slots = config.converter_slots, "mp4tomp3 serving"),
    }
    crate::memory::spawn_trimmer();

    tokio::select! {
        () = shutdown => tracing::info!("shutting down"),
        _ = &mut tree => anyhow::bail!("the node's supervisor stopped; see the errors above"),
    }
    let _ = supervisor.cast(SupervisorMsg::ShuttingDown);
    host::tell_host(HostMsg::Stop);
    if let Err(e) = ask(
        Role::Gateway,
        |reply| GatewayMsg::StopAccepting { reply },
        Duration::from_secs(15),
    )
    .await
    {
        tracing::warn!(error = %e, "HTTP server did not stop cleanly");
    }
    if let Some(replicas) = handoff::leaving(&config).await {
        // The leader removes a leaving pod from the voters (it reads the same replicas);
        // wait for that before the jobs move, so the group never counts on this pod.
        metadata::left_voters(&meta, &config.node_name).await;
        let summary = handoff::hand_over(config.clone(), replicas).await;
        tracing::info!(moved = summary.moved, kept = summary.kept, "handoff finished");
    } else {
        match ask(Role::Request, |reply| RequestMsg::Drain { reply }, config.grace).await {
            Ok(_) => tracing::info!("running conversions finished"),
            Err(_) => tracing::warn!(grace = ?config.grace, "conversions still running; they resume at the next start"),
        }
    }
    // What changed while stopping (finished conversions, handed-over jobs) reaches the
    // directory before the metadata member stops.
    if !directory::settled(&jobs_db, Duration::from_secs(5)).await {
        tracing::warn!("some job changes are not in the directory yet; they are published at the next start");
    }
    // Done jobs' MP3s have their copies on other nodes before this one goes.
    if !copies::settled(&meta, &config, Duration::from_secs(10)).await {
        tracing::warn!("some MP3s have no copy on another node yet; they are readable when this node is back");
    }
    supervisor.stop(Some("shutdown".into()));
    let _ = tokio::time::timeout(Duration::from_secs(10), tree).await;
    keeper.abort();
    clock.abort();
    publisher.abort();
    copier.abort();
    mirror.abort();
    queue.abort();
    meta.stop().await;
    // Uploads still arriving when the node stopped were not accepted: their staged files go
    // now, as they would at the next start.
    let data_dir = config.data_dir.clone();
    let cleared = tokio::task::spawn_blocking(move || Files::new(&data_dir).and_then(|files| files.clear_tmp())).await;
    if !matches!(cleared, Ok(Ok(()))) {
        tracing::warn!("unfinished uploads' staged files stay until the next start");
    }
    Ok(())
}

/// The lock file a serving node holds in `data_dir`.
fn lock_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("serve.lock")
}

/// Takes the serving lock (advisory: a node that cannot take it serves anyway).
fn serving_lock(data_dir: &std::path::Path) -> Option<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(data_dir))
        .ok()?;
    match file.try_lock() {
        Ok(()) => Some(file),
        Err(e) => {
            tracing::warn!(error = %e, "cannot take the data dir's serve.lock; another node may be serving it");
            None
        }
    }
}

/// Whether a node is serving `data_dir` now (it holds the lock).
pub fn serving(data_dir: &std::path::Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(lock_path(data_dir)) else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// Migrates the database, clears interrupted uploads, creates the first admin.
fn prepare(config: &Config) -> anyhow::Result<()> {
    let mut store = Store::open(&config.db_path()).context("cannot open the database")?;
    Files::new(&config.data_dir)
        .and_then(|files| files.clear_tmp())
        .context("cannot prepare the data dir")?;
    match &config.admin {
        Some((email, password)) => {
            let email = normalize_email(email)
                .with_context(|| format!("MP4TOMP3_ADMIN_EMAIL {email:?} is not an email address"))?;
            if store.user(&email)?.is_none() {
                let (password, generated) = match password {
                    Some(p) => (p.clone(), false),
                    None => (random_password(), true),
                };
                add_admin(&mut store, &email, &password)?;
                if generated {
                    tracing::warn!(%email, %password, "created the admin account with this generated password (shown once)");
                } else {
                    tracing::info!(%email, "created the admin account");
                }
            }
        }
        None if store.user_count()? == 0 => {
            let email = "admin@localhost";
            let password = random_password();
            add_admin(&mut store, email, &password)?;
            tracing::warn!(%email, %password, "no users yet: created an admin with this generated password (shown once)");
        }
        None => {}
    }
    Ok(())
}

/// Creates admin `email` here (so it can log in at once) and queues its creation for the
/// replicated metadata (`node/users.rs`: if every node of a new cluster makes one, the
/// first committed stands and the others mirror it).
fn add_admin(store: &mut Store, email: &str, password: &str) -> anyhow::Result<()> {
    let password_hash = password::hash(password)?;
    store.add_user(email, &password_hash, true)?;
    let op = crate::meta::users::UserOp::Add {
        password_hash,
        admin: true,
    };
    store.queue_user_op(email, Some(&serde_json::to_string(&op)?))?;
    Ok(())
}

fn random_password() -> String {
    let mut raw = [0u8; 12];
    let _ = getrandom::fill(&mut raw);
    hex::encode(raw)
}
