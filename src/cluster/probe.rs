//! The probe actor: answers heartbeats with this node's status. One per node, in the
//! [`super::PROBE_GROUP`] process group, so peers find it through `pg`.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;

use crate::actors::converter::ConverterMsg;
use crate::actors::{Role, ask};
use crate::config::Config;

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
    config: Arc<Config>,
    incarnation: String,
}

/// This node's status, gathered from its actors.
pub async fn local_status(config: &Config, incarnation: &str) -> NodeStatus {
    let slots = ask(
        Role::Converter,
        |reply| ConverterMsg::Status { reply },
        std::time::Duration::from_millis(500),
    )
    .await;
    let (busy, total) = slots.unwrap_or((0, 0));
    NodeStatus {
        node: config.node_name.clone(),
        incarnation: incarnation.to_string(),
        version: super::VERSION.to_string(),
        busy_slots: busy as u32,
        total_slots: total as u32,
        roles: Role::ALL
            .iter()
            .filter(|r| r.local().is_some())
            .map(|r| r.name().to_string())
            .collect(),
    }
}

impl Actor for ProbeActor {
    type Msg = ProbeMsg;
    type State = ProbeState;
    type Arguments = (Arc<Config>, String);

    async fn pre_start(
        &self,
        myself: ActorRef<ProbeMsg>,
        (config, incarnation): (Arc<Config>, String),
    ) -> Result<ProbeState, ActorProcessingErr> {
        ractor::pg::join(super::PROBE_GROUP.to_string(), vec![myself.get_cell()]);
        Ok(ProbeState { config, incarnation })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ProbeMsg>,
        message: ProbeMsg,
        state: &mut ProbeState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ProbeMsg::Status(reply) => {
                // Answered off the actor so a slow converter never delays other heartbeats.
                let (config, incarnation) = (state.config.clone(), state.incarnation.clone());
                tokio::spawn(async move {
                    let _ = reply.send(local_status(&config, &incarnation).await);
                });
            }
        }
        Ok(())
    }
}
