use std::time::Duration;

use super::*;

/// The leader all `members` agree on, other than `not`.
async fn wait_for_leader(members: &[&Meta], not: Option<u64>) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leaders: Vec<Option<u64>> = members
            .iter()
            .map(|m| m.raft().metrics().borrow().current_leader)
            .collect();
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|l| *l == Some(*leader))
            && not != Some(*leader)
        {
            return *leader;
        }
        assert!(tokio::time::Instant::now() < deadline, "no common leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn claim(email: &str, key: &str, job: &str) -> Command {
    Command::ClaimKey {
        email: email.into(),
        key: key.into(),
        job: job.into(),
        stale: None,
    }
}

/// Three members in one process (their actors in the same process groups the mesh would
/// join): a leader is elected, writes from any member commit once, and after the leader
/// stops the other two elect another and go on, with every earlier claim kept.
#[tokio::test(flavor = "multi_thread")]
async fn three_members_elect_commit_from_anywhere_and_survive_the_leaders_loss() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = ["meta-t1", "meta-t2", "meta-t3"].map(String::from).to_vec();
    let mut members = Vec::new();
    for name in &names {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        members.push(Meta::start(name, &path, &names).await.unwrap());
    }
    let leader = wait_for_leader(&members.iter().collect::<Vec<_>>(), None).await;
    let won = |job: &str| Outcome::Claimed { job: job.into() };
    // From every member, leader or not: the first claim of a key wins everywhere.
    for (i, m) in members.iter().enumerate() {
        let job = format!("job-{i}");
        assert_eq!(
            m.write(claim("bob@example.com", "k", &job)).await.unwrap(),
            won("job-0")
        );
        assert_eq!(
            m.write(claim("bob@example.com", &format!("k{i}"), &job)).await.unwrap(),
            won(&job)
        );
    }
    // A job's entry, asked of the other members (a reader whose own replica may lag): each
    // finds it at once, and an unknown job nowhere.
    let entry = Listed {
        id: "n-0~job".into(),
        node: String::new(),
        owner_email: "bob@example.com".into(),
        created_at_ms: 1,
        key: None,
        record: "{}".into(),
        state: "queued".into(),
        seq: 0,
        bytes: 0,
        ended_at_ms: None,
    };
    let publish = Command::Publish {
        node: "n-0".into(),
        put: vec![entry],
        gone: Vec::new(),
        only_new: true,
    };
    members[2].write(publish).await.unwrap();
    for m in &members {
        let found = m.listed_elsewhere("n-0~job").await.expect("another member has it");
        assert_eq!((found.node.as_str(), found.state.as_str()), ("n-0", "queued"));
        assert!(m.listed_elsewhere("n-0~none").await.is_none());
    }
    // The leader goes; the two others elect one of themselves and keep every claim.
    let (gone, rest): (Vec<&Meta>, Vec<&Meta>) = members.iter().partition(|m| m.raft().metrics().borrow().id == leader);
    gone[0].stop().await;
    wait_for_leader(&rest, Some(leader)).await;
    assert_eq!(
        rest[0].write(claim("ann@example.com", "k", "job-9")).await.unwrap(),
        won("job-9")
    );
    assert_eq!(
        rest[1].write(claim("bob@example.com", "k", "job-x")).await.unwrap(),
        won("job-0")
    );
    for m in &rest {
        // Each replica has applied what was committed (wait for the follower to apply).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while m.claim("ann@example.com", "k").await.unwrap().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "not applied here");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 0..3 {
            let job = format!("job-{i}");
            assert_eq!(m.claim("bob@example.com", &format!("k{i}")).await.unwrap(), Some(job));
        }
    }
    for m in &rest {
        m.stop().await;
    }
}

/// A one-node group grows to three voters as nodes appear (learners first, promoted once
/// caught up), and then survives the loss of the first node.
#[tokio::test(flavor = "multi_thread")]
async fn a_one_voter_group_grows_to_three_voters_and_then_loses_its_first() {
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str, voters: &[&str]| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        let (name, voters) = (
            name.to_string(),
            voters.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        );
        async move { Meta::start(&name, &path, &voters).await.unwrap() }
    };
    let first = start("grow-0", &["grow-0"]).await;
    wait_for_leader(&[&first], None).await;
    first.write(claim("bob@example.com", "before", "job-0")).await.unwrap();
    // Two more nodes start with an empty log; they are not voters of the first
    // membership, so they wait to be added.
    let second = start("grow-1", &["grow-0"]).await;
    let third = start("grow-2", &["grow-0"]).await;
    let wanted: Vec<String> = ["grow-0", "grow-1", "grow-2"].map(String::from).to_vec();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while first.voters().len() < 3 {
        first.reconcile(&wanted).await.unwrap();
        assert!(tokio::time::Instant::now() < deadline, "voters: {:?}", first.voters());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!first.reconcile(&wanted).await.unwrap(), "nothing left to change");
    // The first node goes: the two others elect a leader and have every claim.
    let leader = first.raft().metrics().borrow().id;
    first.stop().await;
    let rest = [&second, &third];
    wait_for_leader(&rest, Some(leader)).await;
    let won = |job: &str| Outcome::Claimed { job: job.into() };
    assert_eq!(
        third.write(claim("bob@example.com", "before", "job-x")).await.unwrap(),
        won("job-0")
    );
    assert_eq!(
        second.write(claim("bob@example.com", "after", "job-1")).await.unwrap(),
        won("job-1")
    );
    for m in rest {
        m.stop().await;
    }
}

/// A learner costs the leader a heartbeat a second, not one every 150 ms and one per commit
/// (LEARNER_HEARTBEAT), and still has each committed entry applied right after its append.
#[tokio::test(flavor = "multi_thread")]
async fn a_learner_is_heartbeaten_once_a_second_fed_in_batches_and_hurried_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        let name = name.to_string();
        async move { Meta::start(&name, &path, &["hb-0".to_string()]).await.unwrap() }
    };
    let first = start("hb-0").await;
    wait_for_leader(&[&first], None).await;
    let mut members = vec![first];
    for i in 1..4 {
        members.push(start(&format!("hb-{i}")).await);
    }
    let wanted: Vec<String> = (0..4).map(|i| format!("hb-{i}")).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while members[0].voters().len() < membership::VOTERS || members[0].reconcile(&wanted).await.unwrap() {
        members[0].reconcile(&wanted).await.unwrap();
        assert!(tokio::time::Instant::now() < deadline, "{:?}", members[0].status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = members[0].status();
    assert_eq!(status.learners.len(), 1, "{status:?}");
    let learner = &members[wanted.iter().position(|n| status.learners.contains(n)).unwrap()];
    let voter = &members[wanted
        .iter()
        .position(|n| status.voters.contains(n) && Some(n) != status.leader.as_ref())
        .unwrap()];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (l0, v0) = (learner.appends_received(), voter.appends_received());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (l1, v1) = (learner.appends_received(), voter.appends_received());
    // 150 ms heartbeats: 20 in 3 s; a learner gets about 3.
    assert!(v1 - v0 >= 8, "a voter got {} heartbeats in 3 s", v1 - v0);
    assert!(l1 - l0 <= 5, "a learner got {} heartbeats in 3 s", l1 - l0);
    // A write reaches the learner's state machine with its first append (the commit rides
    // along): well before the next heartbeat a second later.
    for i in 0..5 {
        let before = learner.appends_received();
        members[0]
            .write(claim("ann@example.com", &format!("hb{i}"), &format!("job-{i}")))
            .await
            .unwrap();
        let index = members[0].status().applied;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while learner.status().applied < index {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the learner did not apply entry {index} in 500 ms"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            learner.appends_received() - before <= 2,
            "more than one append for one write"
        );
    }
    // Writes back to back reach a learner in batches (LEARNER_BATCH), the voters one by one.
    let (l0, v0) = (learner.appends_received(), voter.appends_received());
    for i in 0..40 {
        members[0]
            .write(claim("ann@example.com", &format!("burst{i}"), &format!("job-b{i}")))
            .await
            .unwrap();
    }
    // A reader at the learner that must see every acknowledged write (Raft's read index)
    // sees the last of them: the leader sends it what it lacks.
    let index = members[0].status().applied;
    learner.fresh().await.unwrap();
    assert!(learner.status().applied >= index, "{:?}", learner.status());
    let (l1, v1) = (learner.appends_received(), voter.appends_received());
    assert!(v1 - v0 >= 40, "a voter got {} appends for 40 writes", v1 - v0);
    assert!(l1 - l0 <= 10, "a learner got {} appends for 40 writes", l1 - l0);
    let name = &wanted[members.iter().position(|m| std::ptr::eq(m, learner)).unwrap()];
    let leader = &members[wanted.iter().position(|n| status.leader.as_ref() == Some(n)).unwrap()];
    assert!(
        leader.wanted_by(name) >= index,
        "the leader was not told what the learner's reader waits for"
    );
    for m in &members {
        m.stop().await;
    }
}

/// One command of each kind (and each user change), as this version writes them.
fn every_command() -> Vec<Command> {
    use crate::store::Quota;
    use users::UserOp;
    let listed = Listed {
        id: "n-0~a".into(),
        node: "n-0".into(),
        owner_email: "bob@example.com".into(),
        created_at_ms: 1_700_000_000_000,
        key: Some("k".into()),
        record: "{}".into(),
        state: "queued".into(),
        seq: 3,
        bytes: 10,
        ended_at_ms: None,
    };
    let admission = Admission {
        id: "n-0~a".into(),
        email: "bob@example.com".into(),
        node: "n-0".into(),
        entry: Some(listed.clone()),
        bytes: 10,
        limits: Some(Quota {
            max_active: Some(2),
            max_jobs_per_day: None,
            max_stored_bytes: Some(1000),
        }),
        at_ms: 1_700_000_000_001,
    };
    let user = |op| Command::User {
        email: "bob@example.com".into(),
        op,
        at_ms: 1_700_000_000_002,
    };
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string();
    vec![
        claim("bob@example.com", "k", "n-0~a"),
        Command::ReleaseKey {
            email: "bob@example.com".into(),
            key: "k".into(),
            job: "n-0~a".into(),
        },
        Command::Publish {
            node: "n-0".into(),
            put: vec![listed],
            gone: vec!["n-0~b".into()],
            only_new: true,
        },
        user(UserOp::Add {
            password_hash: hash.clone(),
            admin: false,
        }),
        user(UserOp::Put {
            password_hash: hash.clone(),
            admin: true,
        }),
        user(UserOp::SetPassword { password_hash: hash }),
        user(UserOp::Remove),
        user(UserOp::SignOut {
            sid: "s1".into(),
            until_ms: 1_700_000_003_600,
        }),
        user(UserOp::SetQuota(Quota::default())),
        user(UserOp::SetAdmin(true)),
        user(UserOp::SetWebhook {
            url: Some("https://hooks.example.com/x".into()),
            events: vec!["job.done".into()],
            secret_if_none: Some("whsec".into()),
        }),
        user(UserOp::SetSecret("whsec2".into())),
        Command::Admit(admission.clone()),
        Command::KeyedAdmit {
            key: "k".into(),
            stale: Some("n-1~old".into()),
            admission,
        },
        Command::Copied {
            id: "n-0~a".into(),
            node: "n-1".into(),
        },
    ]
}

/// The upgrade contract for the replicated log: what an earlier version wrote
/// (`tests/fixtures/meta-log-v1.jsonl`, one command per line, never edited) is read by this
/// one as the same commands, and this one writes those commands the same way. A change that
/// breaks either fails here; a new kind of command is added to the file (and, until every
/// pod runs a version that reads it, must not be written: README "Operating on Kubernetes").
#[test]
fn the_log_written_by_earlier_versions_reads_the_same() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/meta-log-v1.jsonl");
    let ours: Vec<String> = every_command()
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    let written = std::fs::read_to_string(fixture).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), ours.len(), "one line per command kind");
    for (line, (ours, command)) in lines.iter().zip(ours.iter().zip(every_command())) {
        let read: Command = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(read, command, "{line}");
        assert_eq!(line, ours, "this version writes it as before");
    }
}
