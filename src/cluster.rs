//! The actor cluster: ractor_cluster sessions between nodes, static discovery, and our own
//! failure detection (ractor_cluster has none; see `../shared/CLUSTER-NOTES.md`).
//!
//! Each process incarnation joins under its own name (`<stable name>.<nonce>`), so a
//! restarted pod is a new peer while its jobs stay keyed by the stable name. Peers are
//! dialled by one side only (the lexically smaller address dials the larger), at most one
//! dial per address at a time, retried every tick with jitter. A probe actor on every node
//! answers heartbeats; three missed heartbeats fence the peer (its session is stopped).

pub mod jobs;
pub mod kube;
pub mod probe;
pub mod users;

/// The process group of every node's probe actor (versioned: a rolling upgrade never casts
/// to a mismatched message type).
pub const PROBE_GROUP: &str = "probe.v1";

/// This build's version, reported to peers.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A node's name for this process incarnation: the stable name plus a random suffix.
pub fn incarnation_name(stable: &str) -> String {
    let mut nonce = [0u8; 4];
    let _ = getrandom::fill(&mut nonce);
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
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
