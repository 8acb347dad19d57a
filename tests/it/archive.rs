//! Several MP3s as one streamed ZIP (`/v1/jobs/archive`), from jobs on two nodes, read
//! back by Python's zipfile (not our code).

use crate::common::api::Api;
use crate::common::service::ADMIN;
use reqwest::StatusCode;
use serde_json::{Value, json};

const BOB: (&str, &str) = ("bob@example.com", "bob-password-1");

#[tokio::test(flavor = "multi_thread")]
async fn a_zip_of_jobs_on_two_nodes_holds_each_mp3_once_under_unique_names() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = crate::common::service::cluster(dir.path(), &[1, 1]).await;
    let (a, b) = (Api::new(&nodes[0]), Api::new(&nodes[1]));
    let admin = a.login(ADMIN.0, ADMIN.1).await;
    b.create_user(&admin, BOB.0, BOB.1).await;
    let (bob_a, bob_b) = (a.login_soon(BOB.0, BOB.1).await, b.login(BOB.0, BOB.1).await);
    let talk = dir.path().join("talk.m4a");
    std::fs::copy(
        crate::common::tone("archive_1s.m4a", 440, 44100, 1.0, 1, &["-c:a", "aac"]),
        &talk,
    )
    .unwrap();
    let other = dir.path().join("Other.m4a");
    std::fs::copy(
        crate::common::tone("archive_2s.m4a", 660, 44100, 2.0, 2, &["-c:a", "aac"]),
        &other,
    )
    .unwrap();

    // Two jobs with one name on A, one on B.
    let mut ids = Vec::new();
    for (api, token, file) in [(&a, &bob_a, &talk), (&a, &bob_a, &other), (&b, &bob_b, &talk)] {
        let r = api.upload_as("/v1/jobs", token, file, None).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let job: Value = r.json().await.unwrap();
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    let mut mp3s = Vec::new();
    for id in &ids {
        assert_eq!(a.finished(&bob_a, id).await["state"], "done");
        mp3s.push(a.mp3(&bob_a, id).await);
    }

    // From A, by query (an id twice counts once), and from B, by body: the same archive.
    let query = format!("{},{},{},{}", ids[0], ids[1], ids[2], ids[0]);
    let r = a
        .http
        .get(a.url(&format!("/v1/jobs/archive?ids={query}")))
        .bearer_auth(&bob_a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/zip");
    let by_query = r.bytes().await.unwrap().to_vec();
    let r = b
        .http
        .post(b.url("/v1/jobs/archive"))
        .json(&json!({ "ids": ids }))
        .bearer_auth(&bob_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let by_body = r.bytes().await.unwrap().to_vec();
    for zip in [&by_query, &by_body] {
        let got = crate::common::files::zip_entries(dir.path(), zip);
        let names: Vec<&str> = got.iter().map(|(n, ..)| n.as_str()).collect();
        assert_eq!(names, ["talk.mp3", "Other.mp3", "talk (2).mp3"]);
        for ((_, kind, bytes), mp3) in got.iter().zip(&mp3s) {
            assert_eq!(*kind, 0, "stored, not compressed");
            assert!(bytes == mp3, "each entry is its job's MP3, byte for byte");
        }
    }

    // Refusals come before any byte: another user's job, an unknown id, nothing named, and
    // a job that is not done.
    let admins_job: Value = a.upload_as("/v1/jobs", &admin, &talk, None).await.json().await.unwrap();
    let admins_id = admins_job["id"].as_str().unwrap();
    a.finished(&admin, admins_id).await;
    for (ids, status, code) in [
        (format!("{},{admins_id}", ids[0]), StatusCode::NOT_FOUND, "not_found"),
        (
            "node-a~00000000000000000000000f".to_string(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (",".to_string(), StatusCode::BAD_REQUEST, "invalid_request"),
    ] {
        let r = b
            .http
            .get(b.url(&format!("/v1/jobs/archive?ids={ids}")))
            .bearer_auth(&bob_b)
            .send()
            .await
            .unwrap();
        assert_eq!(Api::error_code(r).await, (status, code.to_string()), "{ids}");
    }
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "not a video").unwrap();
    let job: Value = a.upload_as("/v1/jobs", &bob_a, &text, None).await.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(a.finished(&bob_a, id).await["state"], "failed");
    let r = b
        .http
        .post(b.url("/v1/jobs/archive"))
        .json(&json!({ "ids": [ids[0].clone(), id] }))
        .bearer_auth(&bob_b)
        .send()
        .await
        .unwrap();
    assert_eq!(Api::error_code(r).await, (StatusCode::CONFLICT, "not_done".to_string()));
}
