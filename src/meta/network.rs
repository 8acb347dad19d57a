//! Raft messages between nodes, over the mesh: every node runs a metadata actor in the
//! process group `meta.v1:{node}`, and openraft's network ([`MetaNetwork`]) calls the
//! target's actor with the request as JSON in a prost envelope ([`Wire`]). The actor hands
//! it to its local Raft and answers the result (or openraft's error) the same way.
//!
//! Node ids are derived from the stable node names ([`node_id`]); the member's
//! `BasicNode::addr` holds the name, which is what the mesh knows a node by.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, LogId, Raft};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::store::StateMachine;
use super::{Command, Listed, MetaError, Outcome, TypeConfig};

/// The process group prefix of the metadata actors (versioned, as every face).
pub const GROUP: &str = "meta.v1";

/// The process group of `node`'s metadata actor.
pub fn group(node: &str) -> String {
    format!("{GROUP}:{node}")
}

/// A node's Raft id: the first 8 bytes of the SHA-256 of its stable name (the same on
/// every node, with no table to keep).
pub fn node_id(name: &str) -> u64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(id)
}

/// A Raft request or answer, as JSON.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Wire {
    /// The JSON.
    #[prost(bytes = "vec", tag = "1")]
    pub body: Vec<u8>,
}

ractor_cluster::derive_serialization_for_prost_type! {Wire}

/// The metadata actor's messages (from other nodes' Raft).
#[derive(RactorClusterMessage)]
pub enum MetaMsg {
    /// `AppendEntries` (also the heartbeat).
    #[rpc]
    Append(Wire, RpcReplyPort<Wire>),
    /// `RequestVote`.
    #[rpc]
    Vote(Wire, RpcReplyPort<Wire>),
    /// A snapshot chunk.
    #[rpc]
    Snapshot(Wire, RpcReplyPort<Wire>),
    /// A command written at another node, for this one (the leader) to commit.
    #[rpc]
    Write(Wire, RpcReplyPort<Wire>),
    /// A command a writer that cannot reach the leader (a one-way cut, a link down) asks this
    /// node to commit: here if it leads, else at the leader it knows (one hop, never again
    /// relayed).
    #[rpc]
    Relay(Wire, RpcReplyPort<Wire>),
    /// Asks this node (the leader) for a read index: the log index a follower must have
    /// applied before a read of its replica sees every acknowledged write.
    #[rpc]
    ReadIndex(Wire, RpcReplyPort<Wire>),
    /// Answers once this member has applied the log up to the index asked (or its wait ran
    /// out): a change's writer waits for every member before acknowledging it.
    #[rpc]
    Applied(Wire, RpcReplyPort<Wire>),
    /// A job's directory entry from this member's replica, once it has everything committed
    /// (Raft's read index): for a reader that can reach neither the job's node nor the
    /// leader (a one-way cut), whose own replica may lag.
    #[rpc]
    Listed(Wire, RpcReplyPort<Wire>),
}

fn encode<T: Serialize>(value: &T) -> Wire {
    Wire {
        body: serde_json::to_vec(value).unwrap_or_default(),
    }
}

fn decode<T: DeserializeOwned>(wire: &Wire) -> Result<T, serde_json::Error> {
    serde_json::from_slice(&wire.body)
}

/// Decodes a request, runs `op` on it and encodes what it answers (a request that does not
/// decode answers an error the caller reads as a bad answer).
async fn serve<Q, A, Fut>(wire: &Wire, op: impl FnOnce(Q) -> Fut) -> Wire
where
    Q: DeserializeOwned,
    A: Serialize,
    Fut: std::future::Future<Output = A>,
{
    match decode::<Q>(wire) {
        Ok(request) => encode(&op(request).await),
        Err(e) => encode(&Err::<(), String>(e.to_string())),
    }
}

/// Answers other nodes' Raft requests with this node's Raft.
pub struct MetaActor;

impl Actor for MetaActor {
    type Msg = MetaMsg;
    type State = (Raft<TypeConfig>, StateMachine, Arc<AtomicU64>, Arc<Hurry>);
    /// The node's name, its Raft and state machine, the count of appends it received, and
    /// the learners readers wait for (its network's).
    type Arguments = (String, Raft<TypeConfig>, StateMachine, Arc<AtomicU64>, Arc<Hurry>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (node, raft, state, appends, hurry): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(group(&node), vec![myself.get_cell()]);
        Ok((raft, state, appends, hurry))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        (raft, state, appends, hurry): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if matches!(message, MetaMsg::Append(..)) {
            appends.fetch_add(1, Ordering::Relaxed);
        }
        // Each request runs on its own task: a slow one (a snapshot being installed) never
        // holds up heartbeats.
        let (raft, state, hurry) = (raft.clone(), state.clone(), hurry.clone());
        tokio::spawn(async move {
            match message {
                MetaMsg::Append(wire, reply) => {
                    let answer = serve(&wire, |r: AppendEntriesRequest<TypeConfig>| raft.append_entries(r)).await;
                    let _ = reply.send(answer);
                }
                MetaMsg::Vote(wire, reply) => {
                    let _ = reply.send(serve(&wire, |r: VoteRequest<u64>| raft.vote(r)).await);
                }
                MetaMsg::Write(wire, reply) => {
                    let write = |command: Command| async {
                        raft.client_write(command)
                            .await
                            .map(|done| done.data)
                            .map_err(|e| e.to_string())
                    };
                    let _ = reply.send(serve(&wire, write).await);
                }
                MetaMsg::Relay(wire, reply) => {
                    let relay = |command: Command| async move {
                        let write = async {
                            match raft.client_write(command.clone()).await {
                                Ok(done) => Ok(done.data),
                                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => match to.leader_node
                                {
                                    Some(leader) => forward_write(&leader.addr, &command, RELAY_TIMEOUT)
                                        .await
                                        .map_err(|e| e.to_string()),
                                    None => Err("no leader elected".to_string()),
                                },
                                Err(e) => Err(e.to_string()),
                            }
                        };
                        tokio::time::timeout(RELAY_TIMEOUT, write)
                            .await
                            .unwrap_or_else(|_| Err("the relay got no commit in time".to_string()))
                    };
                    let _ = reply.send(serve(&wire, relay).await);
                }
                MetaMsg::ReadIndex(wire, reply) => {
                    // The asker (its id; `null` from a version that did not send it) is
                    // sent what it needs at once if it is a learner (see [`Hurry`]).
                    let read = |asker: Option<u64>| async move {
                        match raft.ensure_linearizable().await {
                            Ok(read) => {
                                let index = read.map_or(0, |l| l.index);
                                if let Some(asker) = asker {
                                    hurry.want(asker, index);
                                }
                                Ok(index)
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    };
                    let _ = reply.send(serve(&wire, read).await);
                }
                MetaMsg::Applied(wire, reply) => {
                    let applied = |index: u64| async move {
                        // A learner behind asks the leader for its read index, which also
                        // has the leader send it its entries at once (see [`Hurry`]).
                        if raft.metrics().borrow().last_applied.is_none_or(|a| a.index < index) {
                            let _ = tokio::time::timeout(APPLIED_WAIT, super::fresh(&raft)).await;
                        }
                        raft.wait(Some(APPLIED_WAIT))
                            .applied_index_at_least(Some(index), "a change's writer waits")
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    };
                    let _ = reply.send(serve(&wire, applied).await);
                }
                MetaMsg::Listed(wire, reply) => {
                    let listed = |id: String| async move {
                        super::fresh(&raft).await.map_err(|e| e.to_string())?;
                        state.listed(&id).await.map_err(|e| e.to_string())
                    };
                    let _ = reply.send(serve(&wire, listed).await);
                }
                MetaMsg::Snapshot(wire, reply) => {
                    let answer = serve(&wire, |r: InstallSnapshotRequest<TypeConfig>| raft.install_snapshot(r)).await;
                    let _ = reply.send(answer);
                }
            }
        });
        Ok(())
    }
}

/// How long an append to a learner waits before it goes: the entries committed meanwhile
/// go with the next one, so a learner gets about a dozen appends a second at most under
/// any load (at 50 pods an append costs the learner and the leader about a millisecond of
/// CPU each), and the voters (whose answers make a commit) are not scheduled among every
/// learner's work for each entry. Half of openraft's `heartbeat_interval` (150 ms), which
/// is how long openraft lets an append take, this wait included: the other half is the
/// round trip's. A reader that needs a learner's replica up to date does not wait for it:
/// its read index has the leader send the learner what it lacks at once ([`Hurry`]).
pub const LEARNER_BATCH: Duration = Duration::from_millis(75);

/// Per learner, the log index a reader there waits for: Raft's read index, asked of the
/// leader ([`super::fresh`]) by a list, a quota check, a change's writer waiting for every
/// member. An append to a learner that has not acknowledged that index goes without
/// waiting [`LEARNER_BATCH`], and one already waiting goes at once.
#[derive(Default)]
pub struct Hurry {
    targets: std::sync::Mutex<std::collections::HashMap<u64, Arc<Wanted>>>,
}

/// What a reader at one learner waits for.
#[derive(Default)]
struct Wanted {
    /// The index (0: nothing).
    index: AtomicU64,
    /// Wakes an append waiting for its batch.
    wake: tokio::sync::Notify,
}

impl Hurry {
    fn of(&self, target: u64) -> Arc<Wanted> {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        targets.entry(target).or_default().clone()
    }

    /// The index a reader at `target` last waited for (0: none).
    pub fn wanted(&self, target: u64) -> u64 {
        self.of(target).index.load(Ordering::Acquire)
    }

    /// A reader at `target` waits for the log up to `index`.
    pub fn want(&self, target: u64, index: u64) {
        let wanted = self.of(target);
        wanted.index.fetch_max(index, Ordering::AcqRel);
        wanted.wake.notify_waiters();
    }
}

/// How often a learner that has been told everything still gets a heartbeat. openraft
/// heartbeats every target every `heartbeat_interval` (150 ms) and after each commit; a
/// voter needs that (its election timer, the leader's lease), a learner only needs the log
/// and the commit. So a heartbeat to a learner that would tell it nothing new (same leader,
/// same last entry, no newer commit) is answered here, as the learner answered the last
/// one, until this long after the last that went: the leader's idle cost no longer grows
/// with every learner, and a learner that went away is still seen within about a second.
pub const LEARNER_HEARTBEAT: Duration = Duration::from_secs(1);

/// What the network follows of its member (kept by a task watching openraft's metrics).
#[derive(Default)]
pub struct Roster {
    /// The voters (empty: not known; no target is treated as a learner).
    pub voters: std::collections::BTreeSet<u64>,
    /// The last entry this member applied (so committed): an append to a learner carries it
    /// as the commit when it is newer than the one openraft put in, which saves the learner
    /// a second message to learn that the entries it just got are committed.
    pub applied: Option<LogId<u64>>,
}

/// openraft's network: a connection per target node, through the mesh.
#[derive(Clone, Default)]
pub struct MetaNetwork {
    /// What the member's metrics say (see [`Roster`]).
    pub roster: Arc<std::sync::RwLock<Roster>>,
    /// What readers at learners wait for (see [`Hurry`]).
    pub hurry: Arc<Hurry>,
}

impl RaftNetworkFactory<TypeConfig> for MetaNetwork {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Conn {
        Conn {
            target,
            name: node.addr.clone(),
            roster: self.roster.clone(),
            told: None,
            wanted: self.hurry.of(target),
        }
    }
}

/// Requests to one node.
pub struct Conn {
    target: u64,
    name: String,
    roster: Arc<std::sync::RwLock<Roster>>,
    /// What the target last acknowledged (learners only, see [`LEARNER_HEARTBEAT`]).
    told: Option<Told>,
    /// What a reader at the target waits for (see [`Hurry`]).
    wanted: Arc<Wanted>,
}

/// A learner's last acknowledged append.
struct Told {
    /// When it was sent.
    at: std::time::Instant,
    /// The leader's vote it carried.
    vote: openraft::Vote<u64>,
    /// The learner's last entry after it.
    matched: Option<LogId<u64>>,
    /// The commit it carried.
    commit: Option<LogId<u64>>,
}

impl Conn {
    /// Whether the target is a learner (known voters, and it is not one of them).
    fn learner(&self) -> bool {
        self.roster
            .read()
            .map(|r| !r.voters.is_empty() && !r.voters.contains(&self.target))
            .unwrap_or(false)
    }

    /// The last entry this member applied.
    fn applied(&self) -> Option<LogId<u64>> {
        self.roster.read().ok().and_then(|r| r.applied)
    }
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("node {0} is not reachable")]
    Unreachable(String),
    #[error("node {0} did not answer in {1:?}")]
    Timeout(String, Duration),
    #[error("a bad answer from node {0}: {1}")]
    Garbled(String, serde_json::Error),
}

impl Conn {
    fn actor(&self) -> Option<ActorCell> {
        ractor::pg::get_members(&group(&self.name)).into_iter().next()
    }

    /// Sends `request` with `make` and reads the answer as `Result<T, E>`.
    async fn call<T, E>(
        &self,
        request: Wire,
        make: fn(Wire, RpcReplyPort<Wire>) -> MetaMsg,
        timeout: Duration,
    ) -> Result<Result<T, E>, CallError>
    where
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        let cell = self.actor().ok_or_else(|| CallError::Unreachable(self.name.clone()))?;
        let answer = ractor::rpc::call::<MetaMsg, Wire, _>(&cell, |reply| make(request, reply), Some(timeout)).await;
        match answer {
            Ok(ractor::rpc::CallResult::Success(wire)) => {
                decode(&wire).map_err(|e| CallError::Garbled(self.name.clone(), e))
            }
            Ok(ractor::rpc::CallResult::Timeout) => Err(CallError::Timeout(self.name.clone(), timeout)),
            _ => Err(CallError::Unreachable(self.name.clone())),
        }
    }

    fn failed<E: std::error::Error>(&self, e: CallError) -> RPCError<u64, BasicNode, E> {
        match e {
            CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
            _ => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<u64, BasicNode, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            BasicNode::new(self.name.clone()),
            e,
        ))
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let learner = self.learner();
        if learner {
            if rpc.entries.is_empty() {
                // Nothing new for it: answered as it answered the last (LEARNER_HEARTBEAT).
                if let Some(told) = &self.told
                    && told.vote == rpc.vote
                    && told.matched == rpc.prev_log_id
                    && rpc.leader_commit <= told.commit
                    && told.at.elapsed() < LEARNER_HEARTBEAT
                {
                    return Ok(AppendEntriesResponse::Success);
                }
            } else {
                // Entries wait a moment (see LEARNER_BATCH) unless a reader there waits for
                // them (see Hurry); the commit reached meanwhile goes with them (a learner
                // commits at most what it accepted from this leader).
                let woken = self.wanted.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let has = rpc.prev_log_id.map_or(0, |l| l.index);
                if self.wanted.index.load(Ordering::Acquire) <= has {
                    tokio::select! {
                        () = tokio::time::sleep(LEARNER_BATCH) => {}
                        () = woken => {}
                    }
                }
            }
            rpc.leader_commit = rpc.leader_commit.max(self.applied());
        }
        let sent = (std::time::Instant::now(), rpc.vote, rpc.leader_commit);
        let matched = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        let answer = self.call(encode(&rpc), MetaMsg::Append, option.hard_ttl()).await;
        let answer = answer.map_err(|e| self.failed(e))?.map_err(|e| self.remote(e));
        self.told = match (&answer, learner) {
            (Ok(AppendEntriesResponse::Success), true) => Some(Told {
                at: sent.0,
                vote: sent.1,
                matched,
                commit: sent.2,
            }),
            _ => None,
        };
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        let answer = self.call(encode(&rpc), MetaMsg::Snapshot, option.hard_ttl()).await;
        answer.map_err(|e| self.failed(e))?.map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let answer = self.call(encode(&rpc), MetaMsg::Vote, option.hard_ttl()).await;
        answer.map_err(|e| self.failed(e))?.map_err(|e| self.remote(e))
    }
}

/// How long a member waits to have applied an index a writer asks about.
pub const APPLIED_WAIT: Duration = Duration::from_millis(1500);

/// Asks member `name` (a node name) `request` with `message`; its answer, or why not.
async fn ask_member<Q: Serialize, A: DeserializeOwned>(
    name: &str,
    message: fn(Wire, RpcReplyPort<Wire>) -> MetaMsg,
    request: &Q,
    timeout: Duration,
) -> Result<A, MetaError> {
    let conn = Conn {
        roster: Default::default(),
        target: node_id(name),
        name: name.to_string(),
        told: None,
        wanted: Default::default(),
    };
    match conn.call::<A, String>(encode(request), message, timeout).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(MetaError::NoLeader(format!("at {name}: {e}"))),
        Err(e) => Err(MetaError::NoLeader(e.to_string())),
    }
}

/// Sends `command` to `leader` (a node name) to commit; what applying it gave.
pub async fn forward_write(leader: &str, command: &Command, timeout: Duration) -> Result<Outcome, MetaError> {
    ask_member(leader, MetaMsg::Write, command, timeout).await
}

/// How long a relayed write may take at the relaying node.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks member `via` to commit `command` at the leader it knows (see [`MetaMsg::Relay`]).
pub async fn relay_write(via: &str, command: &Command) -> Result<Outcome, MetaError> {
    ask_member(via, MetaMsg::Relay, command, RELAY_TIMEOUT + Duration::from_millis(500)).await
}

/// Job `id`'s directory entry as member `name` has it once up to date (see
/// [`MetaMsg::Listed`]), within `timeout`.
pub async fn listed_at(name: &str, id: &str, timeout: Duration) -> Result<Option<Listed>, MetaError> {
    ask_member(name, MetaMsg::Listed, &id, timeout).await
}

/// Asks `leader` (a node name) for its read index, for member `asker` (sent what it
/// lacks at once if it is a learner, see [`Hurry`]).
pub async fn read_index(leader: &str, asker: u64, timeout: Duration) -> Result<u64, MetaError> {
    ask_member(leader, MetaMsg::ReadIndex, &Some(asker), timeout).await
}

/// Waits (at most [`APPLIED_WAIT`]) until member `name` has applied the log up to `index`.
pub async fn applied(name: &str, index: u64) -> Result<(), MetaError> {
    ask_member(
        name,
        MetaMsg::Applied,
        &index,
        APPLIED_WAIT + Duration::from_millis(500),
    )
    .await
}
