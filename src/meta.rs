//! Replicated metadata: the cluster's small, important state in one Raft group
//! (`openraft`), so that it survives any one pod and reads the same everywhere.
//!
//! - [`store`]: the Raft log, the vote and the state machine in one SQLite file per node
//!   (`DATA/meta.db`, `synchronous=FULL`), snapshots built from its tables;
//! - [`network`]: Raft's messages over the mesh (a `meta.v1` actor per node);
//! - [`membership`]: who votes (the first three ordinals), who learns, decided alike on
//!   every node;
//! - [`Meta`]: a node's handle: start, write a command (sent to the leader from any node),
//!   read this node's replica.
//!
//! What the state machine holds grows command by command ([`Command`]); today:
//! Idempotency-Key claims (user + key → job id, the first claim wins).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use ractor::ActorRef;
use serde::{Deserialize, Serialize};

use self::network::{MetaActor, MetaMsg, MetaNetwork, node_id};
use self::store::{MetaDb, StateMachine};

pub mod membership;
pub mod network;
pub mod store;

openraft::declare_raft_types!(
    /// The metadata group's types: node ids are `u64`, entries carry [`Command`]s.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A change to the replicated state, as the log carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Claims Idempotency-Key `key` of user `email` for job `job`: the first claim wins,
    /// later ones learn the winner.
    ClaimKey {
        /// The user (lower case).
        email: String,
        /// The key.
        key: String,
        /// The job the caller would create.
        job: String,
    },
}

/// What applying a [`Command`] answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Nothing to say (blank and membership entries).
    None,
    /// The job that holds the key (the caller's if its claim won).
    Claimed {
        /// The winning job.
        job: String,
    },
}

/// Why the metadata could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// No leader is known or reachable now (an election, or this node is on a minority
    /// side): retry later.
    #[error("the cluster's metadata has no reachable leader right now: {0}")]
    NoLeader(String),
    /// The metadata file failed.
    #[error("the metadata store failed: {0}")]
    Store(String),
}

/// A learner this close to the leader's last log index counts as caught up.
const CAUGHT_UP_WITHIN: u64 = 16;

/// How long a write forwarded to the leader may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// A node's member of the metadata group.
#[derive(Clone)]
pub struct Meta {
    raft: Raft<TypeConfig>,
    state: StateMachine,
    actor: ActorRef<MetaMsg>,
}

impl Meta {
    /// Starts node `name`'s member, its files in `dir`, in a group whose voters are
    /// `voters` (stable node names; every node must be given the same list).
    pub async fn start(name: &str, dir: &Path, voters: &[String]) -> Result<Meta, MetaError> {
        let db = MetaDb::open(&dir.join("meta.db")).map_err(|e| MetaError::Store(e.to_string()))?;
        let (log, state) = db.stores();
        let config = openraft::Config {
            cluster_name: "mp4tomp3".into(),
            heartbeat_interval: 150,
            election_timeout_min: 600,
            election_timeout_max: 1200,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| MetaError::Store(e.to_string()))?);
        let raft = Raft::new(node_id(name), config, MetaNetwork, log, state.clone())
            .await
            .map_err(|e| MetaError::Store(e.to_string()))?;
        let (actor, _) = ractor::Actor::spawn(None, MetaActor, (name.to_string(), raft.clone()))
            .await
            .map_err(|e| MetaError::Store(e.to_string()))?;
        // Every node proposes the same first membership: whoever's log is still empty
        // writes it (identical entries), the others already have it.
        let members: BTreeMap<u64, BasicNode> = voters.iter().map(|v| (node_id(v), BasicNode::new(v))).collect();
        if raft
            .is_initialized()
            .await
            .map_err(|e| MetaError::Store(e.to_string()))?
        {
            tracing::debug!("metadata group already initialized");
        } else if let Err(e) = raft.initialize(members).await {
            tracing::debug!(error = %e, "metadata group not initialized here");
        }
        Ok(Meta { raft, state, actor })
    }

    /// Commits `command` through the log (at the leader, wherever it is) and answers what
    /// applying it gave.
    pub async fn write(&self, command: Command) -> Result<Outcome, MetaError> {
        match self.raft.client_write(command.clone()).await {
            Ok(done) => Ok(done.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
                let leader = to
                    .leader_node
                    .map(|n| n.addr)
                    .ok_or_else(|| MetaError::NoLeader("no leader elected".into()))?;
                network::forward_write(&leader, &command, FORWARD_TIMEOUT).await
            }
            Err(e) => Err(MetaError::NoLeader(e.to_string())),
        }
    }

    /// The job holding Idempotency-Key `key` of `email`, as this node's replica has it.
    pub async fn claim(&self, email: &str, key: &str) -> Result<Option<String>, MetaError> {
        self.state
            .claim(email, key)
            .await
            .map_err(|e| MetaError::Store(e.to_string()))
    }

    /// At the leader (elsewhere it does nothing): one step towards the membership that
    /// [`membership::plan`] wants for the nodes `wanted` (discovery, less the pods that are
    /// leaving). Called again until it answers `false` (nothing left to change).
    pub async fn reconcile(&self, wanted: &[String]) -> Result<bool, MetaError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            return Ok(false);
        }
        let config = metrics.membership_config.membership().clone();
        let name = |id: u64| config.get_node(&id).map(|n| n.addr.clone());
        let voters = named(&config, config.voter_ids());
        let learners = named(&config, config.learner_ids());
        // A learner is caught up when it lags the leader's log by at most a few entries.
        let last = metrics.last_log_index.unwrap_or(0);
        let caught_up: BTreeSet<String> = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(_, matched)| matched.is_some_and(|m| m.index + CAUGHT_UP_WITHIN >= last))
            .filter_map(|(id, _)| name(*id))
            .collect();
        let plan = membership::plan(&voters, &learners, wanted, &caught_up, membership::VOTERS);
        let failed = |e: RaftError<u64, ClientWriteError<u64, BasicNode>>| MetaError::NoLeader(e.to_string());
        for learner in &plan.add_learners {
            tracing::info!(node = %learner, "metadata group: adding a learner");
            self.raft
                .add_learner(node_id(learner), BasicNode::new(learner), false)
                .await
                .map_err(failed)?;
        }
        if let Some(next) = &plan.set_voters {
            tracing::info!(voters = ?next, "metadata group: changing the voters");
            let ids: BTreeSet<u64> = next.iter().map(|n| node_id(n)).collect();
            self.raft.change_membership(ids, false).await.map_err(failed)?;
        }
        Ok(!plan.add_learners.is_empty() || plan.set_voters.is_some())
    }

    /// This node's voters, by name (as this node's log has them).
    pub fn voters(&self) -> BTreeSet<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let config = metrics.membership_config.membership();
        named(config, config.voter_ids())
    }

    /// This node's Raft (metrics, waits).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Stops this member (its Raft and its actor).
    pub async fn stop(&self) {
        let _ = self.raft.shutdown().await;
        self.actor.stop(None);
    }
}

/// The names of members `ids` of `config`.
fn named(config: &openraft::Membership<u64, BasicNode>, ids: impl Iterator<Item = u64>) -> BTreeSet<String> {
    ids.filter_map(|id| config.get_node(&id).map(|n| n.addr.clone()))
        .collect()
}

#[cfg(test)]
mod tests;
