//! Replicated metadata: the cluster's small, important state in one Raft group
//! (`openraft`), so that it survives any one pod and reads the same everywhere.
//!
//! - [`store`]: the Raft log, the vote and the state machine in one SQLite file per node
//!   (`DATA/meta.db`, `synchronous=FULL`), snapshots built from its tables.
//!
//! What the state machine holds grows command by command ([`Command`]); today:
//! Idempotency-Key claims (user + key → job id, the first claim wins).

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub mod store;

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
    },
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
}
