use openraft::testing::{StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError};

use super::*;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write_logs(&e))?;
        let db = MetaDb::open(&dir.path().join("meta.db")).map_err(|e| StorageIOError::write_logs(&e))?;
        let (log, sm) = db.stores();
        Ok((dir, log, sm))
    }
}

/// openraft's own conformance suite for log stores and state machines.
#[test]
fn the_sqlite_store_passes_openrafts_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn claim(index: u64, email: &str, key: &str, job: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(Command::ClaimKey {
            email: email.into(),
            key: key.into(),
            job: job.into(),
            stale: None,
        }),
    }
}

#[tokio::test]
async fn the_first_claim_of_a_key_wins_survives_a_reopen_and_travels_in_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let (_, mut sm) = MetaDb::open(&path).unwrap().stores();
    let out = sm
        .apply([
            claim(1, "bob@example.com", "k1", "job-a"),
            claim(2, "bob@example.com", "k1", "job-b"),
            claim(3, "ann@example.com", "k1", "job-c"),
        ])
        .await
        .unwrap();
    let won = |job: &str| Outcome::Claimed { job: job.into() };
    assert_eq!(out, vec![won("job-a"), won("job-a"), won("job-c")]);

    // Reopened: the claims and the applied id are where they were.
    drop(sm);
    let (_, mut sm) = MetaDb::open(&path).unwrap().stores();
    assert_eq!(
        sm.claim("bob@example.com", "k1").await.unwrap().as_deref(),
        Some("job-a")
    );
    assert_eq!(sm.applied_state().await.unwrap().0.map(|l| l.index), Some(3));

    // A snapshot installed on another node gives it the same claims.
    let snapshot = sm.build_snapshot().await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let (_, mut there) = MetaDb::open(&other.path().join("meta.db")).unwrap().stores();
    there.apply([claim(1, "eve@example.com", "x", "stale")]).await.unwrap();
    there.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    assert_eq!(
        there.claim("ann@example.com", "k1").await.unwrap().as_deref(),
        Some("job-c")
    );
    assert_eq!(
        there.claim("eve@example.com", "x").await.unwrap(),
        None,
        "replaced, not merged"
    );
    let current = there.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
}
