//! The node supervisor restarts crashed actors and the service keeps working.
//!
//! Runs one node in this test process (ractor's registry is process-global, so this file
//! holds a single test) and kills its actors by name.

use std::time::Duration;

use crate::common::service::{ADMIN, JWT_SECRET, poll};
use clap::Parser;
use mp4tomp3::cli::{Cli, Command};
use mp4tomp3::config::Config;
use serde_json::Value;

fn actor_id(name: &str) -> Option<ractor::ActorId> {
    ractor::registry::where_is(name).map(|cell| cell.get_id())
}

/// Kills the actor registered as `name` and waits for its successor.
async fn kill_and_wait_for_restart(name: &str) {
    let cell = ractor::registry::where_is(name).unwrap_or_else(|| panic!("{name} runs"));
    let old = cell.get_id();
    cell.kill();
    poll(Duration::from_secs(10), "the restarted actor", || async move {
        actor_id(name).filter(|id| *id != old).map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_actors_are_restarted_and_the_service_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cli = Cli::try_parse_from([
        "mp4tomp3",
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--node-name",
        "solo",
        "--jwt-secret",
        JWT_SECRET,
        "--admin-email",
        ADMIN.0,
        "--admin-password",
        ADMIN.1,
    ])
    .unwrap();
    let Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let config = Config::from_args(*args).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(mp4tomp3::node::run(
        config,
        listener.into(),
        Box::pin(async move {
            let _ = stopped.await;
        }),
    ));
    let http = reqwest::Client::new();
    let login = || async {
        let r = http
            .post(format!("{base}/login"))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(r.text().await.ok()?)
    };
    let token = poll(Duration::from_secs(20), "the node to serve", login).await;

    for name in ["auth", "gateway", "notifier", "converter"] {
        kill_and_wait_for_restart(name).await;
        poll(Duration::from_secs(10), "login after a restart", login).await;
    }

    // Kill the request actor with a job in flight: the restarted actor resumes it.
    let input = crate::common::video(30);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(std::fs::read(&input).unwrap()).file_name("v.mp4"),
    );
    let job: Value = http
        .post(format!("{base}/upload"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    kill_and_wait_for_restart("request").await;
    let done = poll(Duration::from_secs(60), "the job to finish", || async {
        let job: Value = http
            .get(format!("{base}/v1/jobs/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (job["state"] == "done").then_some(job)
    })
    .await;
    assert_eq!(done["progress"], 1.0);
    let ready: Value = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true, "{ready}");

    stop.send(()).unwrap();
    node.await.unwrap().unwrap();
}
