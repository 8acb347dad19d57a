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
        bytes: if state == "done" { 500 } else { 0 },
        ended_at_ms: (state == "done").then_some(2),
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
    let listed = |not: &'static str, limit: u32| {
        let sm = sm.clone();
        async move {
            let found = sm.list(Some("bob@example.com"), not, limit).await.unwrap();
            found.into_iter().map(|l| l.id).collect::<Vec<String>>()
        }
    };
    assert_eq!(listed("", 10).await.len(), 2);
    // A node's own jobs are left out before the limit (it lists them itself): n-1 is
    // given j1 even when asking for one job, though j2 (its own) is newer.
    assert_eq!(listed("n-1", 1).await, ["j1"]);
    assert_eq!(listed("n-0", 1).await, ["j2"]);

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

#[tokio::test]
async fn users_change_in_log_order_reach_the_memory_view_at_once_and_travel_in_a_snapshot() {
    use crate::meta::users::{Refusal, UserOp};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let db = MetaDb::open(&path).unwrap();
    let (_, mut sm) = db.stores();
    let view = sm.users();
    let user = |email: &str, op: UserOp, at_ms: i64| Command::User {
        email: email.into(),
        op,
        at_ms,
    };
    let add = |hash: &str| UserOp::Add {
        password_hash: hash.into(),
        admin: false,
    };
    let out = sm
        .apply([
            entry(1, user("ann@x.test", add("h1"), 1_000)),
            entry(2, user("ann@x.test", add("h2"), 2_000)),
            // Proposed by a node whose clock is an hour behind: still applied in log order.
            entry(
                3,
                user(
                    "ann@x.test",
                    UserOp::SetPassword {
                        password_hash: "h3".into(),
                    },
                    1_000 - 3_600_000,
                ),
            ),
            entry(4, user("bob@x.test", UserOp::Remove, 4_000)),
        ])
        .await
        .unwrap();
    assert!(matches!(&out[0], Outcome::User(Ok(u)) if u.token_gen == 0));
    assert_eq!(out[1], Outcome::User(Err(Refusal::Exists)));
    assert!(matches!(&out[2], Outcome::User(Ok(u)) if u.token_gen == 1 && u.password_hash == "h3"));
    assert_eq!(out[3], Outcome::User(Err(Refusal::NoSuchUser)));
    let ann = view.get("ann@x.test").expect("in memory once applied");
    assert_eq!((ann.token_gen, ann.password_hash.as_str()), (1, "h3"));
    assert!(view.get("bob@x.test").is_none());
    let since = sm.users_since(0, 10).await.unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].1, 3, "the index of its last change");
    assert!(sm.users_since(3, 10).await.unwrap().is_empty());

    // Reopened: the view is loaded from the file.
    drop((sm, db));
    let (_, mut sm) = MetaDb::open(&path).unwrap().stores();
    assert_eq!(sm.users().get("ann@x.test").unwrap().token_gen, 1);
    sm.apply([entry(5, user("ann@x.test", UserOp::Remove, 5_000))])
        .await
        .unwrap();

    // Another member installs a snapshot: its view is replaced (a user it had that the
    // snapshot does not is gone, the tombstone is there).
    let other = tempfile::tempdir().unwrap();
    let (_, mut there) = MetaDb::open(&other.path().join("meta.db")).unwrap().stores();
    there
        .apply([entry(1, user("cid@x.test", add("h"), 1_000))])
        .await
        .unwrap();
    let snapshot = sm.build_snapshot().await.unwrap();
    there.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    let view = there.users();
    assert!(view.get("cid@x.test").is_none());
    let ann = view.get("ann@x.test").unwrap();
    assert!(ann.removed && ann.token_gen == 2);
    assert_eq!(there.users_since(0, 10).await.unwrap()[0].1, 5);
}

fn admit(id: &str, bytes: i64, limits: crate::store::Quota, at_ms: i64) -> Command {
    Command::Admit(Admission {
        id: id.into(),
        email: "bob@example.com".into(),
        node: "n-0".into(),
        entry: None,
        bytes,
        limits: Some(limits),
        at_ms,
    })
}

/// The quota counters: admissions are checked in log order against what is committed
/// (unfinished jobs, the day's creations, bytes), a retried admission is admitted again, an
/// ended job holds its MP3's bytes, a gone one nothing but still counts for its day, the
/// counters travel in a snapshot, and a removed user's go with them.
#[tokio::test]
async fn admissions_count_in_log_order_and_free_as_jobs_end_or_go() {
    use super::super::quota::Over;
    use crate::store::Quota;
    let dir = tempfile::tempdir().unwrap();
    let (_, mut sm) = MetaDb::open(&dir.path().join("meta.db")).unwrap().stores();
    let hour = 3_600_000;
    let t = 100 * 24 * hour;
    let active = Quota {
        max_active: Some(2),
        ..Quota::default()
    };
    let refused = |o: &Outcome| match o {
        Outcome::Admitted(Err(Over { limit, .. })) => limit.clone(),
        other => format!("admitted: {other:?}"),
    };
    let out = sm
        .apply([
            entry(1, admit("a1", 1000, active, t)),
            entry(2, admit("a2", 1000, active, t)),
            entry(3, admit("a3", 1000, active, t)),
            entry(4, admit("a1", 1000, active, t)),
        ])
        .await
        .unwrap();
    assert_eq!(out[0], Outcome::Admitted(Ok(())));
    assert_eq!(out[1], Outcome::Admitted(Ok(())));
    assert_eq!(refused(&out[2]), "max_active", "the third of two at once");
    assert_eq!(out[3], Outcome::Admitted(Ok(())), "a retried admission");
    let used = sm.used("bob@example.com", t).await.unwrap();
    assert_eq!((used.active, used.jobs_today, used.stored_bytes), (2, 2, 2000));

    // a1 ends (its MP3: 500 bytes), a2 is deleted: one place and 1500 bytes free; both
    // still count for the day.
    let mut a1 = job("a1", "done", None);
    a1.created_at_ms = t;
    sm.apply([
        entry(5, publish("n-0", vec![a1], &[], false)),
        entry(6, publish("n-0", vec![], &["a2"], false)),
    ])
    .await
    .unwrap();
    let used = sm.used("bob@example.com", t).await.unwrap();
    assert_eq!((used.active, used.jobs_today, used.stored_bytes), (0, 2, 500));
    assert_eq!(used.first_end_ms, Some(2));

    let day = Quota {
        max_jobs_per_day: Some(3),
        max_stored_bytes: Some(2000),
        ..Quota::default()
    };
    let out = sm
        .apply([
            entry(7, admit("a4", 1500, day, t + hour)),
            entry(8, admit("a5", 0, day, t + hour)),
            entry(9, admit("a6", 0, day, t + 25 * hour)),
        ])
        .await
        .unwrap();
    assert_eq!(out[0], Outcome::Admitted(Ok(())), "500 + 1500 fits 2000");
    assert_eq!(refused(&out[1]), "max_jobs_per_day");
    assert_eq!(
        out[2],
        Outcome::Admitted(Ok(())),
        "a day later the first two no longer count"
    );
    let over_bytes = sm.apply([entry(10, admit("a7", 1, day, t + 25 * hour))]).await.unwrap();
    assert_eq!(refused(&over_bytes[0]), "max_stored_bytes");

    // A snapshot carries the counters.
    let snapshot = sm.build_snapshot().await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let (_, mut there) = MetaDb::open(&other.path().join("meta.db")).unwrap().stores();
    there.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    assert_eq!(
        there.used("bob@example.com", t + 25 * hour).await.unwrap(),
        sm.used("bob@example.com", t + 25 * hour).await.unwrap()
    );

    // The user removed: nothing of theirs counts any more.
    let user = |op| Command::User {
        email: "bob@example.com".into(),
        op,
        at_ms: t,
    };
    let add = crate::meta::users::UserOp::Add {
        password_hash: "$argon2id$x".into(),
        admin: false,
    };
    sm.apply([
        entry(11, user(add)),
        entry(12, user(crate::meta::users::UserOp::Remove)),
    ])
    .await
    .unwrap();
    let used = sm.used("bob@example.com", t + 25 * hour).await.unwrap();
    assert_eq!(
        (used.active, used.jobs_today, used.stored_bytes),
        (0, 0, 0),
        "a removed user's counters: {used:?}"
    );
}

/// A keyed submission's one entry: the first claims its key and is admitted and listed; a
/// second of the same key admits nothing and learns the first; a refused admission leaves
/// the key free; a retry of the winner is admitted again; a stale holder is taken over.
#[tokio::test]
async fn a_keyed_admission_claims_admits_and_lists_in_one_entry_or_does_nothing() {
    use crate::store::Quota;
    let dir = tempfile::tempdir().unwrap();
    let (_, mut sm) = MetaDb::open(&dir.path().join("meta.db")).unwrap().stores();
    let t = 100 * 24 * 3_600_000;
    let one = Quota {
        max_active: Some(1),
        ..Quota::default()
    };
    let keyed = |id: &str, key: &str, stale: Option<&str>| Command::KeyedAdmit {
        key: key.into(),
        stale: stale.map(str::to_string),
        admission: Admission {
            id: id.into(),
            email: "bob@example.com".into(),
            node: "n-0".into(),
            entry: Some(job(id, "queued", Some(key))),
            bytes: 10,
            limits: Some(one),
            at_ms: t,
        },
    };
    let out = sm
        .apply([
            entry(1, keyed("j1", "k1", None)),
            entry(2, keyed("j2", "k1", None)),
            entry(3, keyed("j3", "k2", None)),
            entry(4, keyed("j1", "k1", None)),
        ])
        .await
        .unwrap();
    assert_eq!(out[0], Outcome::Admitted(Ok(())));
    assert_eq!(
        out[1],
        Outcome::Claimed { job: "j1".into() },
        "the key's holder answers"
    );
    assert!(
        matches!(&out[2], Outcome::Admitted(Err(_))),
        "over max_active: {:?}",
        out[2]
    );
    assert_eq!(out[3], Outcome::Admitted(Ok(())), "a retried entry");
    assert_eq!(sm.claim("bob@example.com", "k1").await.unwrap().as_deref(), Some("j1"));
    assert_eq!(
        sm.claim("bob@example.com", "k2").await.unwrap(),
        None,
        "refused: key left free"
    );
    assert!(sm.listed("j1").await.unwrap().is_some());
    assert!(sm.listed("j2").await.unwrap().is_none() && sm.listed("j3").await.unwrap().is_none());
    let used = sm.used("bob@example.com", t).await.unwrap();
    assert_eq!((used.active, used.stored_bytes), (1, 10), "only j1 counts");

    // j1 goes; a claim it still held (left behind) is taken over by naming it stale, and
    // naming a job that does not hold the key takes nothing.
    sm.apply([entry(
        5,
        Command::ReleaseKey {
            email: "bob@example.com".into(),
            key: "k1".into(),
            job: "nobody".into(),
        },
    )])
    .await
    .unwrap();
    sm.apply([entry(6, publish("n-0", vec![], &["j1"], false))])
        .await
        .unwrap();
    sm.apply([entry(
        7,
        Command::ClaimKey {
            email: "bob@example.com".into(),
            key: "k3".into(),
            job: "gone".into(),
            stale: None,
        },
    )])
    .await
    .unwrap();
    let out = sm
        .apply([
            entry(8, keyed("j4", "k3", Some("other"))),
            entry(9, keyed("j5", "k3", Some("gone"))),
        ])
        .await
        .unwrap();
    assert_eq!(out[0], Outcome::Claimed { job: "gone".into() });
    assert_eq!(out[1], Outcome::Admitted(Ok(())));
    assert_eq!(sm.claim("bob@example.com", "k3").await.unwrap().as_deref(), Some("j5"));
}

/// Log entries written before `Admission` existed (a struct variant) read the same.
#[test]
fn an_admission_reads_as_the_log_has_always_written_it() {
    let old =
        r#"{"Admit":{"id":"j","email":"bob@example.com","node":"n-0","entry":null,"bytes":7,"limits":null,"at_ms":5}}"#;
    let command: Command = serde_json::from_str(old).unwrap();
    let Command::Admit(a) = &command else {
        panic!("{command:?}")
    };
    assert_eq!((a.id.as_str(), a.bytes, a.at_ms), ("j", 7, 5));
    assert_eq!(serde_json::to_string(&command).unwrap(), old);
    let keyed = Command::KeyedAdmit {
        key: "k".into(),
        stale: None,
        admission: a.clone(),
    };
    let wire = serde_json::to_string(&keyed).unwrap();
    assert!(
        wire.starts_with(r#"{"KeyedAdmit":{"key":"k","stale":null,"id":"j","#),
        "{wire}"
    );
    assert_eq!(serde_json::from_str::<Command>(&wire).unwrap(), keyed);
}

/// The in-memory tail of the log answers only ranges it holds whole, and follows appends
/// that overwrite (after a truncation), gaps (after a snapshot), truncation and purge.
#[test]
fn the_recent_entries_answer_only_what_they_hold_whole() {
    let mut recent = Recent::default();
    let ids = |v: Option<Vec<Entry<TypeConfig>>>| v.map(|v| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>());
    assert_eq!(ids(recent.get(1, 2)), None);
    recent.push(&(1..=5).map(|i| claim(i, "a@x", "k", "j")).collect::<Vec<_>>());
    assert_eq!(ids(recent.get(2, 5)), Some(vec![2, 3, 4]));
    assert_eq!(ids(recent.get(1, 6)), Some(vec![1, 2, 3, 4, 5]));
    assert_eq!(ids(recent.get(0, 3)), None, "index 0 was never here");
    assert_eq!(ids(recent.get(4, 7)), None, "6 is not appended yet");
    // An append from index 4 replaces 4 and 5 (a new leader's entries).
    recent.push(&[claim(4, "b@x", "k", "j2")]);
    assert_eq!(ids(recent.get(1, 5)), Some(vec![1, 2, 3, 4]));
    assert_eq!(ids(recent.get(5, 6)), None);
    let replaced = recent.get(4, 5).unwrap();
    assert!(matches!(&replaced[0].payload, EntryPayload::Normal(Command::ClaimKey { email, .. }) if email == "b@x"));
    recent.truncate(3);
    assert_eq!(ids(recent.get(1, 3)), Some(vec![1, 2]));
    assert_eq!(ids(recent.get(3, 4)), None);
    recent.purge(1);
    assert_eq!(ids(recent.get(1, 3)), None);
    assert_eq!(ids(recent.get(2, 3)), Some(vec![2]));
    // A gap (entries after an installed snapshot) starts again from the new entries.
    recent.push(&[claim(10, "c@x", "k", "j3")]);
    assert_eq!(ids(recent.get(2, 3)), None);
    assert_eq!(ids(recent.get(10, 11)), Some(vec![10]));
    for i in 11..(11 + Recent::KEEP as u64) {
        recent.push(&[claim(i, "c@x", "k", "j3")]);
    }
    assert_eq!(recent.entries.len(), Recent::KEEP);
    assert_eq!(ids(recent.get(10, 11)), None, "the oldest went");
}
