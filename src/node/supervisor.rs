//! The node supervisor: starts one actor per [`Role`] and restarts any that stops or fails.
//!
//! ```text
//! node supervisor
//! ├── auth  ├── request  ├── converter  ├── notifier  └── gateway
//! └── cluster (with --cluster-listen; cluster/mesh.rs)
//!     └── the roles' faces: jobs.v1 and events.v1 (request), placement.v1 (converter)
//! ```
//!
//! A child that dies is restarted under the same registry name (retrying while the old
//! name is still being released). More than [`MAX_RESTARTS`] restarts within
//! [`RESTART_WINDOW`] means something is badly wrong: the supervisor stops, and with it
//! the node, rather than spin.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::gateway::{GatewayActor, GatewayArgs, Listeners};
use crate::actors::Role;
use crate::actors::auth::AuthActor;
use crate::actors::converter::ConverterActor;
use crate::actors::converter::host::HostActor;
use crate::actors::notifier::NotifierActor;
use crate::actors::request::RequestActor;
use crate::actors::request::events::{Events, EventsActor};
use crate::actors::request::jobs::JobsActor;
use crate::cluster::mesh::{ClusterActor, Face, MeshArgs};
use crate::cluster::probe::Facts;
use crate::config::Config;
use crate::meta::Meta;

/// Restarts allowed within [`RESTART_WINDOW`].
pub const MAX_RESTARTS: usize = 20;
/// The window for [`MAX_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// The supervisor's messages.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// (Re)start the actor for a role.
    Start {
        /// The role.
        role: Role,
    },
    /// Stop restarting children: the node is shutting down.
    ShuttingDown,
}

impl ractor::Message for SupervisorMsg {}

/// The node supervisor.
pub struct NodeSupervisor;

/// What the supervisor needs to start its children.
pub struct SupervisorArgs {
    /// The configuration.
    pub config: Arc<Config>,
    /// The sockets the gateway serves (cloned for each gateway incarnation).
    pub listeners: Listeners,
    /// What the roles publish for the mesh (outlives their restarts).
    pub facts: Facts,
    /// This node's member of the metadata group.
    pub meta: Meta,
}

/// The supervisor's state.
pub struct SupervisorState {
    config: Arc<Config>,
    listeners: Listeners,
    children: HashMap<ActorId, Role>,
    restarts: VecDeque<Instant>,
    stopping: bool,
    /// What the roles publish for the mesh (outlives their restarts).
    facts: Facts,
    /// This node's ring of job events (outlives the roles' restarts).
    events: Events,
    /// The roles' faces to other nodes, started under the cluster actor.
    faces: Arc<[Face]>,
    /// This node's member of the metadata group.
    meta: Meta,
}

impl NodeSupervisor {
    async fn start_child(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        role: Role,
    ) -> Result<(), ActorProcessingErr> {
        let name = Some(role.name().to_string());
        let cell = myself.get_cell();
        let config = state.config.clone();
        let spawned = match role {
            Role::Auth => Actor::spawn_linked(name, AuthActor, (config, state.meta.clone()), cell)
                .await
                .map(|(r, _)| r.get_cell()),
            Role::Request => Actor::spawn_linked(
                name,
                RequestActor,
                (config, state.facts.clone(), state.events.clone(), state.meta.clone()),
                cell,
            )
            .await
            .map(|(r, _)| r.get_cell()),
            Role::Converter => Actor::spawn_linked(name, ConverterActor, (config, state.facts.clone()), cell)
                .await
                .map(|(r, _)| r.get_cell()),
            Role::Notifier => Actor::spawn_linked(name, NotifierActor, config, cell)
                .await
                .map(|(r, _)| r.get_cell()),
            Role::Cluster => {
                let args = MeshArgs {
                    config,
                    faces: state.faces.clone(),
                    facts: state.facts.clone(),
                };
                Actor::spawn_linked(name, ClusterActor, args, cell)
                    .await
                    .map(|(r, _)| r.get_cell())
            }
            Role::Gateway => {
                let args = GatewayArgs {
                    config,
                    listeners: state.listeners.try_clone()?,
                    facts: state.facts.clone(),
                    events: state.events.clone(),
                    meta: state.meta.clone(),
                };
                Actor::spawn_linked(name, GatewayActor, args, cell)
                    .await
                    .map(|(r, _)| r.get_cell())
            }
        };
        match spawned {
            Ok(child) => {
                state.children.insert(child.get_id(), role);
                Ok(())
            }
            Err(e) => {
                // Usually the dead actor's name is not released yet: try again shortly.
                tracing::warn!(role = role.name(), error = %e, "cannot start actor; retrying");
                myself.send_after(Duration::from_millis(200), move || SupervisorMsg::Start { role });
                Ok(())
            }
        }
    }
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let events = Events::new();
        let ring = events.clone();
        let meta = args.meta.clone();
        let mut state = SupervisorState {
            config: args.config,
            listeners: args.listeners,
            children: HashMap::new(),
            restarts: VecDeque::new(),
            stopping: false,
            facts: args.facts,
            events,
            meta: args.meta,
            // Each role that other nodes call: request (jobs.v1, events.v1), converter
            // (placement.v1). Users travel in the metadata's log (meta.v1).
            faces: Arc::new([
                Face::of(move || JobsActor(meta.clone())),
                Face::of(move || EventsActor(ring.clone())),
                Face::of(|| HostActor),
            ]),
        };
        let cluster = state.config.cluster.is_some().then_some(Role::Cluster);
        for role in Role::ALL.into_iter().chain(cluster) {
            // At start a failure is fatal (bad data dir, port in use): report it.
            let before = state.children.len();
            self.start_child(&myself, &mut state, role).await?;
            if state.children.len() == before {
                return Err(format!("cannot start the {} actor", role.name()).into());
            }
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisorMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Start { role } if !state.stopping => self.start_child(&myself, state, role).await?,
            SupervisorMsg::Start { .. } => {}
            SupervisorMsg::ShuttingDown => state.stopping = true,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into())),
            SupervisionEvent::ActorFailed(cell, error) => (cell, format!("failed: {error}")),
            _ => return Ok(()),
        };
        let Some(role) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.stopping {
            return Ok(());
        }
        tracing::error!(role = role.name(), reason = %why, "actor stopped; restarting it");
        let now = Instant::now();
        state.restarts.push_back(now);
        while state
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            state.restarts.pop_front();
        }
        if state.restarts.len() > MAX_RESTARTS {
            return Err(format!("more than {MAX_RESTARTS} actor restarts in {RESTART_WINDOW:?}; giving up").into());
        }
        myself.send_message(SupervisorMsg::Start { role })?;
        Ok(())
    }
}
