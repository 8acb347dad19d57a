//! The gateway actor: owns the axum server for its lifetime.
//!
//! The listening socket is bound once by the caller (tests bind port 0) and cloned into
//! each gateway incarnation, so a restarted gateway serves the same port. Stopping the
//! gateway first stops accepting, then lets in-flight requests finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_util::sync::CancellationToken;

use crate::actors::request::events::Events;
use crate::cluster::probe::Facts;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::meta::Meta;

/// How long in-flight requests may run after the server stops accepting.
const REQUEST_DRAIN: Duration = Duration::from_secs(10);

/// The gateway's messages.
pub enum GatewayMsg {
    /// Stop accepting connections; answer once in-flight requests are done (or cut off).
    StopAccepting {
        /// Answered when the server has stopped.
        reply: RpcReplyPort<()>,
    },
}

impl ractor::Message for GatewayMsg {}

/// The sockets the gateway serves: the API, and the metrics on their own port when
/// `--metrics-listen` is set.
pub struct Listeners {
    /// The API (and `/metrics` without a port of their own).
    pub http: std::net::TcpListener,
    /// `/metrics` alone.
    pub metrics: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Clones for a new gateway incarnation.
    pub fn try_clone(&self) -> std::io::Result<Listeners> {
        Ok(Listeners {
            http: self.http.try_clone()?,
            metrics: self.metrics.as_ref().map(|m| m.try_clone()).transpose()?,
        })
    }
}

impl From<std::net::TcpListener> for Listeners {
    fn from(http: std::net::TcpListener) -> Self {
        Listeners { http, metrics: None }
    }
}

/// What the gateway starts with.
pub struct GatewayArgs {
    /// The configuration.
    pub config: Arc<Config>,
    /// The bound sockets (a clone per incarnation).
    pub listeners: Listeners,
    /// What this node's roles publish (for `/v1/cluster`).
    pub facts: Facts,
    /// This node's ring of job events (for `/v1/events`).
    pub events: Events,
    /// This node's member of the metadata group.
    pub meta: Meta,
}

/// The gateway actor.
pub struct GatewayActor;

/// Its state: the server task and its shutdown switch.
pub struct GatewayState {
    shutdown: CancellationToken,
    stopping: Arc<AtomicBool>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// The metrics server, when on its own port.
    metrics: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for GatewayActor {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<GatewayMsg>,
        args: GatewayArgs,
    ) -> Result<GatewayState, ActorProcessingErr> {
        args.listeners.http.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(args.listeners.http)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let limits = args.config.http_limits;
        let shutdown = CancellationToken::new();
        let state = AppState::new(
            args.config,
            stopping.clone(),
            shutdown.clone(),
            args.facts,
            args.events,
            args.meta,
        );
        let metrics = match args.listeners.metrics {
            Some(socket) => {
                socket.set_nonblocking(true)?;
                let socket = tokio::net::TcpListener::from_std(socket)?;
                let app = http::metrics_router(state.clone());
                Some(tokio::spawn(http::serve::serve(socket, app, shutdown.clone(), limits)))
            }
            None => None,
        };
        let app = http::router(state);
        let server = tokio::spawn(http::serve::serve(listener, app, shutdown.clone(), limits));
        Ok(GatewayState {
            shutdown,
            stopping,
            server: Some(server),
            metrics,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<GatewayMsg>,
        message: GatewayMsg,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GatewayMsg::StopAccepting { reply } => {
                state.stopping.store(true, Ordering::Relaxed);
                state.shutdown.cancel();
                if let Some(server) = state.server.take() {
                    let abort = server.abort_handle();
                    if tokio::time::timeout(REQUEST_DRAIN, server).await.is_err() {
                        tracing::warn!("requests still running after {REQUEST_DRAIN:?}; closing them");
                        abort.abort();
                    }
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<GatewayMsg>,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        // A gateway that dies takes its server with it; the next incarnation serves the socket.
        state.shutdown.cancel();
        if let Some(metrics) = state.metrics.take() {
            metrics.abort();
        }
        if let Some(server) = state.server.take() {
            server.abort();
        }
        Ok(())
    }
}
