//! Keeps this node's member of the metadata group (`meta/`) in step with the cluster:
//! who creates the group, and (at the leader) who votes and who learns.
//!
//! - **Creating the group.** A standalone node creates a one-voter group of itself. In a
//!   cluster exactly one node may create it: the first in ordinal order among this node
//!   and every wanted peer, once it has a session with each of them and none reports a
//!   group of its own (a pod whose volume was replaced must not start a second group: it
//!   waits to be added). It creates the group with the first [`membership::VOTERS`] nodes as
//!   voters. Every other node waits for the leader to add it.
//! - **Membership.** At the leader, every tick applies one step of [`Meta::reconcile`] for
//!   the wanted nodes: with kube discovery the StatefulSet's ordinals below its declared
//!   replicas; with static peers this node, the names its configured peers gave when their
//!   sessions opened (until every peer has been seen once, nothing is changed: a voter never
//!   seen since this node started is not removed) and any other node while it is connected.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::cluster::mesh::{ClusterMsg, MemberView};
use crate::cluster::probe::Facts;
use crate::config::Config;
use crate::meta::{Meta, membership};

/// How often the keeper looks.
const TICK: Duration = Duration::from_millis(500);

/// How often the leader reads the StatefulSet's declared replicas (kube discovery).
const REPLICAS_EVERY: Duration = Duration::from_secs(5);

/// Runs until the process ends: publishes whether this node has a group, creates it when
/// this node is the one to, and reconciles the membership at the leader.
pub async fn keep(meta: Meta, config: Arc<Config>, facts: Facts) {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut replicas: Option<(Instant, u32)> = None;
    loop {
        let group = meta.status().group;
        facts.publish_meta_group(group);
        let step = if group {
            reconcile(&meta, &config, &mut seen, &mut replicas).await
        } else {
            create(&meta, &config, &mut seen).await
        };
        if let Err(e) = step {
            tracing::debug!(error = %e, "metadata keeper: nothing done this tick");
        }
        tokio::time::sleep(TICK).await;
    }
}

/// The members with a session now, and remembers their addresses' names in `seen`.
async fn members(seen: &mut BTreeMap<String, String>) -> anyhow::Result<Vec<MemberView>> {
    let members = ask(Role::Cluster, |reply| ClusterMsg::Members { reply }, CALL_TIMEOUT).await?;
    for m in &members {
        seen.insert(m.address.clone(), m.node.clone());
    }
    Ok(members)
}

/// Creates the group if this node is the one to.
async fn create(meta: &Meta, config: &Config, seen: &mut BTreeMap<String, String>) -> anyhow::Result<()> {
    let me = config.node_name.clone();
    if config.cluster.is_none() {
        meta.initialize(&[me]).await?;
        return Ok(());
    }
    let members = members(seen).await?;
    let away = ask(Role::Cluster, |reply| ClusterMsg::Unreached { reply }, CALL_TIMEOUT).await?;
    if !away.is_empty() {
        return Ok(());
    }
    // Every peer must have answered a heartbeat, and none may be in a group already.
    if members.iter().any(|m| m.status.as_ref().is_none_or(|s| s.meta_group)) {
        return Ok(());
    }
    let mut names: Vec<String> = members.iter().map(|m| m.node.clone()).collect();
    names.push(me.clone());
    let first = membership::voters(&names, 1);
    if !first.contains(&me) {
        return Ok(());
    }
    let voters: Vec<String> = membership::voters(&names, membership::VOTERS).into_iter().collect();
    meta.initialize(&voters).await?;
    Ok(())
}

/// At the leader: one membership step towards the wanted nodes.
async fn reconcile(
    meta: &Meta,
    config: &Config,
    seen: &mut BTreeMap<String, String>,
    replicas: &mut Option<(Instant, u32)>,
) -> anyhow::Result<()> {
    let me = config.node_name.clone();
    let Some(cluster) = &config.cluster else {
        meta.reconcile(&[me]).await?;
        return Ok(());
    };
    let members = members(seen).await?;
    if !meta.leads() {
        return Ok(());
    }
    let mut wanted: BTreeSet<String> = members.iter().map(|m| m.node.clone()).collect();
    wanted.insert(me.clone());
    wanted.extend(seen.values().cloned());
    match (&cluster.kube_selector, crate::cluster::kube::ordinal(&me)) {
        (Some(_), Some((set, _))) => {
            // The StatefulSet's declared replicas say who stays (a restarting pod stays).
            let stale = replicas.is_none_or(|(at, _)| at.elapsed() > REPLICAS_EVERY);
            if stale {
                let read = crate::cluster::kube::desired_replicas(cluster.kube_namespace.clone(), set);
                match tokio::time::timeout(CALL_TIMEOUT, read).await {
                    Ok(Ok(n)) => *replicas = Some((Instant::now(), n)),
                    Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the StatefulSet's replicas"),
                    Err(_) => tracing::debug!("reading the StatefulSet's replicas timed out"),
                }
            }
            let Some((_, n)) = *replicas else {
                return Ok(());
            };
            wanted = (0..n).map(|i| format!("{set}-{i}")).collect();
        }
        _ => {
            // Static peers: every configured address must have given its name once. The
            // configured peers stay wanted while away (a restart is not a removal); a node
            // that joined without being configured here is wanted while connected.
            if cluster.peers.iter().any(|p| !seen.contains_key(p)) {
                return Ok(());
            }
            let connected: BTreeSet<&String> = members.iter().map(|m| &m.node).collect();
            wanted.retain(|name| {
                *name == me
                    || connected.contains(name)
                    || seen.iter().any(|(a, n)| n == name && cluster.peers.contains(a))
            });
        }
    }
    let wanted: Vec<String> = wanted.into_iter().collect();
    meta.reconcile(&wanted).await?;
    Ok(())
}

/// Waits (a bounded time) until node `me` is no longer a voter: a pod leaving on
/// scale-down, removed by the leader's reconcile.
pub async fn left_voters(meta: &Meta, me: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while meta.status().voters.iter().any(|v| v == me) {
        if Instant::now() > deadline {
            tracing::warn!("still a voter of the metadata group; stopping anyway");
            return;
        }
        tokio::time::sleep(TICK).await;
    }
}
