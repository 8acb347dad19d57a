//! The cluster actor: runs this node's ractor_cluster `NodeServer`, dials the static peers,
//! tracks members, and fences peers that stop answering heartbeats.
//!
//! ```text
//! cluster
//! ├── NodeServer (ractor_cluster)   sessions, cookie handshake
//! ├── probe                         answers peers' heartbeats (pg group probe.v1)
//! └── the roles' faces              each role's actor for other nodes ([`Face`]), started
//!                                   here so they serve peers only while the mesh runs
//! ```
//!
//! Membership: a peer is `up` once its session is ready and its probe answers; each
//! missed heartbeat makes it `suspect`; [`MAX_MISSES`] in a row stop its session (a frozen
//! process is fenced, not only a dead one). Lost sessions are redialled with jittered
//! exponential backoff, one dial per address at a time, by the lexically smaller address.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    HandshakeLimits, IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage, NodeSessionMessage,
};

use super::probe::{Facts, NodeStatus, ProbeActor, ProbeMsg};
use super::tls::ClusterTls;
use super::{PROBE_GROUP, stable_name};
use crate::config::{ClusterConfig, Config};

/// How often peers are dialled and probed.
pub const TICK: Duration = Duration::from_millis(500);
/// How long a heartbeat may take.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
/// Missed heartbeats in a row that fence a peer.
pub const MAX_MISSES: u32 = 3;
/// Most peers probed in one tick: those probed longest ago go first. Up to this many peers
/// each is probed every tick; beyond, each node's heartbeats stay as many (its idle cost
/// does not grow with the cluster, nor the cluster's with its square) and a peer is probed
/// every `peers / PROBES_PER_TICK` ticks. A dead peer's session ends with its connection at
/// once anyway; the heartbeats fence frozen and cut-off ones, and the converters' leases
/// and the metadata group's own heartbeats do not wait for them.
pub const PROBES_PER_TICK: usize = 8;
/// Longest wait between dials of an unreachable peer.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// What a connection to the cluster port may cost before it authenticates (our patch of
/// ractor_cluster, `vendor/README.md`): TLS and the cookie challenge within 5 s, frames of
/// at most 64 KiB until then (the handshake's are a few hundred bytes), and at most 256 such
/// connections open (fewer when the process may open few descriptors: a quarter of its
/// limit, so that the HTTP port and the database keep theirs), 16 from one address; over
/// that a connection is closed at once. Peers need one each, briefly, while they join.
fn handshake_limits() -> HandshakeLimits {
    let descriptors = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let max_pending = usize::try_from(descriptors / 4).unwrap_or(usize::MAX).clamp(16, 256);
    HandshakeLimits {
        timeout: Duration::from_secs(5),
        max_frame_size: 64 * 1024,
        max_pending,
        max_pending_per_ip: 16,
    }
}

/// A role's face to other nodes: an actor that joins the role's versioned process groups,
/// started (and restarted) under the cluster actor. The mesh starts whatever faces it is
/// given and knows nothing of what they do.
pub struct Face(Box<StartFace>);

/// Starts a face under the cluster actor (the cell given).
type StartFace = dyn Fn(Arc<Config>, ActorCell) -> BoxFuture<'static, Result<(), SpawnErr>> + Send + Sync;

impl Face {
    /// The face run by the actor `make` builds, started with the node's configuration.
    pub fn of<A: Actor<Arguments = Arc<Config>>>(make: impl Fn() -> A + Send + Sync + 'static) -> Face {
        Face(Box::new(move |config, mesh| {
            let actor = make();
            Box::pin(async move { Actor::spawn_linked(None, actor, config, mesh).await.map(|_| ()) })
        }))
    }
}

/// What the cluster actor starts with.
pub struct MeshArgs {
    /// The configuration.
    pub config: Arc<Config>,
    /// The roles' faces to start under it.
    pub faces: Arc<[Face]>,
    /// What the probe reports.
    pub facts: Facts,
}

/// A member as `/v1/cluster` shows it.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// Incarnation name.
    pub name: String,
    /// Stable (pod) name.
    pub node: String,
    /// Its cluster address.
    pub address: String,
    /// `up` or `suspect`.
    pub state: &'static str,
    /// Its last heartbeat answer.
    pub status: Option<NodeStatus>,
    /// How long that heartbeat (a small cross-node call) took.
    pub rtt: Option<Duration>,
    /// Its time minus this node's, from that heartbeat (ms; absent from older nodes).
    pub clock_offset_ms: Option<i64>,
}

/// The cluster actor's messages.
pub enum ClusterMsg {
    /// Dial and probe.
    Tick,
    /// A session finished its handshake.
    SessionReady {
        /// The peer's incarnation name.
        name: String,
        /// The address it advertises.
        address: String,
        /// The session's node id (names its remote actors).
        node_id: u64,
        /// The session actor (stopped to fence the peer).
        session: ActorRef<NodeSessionMessage>,
    },
    /// A session ended.
    SessionDown {
        /// The peer's incarnation name.
        name: String,
        /// The session that ended: only the member's own session takes it down (another
        /// connection claiming its name, even an unauthenticated one, does not).
        session: ActorId,
    },
    /// A dial ended.
    Dialed {
        /// The address.
        address: String,
        /// It connected.
        ok: bool,
    },
    /// A heartbeat ended.
    Heartbeat {
        /// The peer.
        name: String,
        /// Its answer, or `None` on timeout/error.
        status: Option<NodeStatus>,
        /// The call's round-trip time.
        rtt: Duration,
        /// The peer's time minus this node's, if it said its time.
        clock_offset: Option<i64>,
    },
    /// What kube discovery found (the peers replace the list; a failure is shown).
    Discovered(super::kube::Report),
    /// Kube discovery as this node sees it (`None`: static peers).
    Discovery {
        /// The answer.
        reply: RpcReplyPort<Option<DiscoveryView>>,
    },
    /// The current members.
    Members {
        /// The answer.
        reply: RpcReplyPort<Vec<MemberView>>,
    },
    /// The wanted peers (static or discovered) this node has no session with now.
    Unreached {
        /// Their addresses.
        reply: RpcReplyPort<Vec<String>>,
    },
}

impl ractor::Message for ClusterMsg {}

/// Kube discovery as the mesh sees it.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryView {
    /// The pods have been listed at least once.
    pub listed: bool,
    /// When they were first listed.
    pub listed_at: Option<Instant>,
    /// The pods seen running at the last listing or change (ourselves included).
    pub pods: usize,
    /// The last failure (what to fix), until the next listing or change.
    pub error: Option<String>,
    /// The StatefulSet's declared replicas, once read.
    pub replicas: Option<u32>,
}

struct Member {
    address: String,
    node_id: u64,
    session: ActorRef<NodeSessionMessage>,
    misses: u32,
    probing: bool,
    /// When this node last sent it a heartbeat.
    probed: Option<Instant>,
    since: Instant,
    status: Option<NodeStatus>,
    rtt: Option<Duration>,
    clock_offset: Option<i64>,
}

struct Dialing {
    failures: u32,
    next: Instant,
    in_flight: bool,
}

/// The cluster actor.
pub struct ClusterActor;

/// Its state.
pub struct ClusterState {
    cluster: ClusterConfig,
    server: ActorRef<NodeServerMessage>,
    members: HashMap<String, Member>,
    dials: HashMap<String, Dialing>,
    discovery: Option<tokio::task::JoinHandle<()>>,
    /// What kube discovery said last (`None`: static peers).
    discovered: Option<DiscoveryView>,
    /// TLS between nodes (`None`: plain TCP, authenticated by the cookie only).
    tls: Option<ClusterTls>,
}

/// Forwards ractor_cluster's session events to the cluster actor.
struct Events(ActorRef<ClusterMsg>);

impl Events {
    fn ready(&self, ses: NodeServerSessionInformation) {
        if let Some(peer) = ses.peer_name {
            let _ = self.0.send_message(ClusterMsg::SessionReady {
                name: peer.name,
                address: peer.connection_string,
                node_id: ses.node_id,
                session: ses.actor,
            });
        }
    }
}

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        if let Some(peer) = ses.peer_name {
            let _ = self.0.send_message(ClusterMsg::SessionDown {
                name: peer.name,
                session: ses.actor.get_id(),
            });
        }
    }

    fn node_session_authenticated(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        self.ready(ses);
    }
}

fn jitter(base: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let frac = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
    base.mul_f64(0.75 + frac * 0.5)
}

impl ClusterState {
    fn connected(&self, address: &str) -> bool {
        self.members.values().any(|m| m.address == address)
    }

    fn dial(&mut self, myself: &ActorRef<ClusterMsg>) {
        let now = Instant::now();
        for address in self.cluster.peers.clone() {
            // One side dials: the smaller address. Never dial ourselves or a live peer.
            if address <= self.cluster.advertise || self.connected(&address) {
                continue;
            }
            let entry = self.dials.entry(address.clone()).or_insert(Dialing {
                failures: 0,
                next: now,
                in_flight: false,
            });
            if entry.in_flight || entry.next > now {
                continue;
            }
            entry.in_flight = true;
            let (server, me, tls) = (self.server.clone(), myself.clone(), self.tls.clone());
            tokio::spawn(async move {
                let dial = async {
                    match tls {
                        Some(tls) => {
                            ractor_cluster::client_connect_enc(
                                &server,
                                address.as_str(),
                                tls.connector,
                                tls.server_name,
                            )
                            .await
                        }
                        None => ractor_cluster::client_connect(&server, address.as_str()).await,
                    }
                };
                let ok = match tokio::time::timeout(Duration::from_secs(3), dial).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::debug!(%address, error = %e, "dial failed");
                        false
                    }
                    Err(_) => false,
                };
                let _ = me.send_message(ClusterMsg::Dialed { address, ok });
            });
        }
    }

    fn probe(&mut self, myself: &ActorRef<ClusterMsg>) {
        let probes = ractor::pg::get_members(&PROBE_GROUP.to_string());
        let mut due: Vec<(&String, &mut Member)> = self.members.iter_mut().filter(|(_, m)| !m.probing).collect();
        due.sort_by_key(|(_, m)| m.probed);
        for (name, member) in due.into_iter().take(PROBES_PER_TICK) {
            member.probed = Some(Instant::now());
            let probe = probes
                .iter()
                .find(|p| !p.get_id().is_local() && p.get_id().node() == member.node_id)
                .cloned();
            let Some(probe) = probe else {
                // The peer's groups arrive just after its session: give it a moment.
                if member.since.elapsed() > HEARTBEAT_TIMEOUT * MAX_MISSES {
                    member.misses += 1;
                }
                continue;
            };
            member.probing = true;
            let (me, name) = (myself.clone(), name.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let before = crate::clock::read();
                let answer =
                    ractor::rpc::call::<ProbeMsg, NodeStatus, _>(&probe, ProbeMsg::Status, Some(HEARTBEAT_TIMEOUT))
                        .await;
                let status = match answer {
                    Ok(CallResult::Success(status)) => Some(status),
                    _ => None,
                };
                let rtt = sent.elapsed();
                let clock_offset = status
                    .as_ref()
                    .filter(|s| s.clock_ms != 0)
                    .map(|s| crate::clock::peer_said(&name, before, crate::clock::read(), s.clock_ms));
                let _ = me.send_message(ClusterMsg::Heartbeat {
                    name,
                    status,
                    rtt,
                    clock_offset,
                });
            });
        }
        self.fence();
    }

    fn fence(&mut self) {
        let dead: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.misses >= MAX_MISSES)
            .map(|(n, _)| n.clone())
            .collect();
        for name in dead {
            if let Some(member) = self.members.remove(&name) {
                tracing::warn!(peer = %name, misses = member.misses, "peer stopped answering; fencing it");
                member.session.stop(Some("fenced: heartbeats missed".into()));
            }
        }
    }
}

impl Actor for ClusterActor {
    async fn post_stop(
        &self,
        _myself: ActorRef<ClusterMsg>,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(task) = state.discovery.take() {
            task.abort();
        }
        Ok(())
    }

    type Msg = ClusterMsg;
    type State = ClusterState;
    type Arguments = MeshArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ClusterMsg>,
        MeshArgs { config, faces, facts }: MeshArgs,
    ) -> Result<ClusterState, ActorProcessingErr> {
        let cluster = config
            .cluster
            .clone()
            .ok_or("the cluster actor needs --cluster-listen")?;
        let tls = cluster.tls.as_ref().map(ClusterTls::from_files).transpose()?;
        let incarnation = super::incarnation_name(&config.node_name);
        let host = cluster
            .advertise
            .rsplit_once(':')
            .map_or(cluster.advertise.as_str(), |(h, _)| h)
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let server = NodeServer::new(
            cluster.listen.port(),
            cluster.cookie.clone(),
            incarnation.clone(),
            host,
            tls.as_ref().map(|t| IncomingEncryptionMode::Tls(t.acceptor.clone())),
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(cluster.listen.ip())
        .with_handshake_limits(handshake_limits());
        // Actors that join process groups are spawned without a name: a peer's stub of a
        // named actor unregisters that name here when its session ends (ractor 0.16.5).
        for face in faces.iter() {
            (face.0)(config.clone(), myself.get_cell()).await?;
        }
        let (server, _) = Actor::spawn_linked(None, server, (), myself.get_cell()).await?;
        server.cast(NodeServerMessage::SubscribeToEvents {
            id: "membership".into(),
            subscription: Box::new(Events(myself.clone())),
        })?;
        Actor::spawn_linked(
            None,
            ProbeActor,
            (config.node_name.clone(), incarnation.clone(), facts),
            myself.get_cell(),
        )
        .await?;
        tracing::info!(%incarnation, listen = %cluster.listen, peers = ?cluster.peers, "cluster node started");
        myself.send_interval(TICK, || ClusterMsg::Tick);
        let discovery = cluster.kube_selector.clone().map(|selector| {
            let (namespace, port, me) = (cluster.kube_namespace.clone(), cluster.listen.port(), myself.clone());
            let report = move |report| {
                let _ = me.send_message(ClusterMsg::Discovered(report));
            };
            // A StatefulSet pod (`set-N`) also reads its set's declared replicas.
            let set = super::kube::ordinal(&config.node_name).map(|(set, _)| set.to_string());
            tokio::spawn(super::kube::discover(namespace, selector, set, port, report))
        });
        Ok(ClusterState {
            discovered: discovery.is_some().then(DiscoveryView::default),
            discovery,
            tls,
            cluster,
            server,
            members: HashMap::new(),
            dials: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ClusterMsg>,
        message: ClusterMsg,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ClusterMsg::Tick => {
                state.dial(&myself);
                state.probe(&myself);
            }
            ClusterMsg::SessionReady {
                name,
                address,
                node_id,
                session,
            } => {
                tracing::info!(peer = %name, %address, "node up");
                state.members.insert(
                    name,
                    Member {
                        address,
                        node_id,
                        session,
                        misses: 0,
                        probing: false,
                        probed: None,
                        since: Instant::now(),
                        status: None,
                        rtt: None,
                        clock_offset: None,
                    },
                );
            }
            ClusterMsg::SessionDown { name, session } => {
                if state.members.get(&name).is_some_and(|m| m.session.get_id() == session) {
                    state.members.remove(&name);
                    tracing::warn!(peer = %name, "node down");
                }
            }
            ClusterMsg::Dialed { address, ok } => {
                if let Some(dial) = state.dials.get_mut(&address) {
                    dial.in_flight = false;
                    if ok {
                        dial.failures = 0;
                        // The session needs a moment to become ready; don't redial at once.
                        dial.next = Instant::now() + Duration::from_secs(2);
                    } else {
                        dial.failures += 1;
                        let backoff =
                            (Duration::from_millis(250) * 2u32.saturating_pow(dial.failures.min(8))).min(MAX_BACKOFF);
                        dial.next = Instant::now() + jitter(backoff);
                    }
                }
            }
            ClusterMsg::Heartbeat {
                name,
                status,
                rtt,
                clock_offset,
            } => {
                if let Some(member) = state.members.get_mut(&name) {
                    member.probing = false;
                    match status {
                        Some(status) => {
                            member.misses = 0;
                            member.status = Some(status);
                            member.rtt = Some(rtt);
                            member.clock_offset = clock_offset;
                        }
                        None => {
                            member.misses += 1;
                            tracing::debug!(peer = %name, misses = member.misses, "heartbeat missed");
                        }
                    }
                }
                state.fence();
            }
            ClusterMsg::Discovered(super::kube::Report::Failed(why)) => {
                if let Some(view) = state.discovered.as_mut() {
                    view.error = Some(why);
                }
            }
            ClusterMsg::Discovered(super::kube::Report::Replicas(n)) => {
                if let Some(view) = state.discovered.as_mut() {
                    view.replicas = Some(n);
                }
            }
            ClusterMsg::Discovery { reply } => {
                let _ = reply.send(state.discovered.clone());
            }
            ClusterMsg::Discovered(super::kube::Report::Peers(super::kube::Peers { addresses, leaving })) => {
                if let Some(view) = state.discovered.as_mut() {
                    (view.listed, view.pods, view.error) = (true, addresses.len(), None);
                    view.listed_at.get_or_insert_with(Instant::now);
                }
                let own = state.cluster.advertise.clone();
                state.cluster.peers = addresses.into_iter().filter(|a| *a != own).collect();
                // Pods that are gone (deleted) leave the cluster now.
                let gone: Vec<String> = state
                    .members
                    .iter()
                    .filter(|(_, m)| !state.cluster.peers.contains(&m.address) && !leaving.contains(&m.address))
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in gone {
                    if let Some(member) = state.members.remove(&name) {
                        tracing::info!(peer = %name, "pod left; closing its session");
                        member.session.stop(Some("pod deleted".into()));
                    }
                }
            }
            ClusterMsg::Members { reply } => {
                let mut members: Vec<MemberView> = state
                    .members
                    .iter()
                    .map(|(name, m)| MemberView {
                        name: name.clone(),
                        node: stable_name(name).to_string(),
                        address: m.address.clone(),
                        state: if m.misses == 0 && m.status.is_some() {
                            "up"
                        } else {
                            "suspect"
                        },
                        status: m.status.clone(),
                        rtt: m.rtt,
                        clock_offset_ms: m.clock_offset,
                    })
                    .collect();
                members.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = reply.send(members);
            }
            ClusterMsg::Unreached { reply } => {
                let own = &state.cluster.advertise;
                let away = (state.cluster.peers.iter())
                    .filter(|a| *a != own && !state.connected(a))
                    .cloned()
                    .collect();
                let _ = reply.send(away);
            }
        }
        Ok(())
    }
}
