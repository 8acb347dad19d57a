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

fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(command),
    }
}

fn job(id: &str, state: &str, key: Option<&str>) -> Listed {
    Listed {
        id: id.into(),
        node: String::new(),
        owner_email: "bob@example.com".into(),
        created_at_ms: 1,
        key: key.map(str::to_string),
        record: format!("record of {id} {state}"),
        state: state.into(),
        seq: 0,
    }
}

fn publish(node: &str, put: Vec<Listed>, gone: &[&str], only_new: bool) -> Command {
    Command::Publish {
        node: node.into(),
        put,
        gone: gone.iter().map(|g| g.to_string()).collect(),
        only_new,
    }
}

/// The directory: a node's publication adds and replaces its jobs (and claims their keys);
/// an announcement of a new job never overwrites a later state; only the node that has a
/// job removes it, which frees its key and drops its copies; a copy is recorded only for a
/// job in the directory; claims are released and taken over only from the job named.
#[tokio::test]
async fn the_directory_claims_and_copies_follow_their_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut sm) = MetaDb::open(&dir.path().join("meta.db")).unwrap().stores();
    sm.apply([
        entry(1, publish("n-0", vec![job("j1", "queued", Some("k1"))], &[], false)),
        entry(2, publish("n-0", vec![job("j1", "done", None)], &[], false)),
        entry(3, publish("n-0", vec![job("j1", "queued", None)], &[], true)),
        entry(4, publish("n-1", vec![job("j2", "done", None)], &[], false)),
        entry(
            5,
            Command::Copied {
                id: "j1".into(),
                node: "n-1".into(),
            },
        ),
        entry(
            6,
            Command::Copied {
                id: "nope".into(),
                node: "n-1".into(),
            },
        ),
    ])
    .await
    .unwrap();
    let j1 = sm.listed("j1").await.unwrap().unwrap();
    assert_eq!((j1.node.as_str(), j1.state.as_str(), j1.seq), ("n-0", "done", 2));
    assert_eq!(sm.claim("bob@example.com", "k1").await.unwrap().as_deref(), Some("j1"));
    assert_eq!(sm.copies("j1").await.unwrap(), ["n-1"]);
    assert!(sm.copies("nope").await.unwrap().is_empty());
    assert_eq!(sm.uncopied("n-1", 1).await.unwrap(), 1, "j2 has no copy");
    assert_eq!(sm.uncopied("n-0", 1).await.unwrap(), 0);
    let done: Vec<String> = sm.done_since(2, 10).await.unwrap().into_iter().map(|l| l.id).collect();
    assert_eq!(done, ["j2"]);
    let listed: Vec<String> = sm
        .list(Some("bob@example.com"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(listed.len(), 2);

    // Another node's removal of j1 changes nothing; its own removes it, its key, its copies.
    sm.apply([entry(7, publish("n-1", vec![], &["j1"], false))])
        .await
        .unwrap();
    assert!(sm.listed("j1").await.unwrap().is_some());
    sm.apply([entry(8, publish("n-0", vec![], &["j1"], false))])
        .await
        .unwrap();
    assert!(sm.listed("j1").await.unwrap().is_none());
    assert_eq!(sm.claim("bob@example.com", "k1").await.unwrap(), None);
    assert!(sm.copies("j1").await.unwrap().is_empty());

    // Release and take-over are compare-and-set on the job.
    let claim_of = |job: &str, stale: Option<&str>| Command::ClaimKey {
        email: "ann@example.com".into(),
        key: "k".into(),
        job: job.into(),
        stale: stale.map(str::to_string),
    };
    let release = |job: &str| Command::ReleaseKey {
        email: "ann@example.com".into(),
        key: "k".into(),
        job: job.into(),
    };
    let out = sm
        .apply([
            entry(9, claim_of("a", None)),
            entry(10, claim_of("b", Some("x"))),
            entry(11, release("b")),
            entry(12, claim_of("c", Some("a"))),
            entry(13, release("c")),
            entry(14, claim_of("d", None)),
        ])
        .await
        .unwrap();
    let won = |job: &str| Outcome::Claimed { job: job.into() };
    assert_eq!(
        out,
        vec![won("a"), won("a"), Outcome::None, won("c"), Outcome::None, won("d")]
    );
}
