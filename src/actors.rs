//! The roles (ractor actors), one file or folder per role, and how the rest of the code
//! reaches them. The node's wiring (start-up, the supervisor, the gateway that owns the HTTP
//! server) is `crate::node`; `request` is the original design's download-request service
//! and owns jobs (the gateway reaches them through `request::client::JobsClient`). Each
//! role's folder holds its actor and its face to other nodes side by side; `cluster/` is
//! the mesh underneath and knows no role.
//!
//! ```text
//! node supervisor (../node/supervisor.rs) restarts any child that stops or fails
//! ├── auth       auth.rs              users, argon2 checks off the runtime, JWT, login throttle
//! ├── request    request.rs           job intake, persistence, fetching, fencing of results
//! │                request/dispatch.rs    where conversions run: placement bookkeeping, leases
//! │                request/events.rs      each change of a job → this node's event ring
//! │                                       (`/v1/events`) and every other node's
//! ├── converter  converter.rs         a pool of conversion slots; CPU work on blocking threads
//! ├── notifier   notifier.rs          transactional outboxes → SMTP or .eml files, and signed
//! │                                   webhook calls (notifier/webhook.rs), with retries
//! ├── gateway    ../node/gateway.rs   owns the axum server; its handlers call the others by role
//! └── cluster    ../cluster/mesh.rs   (with --cluster-listen) sessions, dialling, heartbeats,
//!     │                               fencing, discovery; publishes members to whoever asks
//!     ├── probe  ../cluster/probe.rs  answers heartbeats from the roles' published facts
//!     └── faces, one per role that other nodes call (started under the mesh, found by pg):
//!         ├── jobs.v1:<node>   request/jobs.rs        status, list, cancel, MP3 chunks,
//!         │                                           placed results, handed-over jobs
//!         ├── events.v1        request/events.rs      other owners' job events into this ring
//!         ├── placement.v1     converter/host.rs      runs other nodes' conversions here
//!         └── users.v1         auth/replication.rs    user replication (last writer wins)
//! ```
//!
//! Across nodes (versioned process groups; messages are protobuf, see each face):
//!
//! ```text
//! owner's request ──Offer/Input (request/placement.rs)──▶ host (converter/host.rs) ──▶ its converter
//! owner's jobs    ◀──Progress/Result────────────────────── host
//! any gateway     ──Get/List/Delete/Chunk/Keyed (request/client.rs)──▶ owner's jobs ──▶ owner's request
//! leaving request ──HandoffPiece/Adopt (request/handoff.rs)──▶ staying node's jobs ──▶ its request
//! owner's request ──JobEvent (request/events.rs)──▶ every peer's events
//! auth's users    ◀──UserBatch──▶ every peer's users (with their webhook settings)
//! every mesh      ──Status (heartbeat)──▶ every peer's probe
//! ```
//!
//! Actors find each other by [`Role`] name in ractor's registry at each call, never by a
//! stored reference, so a restarted actor is found again at once. Faces join process
//! groups and have no registry name (see [`crate::cluster`] on why).

pub mod auth;
pub mod converter;
pub mod notifier;
pub mod request;

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorCell, Message, RpcReplyPort};

/// The roles every node runs. Their names are registry names (and, in a cluster, the
/// stems of versioned process groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Users and tokens.
    Auth,
    /// HTTP.
    Gateway,
    /// Jobs.
    Request,
    /// Conversions.
    Converter,
    /// Emails.
    Notifier,
    /// Cluster membership (only on nodes with `--cluster-listen`).
    Cluster,
}

impl Role {
    /// Every role, in start order (the gateway last: it serves the others).
    pub const ALL: [Role; 5] = [
        Role::Auth,
        Role::Request,
        Role::Converter,
        Role::Notifier,
        Role::Gateway,
    ];

    /// The registry name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Auth => "auth",
            Role::Gateway => "gateway",
            Role::Request => "request",
            Role::Converter => "converter",
            Role::Notifier => "notifier",
            Role::Cluster => "cluster",
        }
    }

    /// This node's actor for the role, if it is running.
    pub fn local(self) -> Option<ActorCell> {
        ractor::registry::where_is(self.name())
    }
}

/// A call to an actor that did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The actor is not running (restarting, or the node is stopping).
    #[error("the {0} service is not available")]
    Unavailable(&'static str),
    /// No answer in time.
    #[error("the {0} service did not answer in time")]
    Timeout(&'static str),
}

/// The longest any call between actors waits.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Calls this node's `role` actor with the message `make` builds, waiting at most `timeout`.
pub async fn ask<M, T>(role: Role, make: impl FnOnce(RpcReplyPort<T>) -> M, timeout: Duration) -> Result<T, CallError>
where
    M: Message,
    T: Send + 'static,
{
    let cell = role.local().ok_or(CallError::Unavailable(role.name()))?;
    match ractor::rpc::call::<M, T, _>(&cell, make, Some(timeout)).await {
        Ok(CallResult::Success(reply)) => Ok(reply),
        Ok(CallResult::Timeout) => Err(CallError::Timeout(role.name())),
        Ok(CallResult::SenderError) | Err(_) => Err(CallError::Unavailable(role.name())),
    }
}

/// Sends `message` to this node's `role` actor without waiting; `false` if it is not running.
pub fn tell<M: Message>(role: Role, message: M) -> bool {
    role.local().is_some_and(|cell| cell.send_message(message).is_ok())
}
