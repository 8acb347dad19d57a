//! A full data volume (issue: hostile clients and full disks), on a small tmpfs mounted by
//! the test (CI runs as root): new files are refused with 507 under the reserve, what was
//! accepted is kept, done jobs still download, deletes free space, a conversion that runs
//! out of space waits for room instead of failing, and the free space is reported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::api::Api;
use crate::common::service::{ADMIN, Node, poll};
use reqwest::StatusCode;

/// A tmpfs of `mib` MiB at `at`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount(8)");
        assert!(status.success(), "mounting a tmpfs needs root (CI runs as root)");
        Tmpfs(at.to_path_buf())
    }

    fn free(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.0).unwrap();
        stat.f_bavail * stat.f_frsize
    }

    /// Fills the volume until `leave` bytes are free, in `filler` (replacing it).
    fn fill_to(&self, leave: u64) -> PathBuf {
        let filler = self.0.join("filler");
        let _ = std::fs::remove_file(&filler);
        let size = self.free().saturating_sub(leave);
        std::fs::write(&filler, vec![7u8; size as usize]).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_volume_refuses_new_files_keeps_the_old_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Tmpfs::mount(&dir.path().join("vol"), 48);
    let data = volume.0.join("data");
    const RESERVE: u64 = 8 << 20;
    let reserve = RESERVE.to_string();
    let node = Node::start(&data, &["--min-free-bytes", &reserve, "--converter-slots", "1"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let input = crate::common::tone("storage.m4a", 440, 22_050, 3.0, 1, &["-c:a", "aac"]);
    let done = api.upload(&token, &input).await;
    let done_id = done["id"].as_str().unwrap().to_string();
    assert_eq!(api.finished(&token, &done_id).await["state"], "done");
    let mp3 = api.mp3(&token, &done_id).await;

    // Under the reserve: uploads (seed and v1) and imports are refused before staging.
    let filler = volume.fill_to(RESERVE - (1 << 20));
    let r = api.upload_as("/upload", &token, &input, None).await;
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE, "the seed's upload");
    assert!(r.text().await.unwrap().contains("short of disk space"));
    let r = api.upload_as("/v1/jobs", &token, &input, None).await;
    assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("60"));
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage".into())
    );
    let r = api.import(&token, "http://example.com/a.mp4").await;
    assert_eq!(Api::error_code(r).await.0, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(
        std::fs::read_dir(data.join("tmp")).unwrap().count(),
        0,
        "nothing staged"
    );
    // Still ready, still serving the done job, and the shortage is reported.
    assert_eq!(reqwest::get(node.url("/readyz")).await.unwrap().status(), 200);
    assert_eq!(api.mp3(&token, &done_id).await, mp3);
    let reported = poll(Duration::from_secs(10), "the shortage in /metrics", || async {
        let text = reqwest::get(node.url("/metrics")).await.ok()?.text().await.ok()?;
        (metric(&text, "mp4tomp3_data_low_storage") == 1.0).then_some(text)
    })
    .await;
    assert!(metric(&reported, "mp4tomp3_data_free_bytes") < RESERVE as f64);
    let cluster = api.get_json(&token, "/v1/cluster").await;
    assert_eq!(cluster["self"]["storage"]["low"], true);

    // A delete frees the job's files even now.
    let job_dir_files = |id: &str| {
        walk(&data)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(id))
            .count()
    };
    assert!(job_dir_files(&done_id) > 0);
    let r = api
        .http
        .delete(api.url(&format!("/v1/jobs/{done_id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(job_dir_files(&done_id), 0, "the deleted job's files are gone");

    // Room again: uploads work.
    std::fs::remove_file(&filler).unwrap();
    poll(Duration::from_secs(10), "uploads to be taken again", || async {
        let r = api.upload_as("/v1/jobs", &token, &input, None).await;
        (r.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_that_runs_out_of_space_waits_for_room_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Tmpfs::mount(&dir.path().join("vol"), 48);
    let data = volume.0.join("data");
    // Accepted while no slot converts it.
    let mut node = Node::start(&data, &["--min-free-bytes", "0", "--converter-slots", "0"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let input = crate::common::tone("storage_long.m4a", 440, 22_050, 20.0, 2, &["-c:a", "aac"]);
    let job = api.upload(&token, &input).await;
    let id = job["id"].as_str().unwrap().to_string();
    node.kill9();
    // Room for the database's writes but not for the MP3 (~480 KB).
    let filler = volume.fill_to(192 << 10);
    let node = Node::start(&data, &["--min-free-bytes", "0", "--converter-slots", "1"]).await;
    let api = Api::new(&node);
    node.logged(&["ran out of disk space"], Duration::from_secs(30)).await;
    let r: serde_json::Value = api.job(&token, &id).await.json().await.unwrap();
    assert!(
        matches!(r["state"].as_str(), Some("queued" | "converting")),
        "not failed for good: {r}"
    );
    std::fs::remove_file(&filler).unwrap();
    let finished = api.finished(&token, &id).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let mp3 = api.mp3(&token, &id).await;
    assert!((crate::common::mp3_seconds(dir.path(), &mp3) - 20.0).abs() < 0.1);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_conversion_is_placed_on_a_node_under_its_reserve() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [crate::common::service::free_port(), crate::common::service::free_port()];
    let peers = format!("127.0.0.2:{},127.0.0.3:{}", ports[0], ports[1]);
    let start = |name: &'static str, i: usize, slots: &'static str, reserve: &'static str| {
        let (data, listen, peers) = (
            dir.path().join(name),
            format!("127.0.0.{}:{}", i + 2, ports[i]),
            peers.clone(),
        );
        async move {
            let args = [
                "--node-name",
                name,
                "--cluster-listen",
                &listen,
                "--peers",
                &peers,
                "--converter-slots",
                slots,
                "--min-free-bytes",
                reserve,
            ];
            Node::start(&data, &args).await
        }
    };
    let a = start("node-a", 0, "0", "0").await;
    // node-b's reserve is more than any disk has: it is always under it.
    let mut b = start("node-b", 1, "1", "1000000000000000000").await;
    let api = Api::new(&a);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let low = poll(Duration::from_secs(20), "node-b reported low on storage", || async {
        let r = api
            .http
            .get(api.url("/v1/cluster"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?;
        let cluster: serde_json::Value = r.json().await.ok()?;
        let b = cluster["members"]
            .as_array()?
            .iter()
            .find(|m| m["node"] == "node-b")?
            .clone();
        (b["storage"]["low"] == true && b["slots"]["free"] == 1).then_some(b)
    })
    .await;
    assert!(low["storage"]["free_bytes"].as_u64().unwrap() > 0, "{low}");
    let input = crate::common::tone("storage_cluster.m4a", 440, 22_050, 2.0, 1, &["-c:a", "aac"]);
    let id = api.upload(&token, &input).await["id"].as_str().unwrap().to_string();
    // Several dispatch rounds (every 2 s) pass without placing it on node-b.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        !b.log_text().contains("converting a job for its owner"),
        "placed on a node under its reserve"
    );
    let job: serde_json::Value = api.job(&token, &id).await.json().await.unwrap();
    assert_eq!(job["state"], "queued");
    // node-b back with room: the job is placed there and finishes.
    b.kill9();
    let _b = start("node-b", 1, "1", "0").await;
    assert_eq!(api.finished(&token, &id).await["state"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_lose_their_input_at_once_and_everything_after_the_retention_period() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let node = Node::start(&data, &["--retention", "4s"]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let input = crate::common::tone("retention_2s.m4a", 440, 44100, 2.0, 2, &["-c:a", "aac"]);
    let id = api.upload(&token, &input).await["id"].as_str().unwrap().to_string();
    let done = api.finished(&token, &id).await;
    assert_eq!(done["state"], "done", "{done}");
    let job_dir = data.join("jobs").join(&id);
    assert!(!job_dir.join("input.mp4").exists(), "the input goes when the job ends");
    assert!(
        job_dir.join("output.mp3").exists(),
        "the MP3 stays until the job expires"
    );
    let metrics = api
        .http
        .get(api.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metric(&metrics, "mp4tomp3_stored_bytes{kind=\"mp3s\"}") >= 0.0);

    // After the retention period: 410 expired for its owner, 404 for anyone else, gone from
    // the list, its files deleted.
    let gone = poll(Duration::from_secs(20), "the job to expire", || async {
        let r = api.job(&token, &id).await;
        (r.status() == StatusCode::GONE).then_some(r)
    })
    .await;
    assert_eq!(Api::error_code(gone).await.1, "expired");
    let r = api
        .http
        .get(api.url(&format!("/v1/jobs/{id}/mp3")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    assert!(!job_dir.exists(), "its files are deleted");
    let list = api.get_json(&token, "/v1/jobs").await;
    assert!(list["jobs"].as_array().unwrap().iter().all(|j| j["id"] != id.as_str()));
    node.logged(&["deleted jobs past the retention period"], Duration::from_secs(10))
        .await;

    // With --keep-inputs the input stays while the job does.
    let kept = Node::start(&dir.path().join("b"), &["--keep-inputs"]).await;
    let api = Api::new(&kept);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let id = api.upload(&token, &input).await["id"].as_str().unwrap().to_string();
    assert_eq!(api.finished(&token, &id).await["state"], "done");
    assert!(dir.path().join("b").join("jobs").join(&id).join("input.mp4").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumable_uploads_reserve_what_they_announce_and_patches_check_again() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Tmpfs::mount(&dir.path().join("vol"), 64);
    let data = volume.0.join("data");
    const RESERVE: u64 = 16 << 20;
    let node = Node::start(&data, &["--min-free-bytes", &RESERVE.to_string()]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    let create = |length: u64| {
        api.http
            .post(api.url("/v1/uploads"))
            .bearer_auth(&token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", length.to_string())
            .send()
    };
    // Room for one announced upload of most of what is above the reserve, not for three.
    let room = volume.free() - RESERVE;
    let size = room * 2 / 3;
    let first = create(size).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    for _ in 0..2 {
        let r = create(size).await.unwrap();
        assert_eq!(
            Api::error_code(r).await,
            (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage".into()),
            "each creation counts those before it"
        );
    }
    // Something else takes the room meanwhile: the announced upload's PATCH is refused
    // rather than filling the volume.
    let url = api.url(first.headers()["location"].to_str().unwrap());
    let filler = volume.fill_to(RESERVE + (2 << 20));
    let patch = || {
        api.http
            .patch(&url)
            .bearer_auth(&token)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body(vec![1u8; 4 << 20])
            .send()
    };
    assert_eq!(patch().await.unwrap().status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(volume.free() > RESERVE, "the reserve held");
    // Metadata writes still work.
    api.create_user(&token, "dora@example.com", "dora-password").await;
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        patch().await.unwrap().status(),
        StatusCode::NO_CONTENT,
        "with room again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_writes_go_on_when_something_else_fills_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Tmpfs::mount(&dir.path().join("vol"), 48);
    let data = volume.0.join("data");
    let node = Node::start(&data, &["--min-free-bytes", &(1u64 << 20).to_string()]).await;
    let api = Api::new(&node);
    let token = api.login(ADMIN.0, ADMIN.1).await;
    // Something else takes every byte of the volume.
    let filler = volume.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let mut byte = [7u8];
        while f.write_all(&byte).is_ok() {
            byte[0] = 7;
        }
    }
    assert!(
        volume.free() < 64 << 10,
        "the volume is full: {} bytes free",
        volume.free()
    );
    // A user is still created (not 500 "database or disk is full"): the databases (the
    // metadata's log, this node's mirror) gave up their reserves for it.
    api.create_user(&token, "eve@example.com", "eve-password").await;
    node.logged(&["reserve was given up"], Duration::from_secs(10)).await;
    // And a sign-in, which writes nothing, works as ever.
    api.login("eve@example.com", "eve-password").await;
    std::fs::remove_file(&filler).unwrap();
}
