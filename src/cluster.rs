//! The mesh: ractor_cluster sessions between nodes, static and kube discovery, TLS, and our
//! own failure detection (ractor_cluster has none; see `../shared/CLUSTER-NOTES.md`). It
//! imports no role: the roles' faces to other nodes live beside their actors (see
//! [`crate::actors`]) and are handed to the mesh to start ([`mesh::Face`]); what the mesh
//! reports about a role (free converter slots) the role publishes ([`probe::Facts`]).
//!
//! Each process incarnation joins under its own name (`<stable name>.<nonce>`), so a
//! restarted pod is a new peer while its jobs stay keyed by the stable name. Peers are
//! dialled by one side only (the lexically smaller address dials the larger), at most one
//! dial per address at a time, retried every tick with jitter. A probe actor on every node
//! answers heartbeats; three missed heartbeats fence the peer (its session is stopped).
//!
//! Actors that other nodes reach are found through `ractor::pg` groups (versioned, e.g.
//! `jobs.v1:<node>`, `placement.v1`) and are spawned **without a registry name**: ractor
//! 0.16.5 gives a peer's stub of a named actor that name, and when the session ends the
//! stub's stop unregisters the name here, which would hide our own actor of that name.
//! ractor_cluster syncs a process group only for actors whose messages serialize, so the
//! role actors themselves (local messages, found by registry name) stay node-local. Leaving
//! a group reaches the actors that monitor it as `ProcessGroupChanged` events: the request
//! actor re-places the jobs whose host left `placement.v1`.

pub mod kube;
pub mod mesh;
pub mod pieces;
pub mod probe;
pub mod tls;

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorCell, RpcReplyPort};

/// How long a cross-node call may take.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a remote call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No session to the node (down, restarting, or fenced).
    #[error("node {0} is not reachable right now")]
    OwnerDown(String),
    /// No answer in time.
    #[error("node {0} did not answer in time")]
    Timeout(String),
}

/// Calls `cell`, an actor on `node`, waiting at most [`REMOTE_TIMEOUT`].
pub async fn call_actor<M: ractor::Message, T: Send + 'static>(
    cell: &ActorCell,
    node: &str,
    make: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, RemoteError> {
    match ractor::rpc::call::<M, T, _>(cell, make, Some(REMOTE_TIMEOUT)).await {
        Ok(CallResult::Success(answer)) => Ok(answer),
        Ok(CallResult::Timeout) => Err(RemoteError::Timeout(node.to_string())),
        _ => Err(RemoteError::OwnerDown(node.to_string())),
    }
}

/// The process group of every node's probe actor (versioned: a rolling upgrade never casts
/// to a mismatched message type).
pub const PROBE_GROUP: &str = "probe.v1";

/// This build's version, reported to peers.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A node's name for this process incarnation: the stable name plus a random suffix.
pub fn incarnation_name(stable: &str) -> String {
    let mut nonce = [0u8; 4];
    let _ = getrandom::fill(&mut nonce);
    let hex = hex::encode(nonce);
    format!("{stable}.{hex}")
}

/// The stable name inside an incarnation name (`stable.nonce`, or ractor's
/// `stable.nonce@host`).
pub fn stable_name(incarnation: &str) -> &str {
    let name = incarnation.split_once('@').map_or(incarnation, |(name, _)| name);
    name.rsplit_once('.').map_or(name, |(stable, _)| stable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnations_differ_and_keep_their_stable_name() {
        let (a, b) = (incarnation_name("node-a"), incarnation_name("node-a"));
        assert_ne!(a, b);
        assert_eq!(stable_name(&a), "node-a");
        assert_eq!(stable_name("mp4tomp3-0.ab12cd34"), "mp4tomp3-0");
        assert_eq!(stable_name("node-2.01a60f5f@127.0.0.2"), "node-2");
    }
}
