//! Commits per second the metadata group (`src/meta/`) sustains on this machine, and the
//! latency of one commit, for a one-voter group and a three-voter group in one process
//! (their Raft messages go through the same actors as over the mesh, without the TCP hop).
//!
//! `cargo bench --bench meta_commits` (options: `-- --writes N --concurrency C`).

use std::time::{Duration, Instant};

use mp4tomp3::meta::{Command, Meta};

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

#[tokio::main]
async fn main() {
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
