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
