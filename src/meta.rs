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
//! Idempotency-Key claims (user + key → job id, the first claim wins) and the job
//! directory (every job: which node has it, and its record as that node last published
//! it), so that any node can answer for a job whose node is away.

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
pub mod quota;
pub mod store;
pub mod users;

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

/// Waits until `raft`'s replica has applied everything committed before the call (Raft's
/// read index, at the leader if this member is not it), at most `FORWARD_TIMEOUT * 2`.
async fn fresh(raft: &Raft<TypeConfig>) -> Result<(), MetaError> {
    let once = async {
        match raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(to))) => {
                let leader = to
                    .leader_node
                    .map(|n| n.addr)
                    .ok_or_else(|| MetaError::NoLeader("no leader elected".into()))?;
                let me = raft.metrics().borrow().id;
                let index = network::read_index(&leader, me, FORWARD_TIMEOUT).await?;
                raft.wait(Some(FORWARD_TIMEOUT))
                    .applied_index_at_least(Some(index), "read index")
                    .await
                    .map_err(|e| MetaError::NoLeader(e.to_string()))?;
                Ok(())
            }
            Err(e) => Err(MetaError::NoLeader(e.to_string())),
        }
    };
    tokio::time::timeout(FORWARD_TIMEOUT * 2, once)
        .await
        .unwrap_or_else(|_| Err(MetaError::NoLeader("no read index in time".into())))
}

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
        /// A job the caller found gone (no job, no upload): a claim this job holds is taken
        /// over (compare-and-set), any other claim stands.
        #[serde(default)]
        stale: Option<String>,
    },
    /// Releases a claim that job `job` holds (a submission that failed after its claim):
    /// compare-and-delete, so a claim of another job stays.
    ReleaseKey {
        /// The user (lower case).
        email: String,
        /// The key.
        key: String,
        /// The job whose claim it must be.
        job: String,
    },
    /// Node `node` publishes its jobs: `put` as they are now, `gone` no longer there (only
    /// entries that name `node` are removed).
    Publish {
        /// The publishing node.
        node: String,
        /// Jobs added or changed.
        put: Vec<Listed>,
        /// Jobs removed from that node.
        gone: Vec<String>,
        /// Only add jobs the directory does not have (a new job announced at once, which
        /// must never overwrite a later state the change feed published first).
        #[serde(default)]
        only_new: bool,
    },
    /// A change to user `email` (lower case), proposed at `at_ms` by the proposer's clock
    /// (which only stamps the record).
    User {
        /// The user.
        email: String,
        /// The change.
        op: users::UserOp,
        /// When it was proposed.
        at_ms: i64,
    },
    /// Admits a new job or resumable upload (see [`Admission`]).
    Admit(Admission),
    /// A keyed submission in one step: claims Idempotency-Key `key` of the admission's user
    /// for its id (taking over a claim `stale` holds) and, only if that id then holds it,
    /// admits it as [`Command::Admit`] does. A refused admission leaves the key as it was; a
    /// key held by another job answers that job ([`Outcome::Claimed`]) and admits nothing.
    KeyedAdmit {
        /// The key.
        key: String,
        /// A job the caller found gone, whose claim may be taken over.
        stale: Option<String>,
        /// What is admitted.
        #[serde(flatten)]
        admission: Admission,
    },
    /// Node `node` holds a copy of done job `id`'s MP3 (recorded only while the job is in
    /// the directory; removing the job removes its copies).
    Copied {
        /// The job.
        id: String,
        /// The node with the copy.
        node: String,
    },
}

/// A new job or resumable upload `id` of user `email` (lower case) bringing `bytes`,
/// admitted if `limits` allow it with what the user has now (`None`: no limits); a job
/// admitted goes into the directory as `entry` (published by `node`) in the same step. (On
/// the wire as the fields of [`Command::Admit`] always were.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The job's (or upload's) id.
    pub id: String,
    /// Its user.
    pub email: String,
    /// Its node.
    pub node: String,
    /// The job's first directory entry (`None`: an upload, listed once it is a job).
    pub entry: Option<Listed>,
    /// The bytes it brings (its upload's length; 0 for a URL).
    pub bytes: i64,
    /// The user's limits as the proposer read them.
    pub limits: Option<crate::store::Quota>,
    /// When it was proposed (the proposer's clock: the day counted ends here).
    pub at_ms: i64,
}

/// One job in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// The job's id.
    pub id: String,
    /// The node that has it (set from the publishing node when applied).
    #[serde(default)]
    pub node: String,
    /// Its user.
    pub owner_email: String,
    /// When it was accepted (ms since the epoch; lists are newest first).
    pub created_at_ms: i64,
    /// Its Idempotency-Key: applying the entry claims it for the job if it is free (how
    /// keys of jobs made before the directory existed become claims).
    #[serde(default)]
    pub key: Option<String>,
    /// The job as its node describes it (opaque here).
    pub record: String,
    /// Its state's name (`done`: its MP3 can be copied).
    #[serde(default)]
    pub state: String,
    /// The log index that last changed it (set when applied).
    #[serde(default)]
    pub seq: u64,
    /// The bytes it holds once ended (its MP3), for the quota counters.
    #[serde(default)]
    pub bytes: i64,
    /// When it ended, if it has.
    #[serde(default)]
    pub ended_at_ms: Option<i64>,
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
    /// The user after the change, or why it was not made.
    User(Result<crate::store::User, users::Refusal>),
    /// Admitted, or the limit that refused it.
    Admitted(Result<(), quota::Over>),
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

/// What a member knows of its group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MetaStatus {
    /// The leader's name, if one is known.
    pub leader: Option<String>,
    /// The current term.
    pub term: u64,
    /// The voters' names.
    pub voters: Vec<String>,
    /// The learners' names.
    pub learners: Vec<String>,
    /// A change of voters is under way (joint consensus: until it is done, a majority of
    /// the old voters and one of the new must both agree, so losing an old voter can stall
    /// the group).
    pub changing: bool,
    /// The last log index applied here.
    pub applied: u64,
    /// The last log index here.
    pub last_log: u64,
    /// This member belongs to a group.
    pub group: bool,
}

impl MetaStatus {
    /// Every member's name, voters and learners.
    pub fn members(&self) -> BTreeSet<String> {
        self.voters.iter().chain(&self.learners).cloned().collect()
    }
}

/// A learner this close to the leader's last log index counts as caught up.
const CAUGHT_UP_WITHIN: u64 = 16;

/// How long a write keeps trying while no leader can be reached.
pub const WRITE_PATIENCE: Duration = Duration::from_secs(8);

/// How long a write forwarded to the leader, or a read index asked of it, may take. Past
/// it the leader is taken as away (frozen, cut off): the write tries again (commands are
/// idempotent), with whoever leads by then.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// A node's member of the metadata group.
#[derive(Clone)]
pub struct Meta {
    raft: Raft<TypeConfig>,
    state: StateMachine,
    actor: ActorRef<MetaMsg>,
    /// Appends (heartbeats included) this member received from a leader.
    appends: Arc<std::sync::atomic::AtomicU64>,
    /// What readers at learners wait for, when this member leads (see [`network::Hurry`]).
    hurry: Arc<network::Hurry>,
}

impl Meta {
    /// Starts node `name`'s member, its files in `dir`. With `voters` (stable node names;
    /// every node that initializes must be given the same list), a group that does not
    /// exist yet is created with them; with none, the member waits to be added.
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
        let network = MetaNetwork::default();
        let (roster, hurry) = (network.roster.clone(), network.hurry.clone());
        let raft = Raft::new(node_id(name), config, network, log, state.clone())
            .await
            .map_err(|e| MetaError::Store(e.to_string()))?;
        // The network treats learners apart (LEARNER_BATCH, LEARNER_HEARTBEAT): it follows
        // the voters and what this member applied.
        let mut metrics = raft.metrics();
        tokio::spawn(async move {
            loop {
                let (voters, applied) = {
                    let m = metrics.borrow();
                    let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
                    (voters, m.last_applied)
                };
                if let Ok(mut r) = roster.write() {
                    if r.voters != voters {
                        r.voters = voters;
                    }
                    r.applied = applied;
                }
                if metrics.changed().await.is_err() {
                    break;
                }
            }
        });
        let appends = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let args = (
            name.to_string(),
            raft.clone(),
            state.clone(),
            appends.clone(),
            hurry.clone(),
        );
        let (actor, _) = ractor::Actor::spawn(None, MetaActor, args)
            .await
            .map_err(|e| MetaError::Store(e.to_string()))?;
        let meta = Meta {
            raft,
            state,
            actor,
            appends,
            hurry,
        };
        if !voters.is_empty() {
            meta.initialize(voters).await?;
        }
        Ok(meta)
    }

    /// Whether this member belongs to a group (it created one, or a leader reached it).
    pub async fn initialized(&self) -> Result<bool, MetaError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| MetaError::Store(e.to_string()))
    }

    /// Creates the group with `voters` if this member has none. Every node that may do it
    /// proposes the same list: whoever's log is still empty writes it (identical
    /// entries), the others already have it.
    pub async fn initialize(&self, voters: &[String]) -> Result<(), MetaError> {
        let members: BTreeMap<u64, BasicNode> = voters.iter().map(|v| (node_id(v), BasicNode::new(v))).collect();
        if self.initialized().await? {
            tracing::debug!("metadata group already initialized");
        } else if let Err(e) = self.raft.initialize(members).await {
            tracing::debug!(error = %e, "metadata group not initialized here");
        } else {
            tracing::info!(?voters, "metadata group created");
        }
        Ok(())
    }

    /// Commits `command` through the log (at the leader, wherever it is) and answers what
    /// applying it gave. While no leader can be reached (an election, a leader that just
    /// stopped) it tries again for up to [`WRITE_PATIENCE`]: every command is idempotent,
    /// so a write that did commit before its answer was lost commits to the same outcome.
    pub async fn write(&self, command: Command) -> Result<Outcome, MetaError> {
        self.write_within(command, WRITE_PATIENCE).await
    }

    /// [`Meta::write`], trying for at most `patience` while no leader can be reached.
    pub async fn write_within(&self, command: Command, patience: Duration) -> Result<Outcome, MetaError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // A leader on a minority side waits for a quorum for as long as the partition
            // lasts: no attempt outlives the patience.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = tokio::time::timeout(left.max(Duration::from_millis(100)), self.write_once(&command))
                .await
                .unwrap_or_else(|_| Err(MetaError::NoLeader(format!("nothing committed within {patience:?}"))));
            match attempt {
                Err(MetaError::NoLeader(why)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%why, "metadata write: no leader yet; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                answered => return answered,
            }
        }
    }

    async fn write_once(&self, command: &Command) -> Result<Outcome, MetaError> {
        match self.raft.client_write(command.clone()).await {
            Ok(done) => Ok(done.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
                let leader = to
                    .leader_node
                    .map(|n| n.addr)
                    .ok_or_else(|| MetaError::NoLeader("no leader elected".into()))?;
                match network::forward_write(&leader, command, FORWARD_TIMEOUT).await {
                    Err(MetaError::NoLeader(why)) => self.relay(&leader, command).await.map_err(|e| {
                        tracing::debug!(error = %e, "no member relayed the write");
                        MetaError::NoLeader(why)
                    }),
                    answered => answered,
                }
            }
            Err(e) => Err(MetaError::NoLeader(e.to_string())),
        }
    }

    /// A write this node could not bring to `leader` itself (a link down, a one-way cut
    /// while the leader still leads the others): committed through another member, which
    /// forwards it to the leader it knows. Asked of every other member at once, the first
    /// answer wins; the command is idempotent, so the others commit nothing new.
    async fn relay(&self, leader: &str, command: &Command) -> Result<Outcome, MetaError> {
        let me = self.actor_name();
        let relays: Vec<_> = self
            .status()
            .members()
            .into_iter()
            .filter(|via| *via != me && via != leader)
            .map(|via| Box::pin(async move { network::relay_write(&via, command).await }))
            .collect();
        if relays.is_empty() {
            return Err(MetaError::NoLeader("no other member to relay through".into()));
        }
        futures_util::future::select_ok(relays)
            .await
            .map(|(outcome, _)| outcome)
    }

    /// Changes user `email` (lower case) through the log: the user after it, or why not.
    pub async fn change_user(
        &self,
        email: &str,
        op: users::UserOp,
    ) -> Result<Result<crate::store::User, users::Refusal>, MetaError> {
        let command = Command::User {
            email: email.to_string(),
            op,
            at_ms: crate::store::now_ms(),
        };
        match self.write(command).await? {
            Outcome::User(changed) => Ok(changed),
            other => Err(MetaError::Store(format!("a user change answered {other:?}"))),
        }
    }

    /// Waits until every member this node can reach has applied what this node has
    /// committed or seen committed (Raft's read index, then each member's applied index;
    /// at most ~2 s): after it, no reachable member answers from an older state. Answers the
    /// members that did not confirm (away, cut off, or slower than the wait).
    pub async fn applied_everywhere(&self) -> Vec<String> {
        if let Err(e) = self.fresh().await {
            tracing::debug!(error = %e, "no read index; members are not waited for");
        }
        let status = self.status();
        let me = self.actor_name();
        let others: Vec<String> = status.members().into_iter().filter(|m| *m != me).collect();
        let waits = others.iter().map(|m| network::applied(m, status.applied));
        let answers = futures_util::future::join_all(waits).await;
        others
            .into_iter()
            .zip(answers)
            .filter_map(|(m, a)| a.err().map(|_| m))
            .collect()
    }

    /// This member's node name.
    fn actor_name(&self) -> String {
        let metrics = self.raft.metrics().borrow().clone();
        let config = metrics.membership_config.membership();
        config.get_node(&metrics.id).map(|n| n.addr.clone()).unwrap_or_default()
    }

    /// The users as this node's replica has applied them, in memory (tombstones included).
    pub fn users(&self) -> users::UsersView {
        self.state.users()
    }

    /// Up to `limit` users changed after log index `seq`, oldest change first, with the
    /// index of each one's change (this node's replica).
    pub async fn users_since(&self, seq: u64, limit: u32) -> Result<Vec<(crate::store::User, u64)>, MetaError> {
        self.state
            .users_since(seq, limit)
            .await
            .map_err(|e| MetaError::Store(e.to_string()))
    }

    /// Admits job (or upload) `id` of `email` through the log (see [`Command::Admit`]):
    /// `Ok(Err(over))` when a limit refuses it.
    pub async fn admit(&self, command: Command) -> Result<Result<(), quota::Over>, MetaError> {
        match self.write(command).await? {
            Outcome::Admitted(admitted) => Ok(admitted),
            other => Err(MetaError::Store(format!("an admission answered {other:?}"))),
        }
    }

    /// Commits a [`Command::KeyedAdmit`]: `Err(job)` when another job holds the key, else
    /// whether `id` was admitted (and now holds the key).
    pub async fn keyed_admit(&self, command: Command) -> Result<Result<Result<(), quota::Over>, String>, MetaError> {
        match self.write(command).await? {
            Outcome::Admitted(admitted) => Ok(Ok(admitted)),
            Outcome::Claimed { job } => Ok(Err(job)),
            other => Err(MetaError::Store(format!("a keyed admission answered {other:?}"))),
        }
    }

    /// What `email` uses now, as this node's replica counts it (what the log has admitted
    /// and the owners have published).
    pub async fn used(&self, email: &str) -> Result<quota::Used, MetaError> {
        self.state
            .used(&email.to_ascii_lowercase(), crate::store::now_ms())
            .await
            .map_err(|e| MetaError::Store(e.to_string()))
    }

    /// The job holding Idempotency-Key `key` of `email`, as this node's replica has it.
    pub async fn claim(&self, email: &str, key: &str) -> Result<Option<String>, MetaError> {
        self.state
            .claim(email, key)
            .await
            .map_err(|e| MetaError::Store(e.to_string()))
    }

    /// Job `id` as this node's replica of the directory has it.
    pub async fn listed(&self, id: &str) -> Result<Option<Listed>, MetaError> {
        self.state.listed(id).await.map_err(|e| MetaError::Store(e.to_string()))
    }

    /// Up to `limit` jobs the directory says node `node` has, still `queued` and created
    /// before `before_ms`, from this node's replica.
    pub async fn queued_of(&self, node: &str, before_ms: i64, limit: u32) -> Result<Vec<String>, MetaError> {
        self.state
            .queued_of(node, before_ms, limit)
            .await
            .map_err(|e| MetaError::Store(e.to_string()))
    }

    /// Up to `limit` jobs of `email` (everyone's with `None`) that node `not` does not have
    /// (it lists its own), newest first, from this node's replica of the directory.
    pub async fn list(&self, email: Option<&str>, not: &str, limit: u32) -> Result<Vec<Listed>, MetaError> {
        self.state
            .list(email, not, limit)
            .await
            .map_err(|e| MetaError::Store(e.to_string()))
    }

    /// Waits until this node's replica has applied everything the leader had committed
    /// when asked (Raft's read index): a read after it sees every write acknowledged
    /// before it.
    pub async fn fresh(&self) -> Result<(), MetaError> {
        fresh(&self.raft).await
    }

    /// Job `id`'s directory entry from another member that is up to date (asked of every
    /// other member at once, the first entry found wins; within [`FORWARD_TIMEOUT`]): for a
    /// reader that can reach neither the job's node nor the leader, whose replica may lag.
    /// `None` when no member has it or none could answer.
    pub async fn listed_elsewhere(&self, id: &str) -> Option<Listed> {
        let me = self.actor_name();
        let asks: Vec<_> = self
            .status()
            .members()
            .into_iter()
            .filter(|m| *m != me)
            .map(|m| {
                Box::pin(async move {
                    match network::listed_at(&m, id, FORWARD_TIMEOUT).await {
                        Ok(Some(listed)) => Ok(listed),
                        Ok(None) => Err(MetaError::Store(format!("{m} does not have it"))),
                        Err(e) => Err(e),
                    }
                })
            })
            .collect();
        if asks.is_empty() {
            return None;
        }
        futures_util::future::select_ok(asks)
            .await
            .ok()
            .map(|(listed, _)| listed)
    }

    /// Up to `limit` done jobs changed after log index `seq`, from this node's replica.
    pub async fn done_since(&self, seq: u64, limit: u32) -> Result<Vec<Listed>, MetaError> {
        self.state
            .done_since(seq, limit)
            .await
            .map_err(|e| MetaError::Store(e.to_string()))
    }

    /// How many done jobs of `node` have fewer than `want` MP3 copies, from this node's
    /// replica.
    pub async fn uncopied(&self, node: &str, want: u32) -> Result<u64, MetaError> {
        self.state
            .uncopied(node, want)
            .await
            .map_err(|e| MetaError::Store(e.to_string()))
    }

    /// The nodes that hold a copy of job `id`'s MP3, from this node's replica.
    pub async fn copies(&self, id: &str) -> Result<Vec<String>, MetaError> {
        self.state.copies(id).await.map_err(|e| MetaError::Store(e.to_string()))
    }

    /// Whether a leader is known (what [`Meta::status`] tells, without building it: the
    /// node's loops ask this several times a second).
    pub fn leader_known(&self) -> bool {
        self.raft.metrics().borrow().current_leader.is_some()
    }

    /// Whether this member leads.
    pub fn leads(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(m.id)
    }

    /// What this member knows of the group, for `/v1/cluster` and `/metrics`.
    pub fn status(&self) -> MetaStatus {
        let m = self.raft.metrics().borrow().clone();
        let config = m.membership_config.membership();
        let name = |id: u64| config.get_node(&id).map(|n| n.addr.clone());
        MetaStatus {
            leader: m.current_leader.and_then(name),
            term: m.current_term,
            voters: named(config, config.voter_ids()).into_iter().collect(),
            learners: named(config, config.learner_ids()).into_iter().collect(),
            changing: config.get_joint_config().len() > 1,
            applied: m.last_applied.map_or(0, |l| l.index),
            last_log: m.last_log_index.unwrap_or(0),
            group: m.membership_config.log_id().is_some(),
        }
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

    /// How many appends (heartbeats included) this member has received from a leader.
    pub fn appends_received(&self) -> u64 {
        self.appends.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The log index a reader at member `name` last waited for, as this member (when it
    /// leads) was asked for it (see [`network::Hurry`]).
    pub fn wanted_by(&self, name: &str) -> u64 {
        self.hurry.wanted(node_id(name))
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
