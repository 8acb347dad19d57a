//! The probe actor: answers heartbeats with this node's status. One per node, in the
//! [`super::PROBE_GROUP`] process group, so peers find it through `pg`.
//!
//! The probe never calls a role: what it reports about them is what they publish in this
//! node's [`Facts`] (the converter its slots) and which role names are registered.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use tokio::sync::watch;

/// Busy and total converter slots.
pub type Slots = (usize, usize);

/// The data volume as the request role last measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Storage {
    /// Bytes free.
    pub free_bytes: u64,
    /// Under the node's reserve: it takes no new files and no conversions.
    pub low: bool,
}

/// What this node's roles publish about themselves for the mesh to report. Cloned into
/// each role that publishes (it outlives their restarts) and into the probe that reads.
#[derive(Clone)]
pub struct Facts {
    slots: Arc<watch::Sender<Slots>>,
    storage: Arc<watch::Sender<Storage>>,
    /// This node belongs to a metadata group (it must never create another).
    meta_group: Arc<watch::Sender<bool>>,
    roles: Arc<[&'static str]>,
}

impl Facts {
    /// Facts of a node whose roles run under these registry names.
    pub fn new(roles: impl IntoIterator<Item = &'static str>) -> Self {
        Facts {
            slots: Arc::new(watch::Sender::new((0, 0))),
            storage: Arc::new(watch::Sender::new(Storage::default())),
            meta_group: Arc::new(watch::Sender::new(false)),
            roles: roles.into_iter().collect(),
        }
    }

    /// The converter's busy and total slots (`(0, 0)` while it is not running).
    pub fn publish_slots(&self, slots: Slots) {
        self.slots.send_replace(slots);
    }

    /// The data volume's free space (published by the request role).
    pub fn publish_storage(&self, storage: Storage) {
        self.storage.send_replace(storage);
    }

    /// Whether this node belongs to a metadata group (published by the node's keeper).
    pub fn publish_meta_group(&self, group: bool) {
        self.meta_group.send_replace(group);
    }

    /// The data volume as last published.
    pub fn storage(&self) -> Storage {
        *self.storage.borrow()
    }

    /// This node's status as peers see it.
    pub fn status(&self, node: &str, incarnation: &str) -> NodeStatus {
        let (busy, total) = *self.slots.borrow();
        let storage = self.storage();
        NodeStatus {
            node: node.to_string(),
            incarnation: incarnation.to_string(),
            version: super::VERSION.to_string(),
            busy_slots: busy as u32,
            total_slots: total as u32,
            roles: self
                .roles
                .iter()
                .filter(|name| ractor::registry::where_is(name).is_some())
                .map(|name| name.to_string())
                .collect(),
            free_bytes: storage.free_bytes,
            low_storage: storage.low,
            meta_group: *self.meta_group.borrow(),
            clock_ms: crate::clock::now_ms(),
        }
    }
}

/// What a node says about itself. A protobuf message: fields are added with new tags,
/// never renumbered, so mixed versions stay compatible.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeStatus {
    /// The stable (pod) name.
    #[prost(string, tag = "1")]
    pub node: String,
    /// This incarnation's cluster name.
    #[prost(string, tag = "2")]
    pub incarnation: String,
    /// The build's version.
    #[prost(string, tag = "3")]
    pub version: String,
    /// Running conversions.
    #[prost(uint32, tag = "4")]
    pub busy_slots: u32,
    /// Converter slots.
    #[prost(uint32, tag = "5")]
    pub total_slots: u32,
    /// The roles running now.
    #[prost(string, repeated, tag = "6")]
    pub roles: Vec<String>,
    /// Bytes free on its data volume.
    #[prost(uint64, tag = "7")]
    pub free_bytes: u64,
    /// Under its reserve: place no conversion there (absent from older nodes: false).
    #[prost(bool, tag = "8")]
    pub low_storage: bool,
    /// It belongs to a metadata group (absent from older nodes: false).
    #[prost(bool, tag = "9")]
    pub meta_group: bool,
    /// Its time when it answered, ms since the epoch ([`crate::clock::now_ms`]; absent from
    /// older nodes: 0).
    #[prost(int64, tag = "10")]
    pub clock_ms: i64,
}

ractor_cluster::derive_serialization_for_prost_type! {NodeStatus}

/// The probe's messages (these cross nodes).
#[derive(RactorClusterMessage)]
pub enum ProbeMsg {
    /// A heartbeat: this node's status.
    #[rpc]
    Status(RpcReplyPort<NodeStatus>),
}

/// The probe actor.
pub struct ProbeActor;

/// What the probe reports from.
pub struct ProbeState {
    node: String,
    incarnation: String,
    facts: Facts,
}

impl Actor for ProbeActor {
    type Msg = ProbeMsg;
    type State = ProbeState;
    type Arguments = (String, String, Facts);

    async fn pre_start(
        &self,
        myself: ActorRef<ProbeMsg>,
        (node, incarnation, facts): (String, String, Facts),
    ) -> Result<ProbeState, ActorProcessingErr> {
        ractor::pg::join(super::PROBE_GROUP.to_string(), vec![myself.get_cell()]);
        Ok(ProbeState {
            node,
            incarnation,
            facts,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ProbeMsg>,
        message: ProbeMsg,
        state: &mut ProbeState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ProbeMsg::Status(reply) => {
                let _ = reply.send(state.facts.status(&state.node, &state.incarnation));
            }
        }
        Ok(())
    }
}
