//! Commits per second the metadata group (`src/meta/`) sustains on this machine, and the
//! latency of one commit, for a one-voter group and a three-voter group in one process
//! (their Raft messages go through the same actors as over the mesh, without the TCP hop).
//!
//! `cargo bench --bench meta_commits` (options: `-- --writes N --concurrency C`).
//!
//! `-- --catch-up JOBS`: instead, three voters hold a directory of JOBS jobs (records of
//! the size a real job's has), take a snapshot and purge their logs; then a fourth, empty
//! member is added as a learner, and the time until it has applied everything (from the
//! snapshot, as a new pod would) is printed.

use std::time::{Duration, Instant};

use mp4tomp3::meta::{Command, Listed, Meta};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn leader(members: &[Meta]) -> Meta {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for m in members {
            let metrics = m.raft().metrics().borrow().clone();
            if metrics.current_leader == Some(metrics.id) {
                return m.clone();
            }
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A new member catching up from a snapshot of a directory of `jobs` jobs.
async fn catch_up(jobs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..3).map(|i| format!("catch-{i}")).collect();
    let mut members = Vec::new();
    for name in &names {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        members.push(Meta::start(name, &path, &names).await.unwrap());
    }
    let leader = leader(&members).await;
    let filled = Instant::now();
    for batch in 0..jobs.div_ceil(256) {
        let put = (batch * 256..((batch + 1) * 256).min(jobs))
            .map(|i| Listed {
                id: format!("catch-0~{i:024x}"),
                node: String::new(),
                owner_email: format!("user{}@example.com", i % 100),
                created_at_ms: 1_700_000_000_000 + i as i64,
                key: None,
                // About what a done job's record weighs (its JobView, base64).
                record: "x".repeat(280),
                state: "done".into(),
                seq: 0,
                bytes: 200_000,
                ended_at_ms: Some(1_700_000_000_000 + i as i64),
            })
            .collect();
        let command = Command::Publish {
            node: "catch-0".into(),
            put,
            gone: Vec::new(),
            only_new: false,
        };
        leader.write(command).await.unwrap();
    }
    let filling = filled.elapsed();
    leader.raft().trigger().snapshot().await.unwrap();
    let last = leader.raft().metrics().borrow().last_log_index.unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while leader.raft().metrics().borrow().snapshot.is_none_or(|s| s.index < last) {
        assert!(Instant::now() < deadline, "no snapshot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    leader.raft().trigger().purge_log(last).await.unwrap();
    let new = dir.path().join("catch-3");
    std::fs::create_dir_all(&new).unwrap();
    let learner = Meta::start("catch-3", &new, &[]).await.unwrap();
    let started = Instant::now();
    let mut wanted = names.clone();
    wanted.push("catch-3".into());
    leader.reconcile(&wanted).await.unwrap();
    learner
        .raft()
        .wait(Some(Duration::from_secs(300)))
        .applied_index_at_least(Some(last), "caught up")
        .await
        .unwrap();
    let took = started.elapsed();
    let listed = learner.list(None, "", u32::MAX).await.unwrap().len();
    assert_eq!(listed, jobs, "the learner has every job");
    println!(
        "{jobs} jobs: filled in {:.1} s; a new member caught up from the snapshot in {:.2} s",
        filling.as_secs_f64(),
        took.as_secs_f64()
    );
    learner.stop().await;
    for m in &members {
        m.stop().await;
    }
}

#[tokio::main]
async fn main() {
    let jobs = arg("--catch-up", 0);
    if jobs > 0 {
        catch_up(jobs).await;
        return;
    }
    let writes = arg("--writes", 5000);
    let concurrency = arg("--concurrency", 32);
    println!("members  writes  concurrency  seconds  commits/s  p50 ms  p99 ms");
    for size in [1usize, 3] {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..size).map(|i| format!("bench-{size}-{i}")).collect();
        let mut members = Vec::new();
        for name in &names {
            let path = dir.path().join(name);
            std::fs::create_dir_all(&path).unwrap();
            members.push(Meta::start(name, &path, &names).await.unwrap());
        }
        let leader = leader(&members).await;
        let started = Instant::now();
        let per_task = writes / concurrency;
        let tasks = (0..concurrency).map(|t| {
            let leader = leader.clone();
            tokio::spawn(async move {
                let mut took = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let command = Command::ClaimKey {
                        email: format!("user{t}@example.com"),
                        key: format!("key-{i}"),
                        job: format!("job-{t}-{i}"),
                        stale: None,
                    };
                    let at = Instant::now();
                    leader.write(command).await.unwrap();
                    took.push(at.elapsed());
                }
                took
            })
        });
        let mut took: Vec<Duration> = Vec::new();
        for t in futures_util::future::join_all(tasks).await {
            took.extend(t.unwrap());
        }
        let seconds = started.elapsed().as_secs_f64();
        took.sort();
        println!(
            "{size:>7}  {:>6}  {concurrency:>11}  {seconds:>7.2}  {:>9.0}  {:>6.2}  {:>6.2}",
            took.len(),
            took.len() as f64 / seconds,
            percentile(&took, 0.5).as_secs_f64() * 1000.0,
            percentile(&took, 0.99).as_secs_f64() * 1000.0,
        );
        for m in &members {
            m.stop().await;
        }
    }
}
