//! Users can be removed, and a password change or removal revokes their tokens on every
//! node (issue: hostile clients and full disks, item 8).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::common::api::Api;
use crate::common::service::{ADMIN, Node, free_port, poll};
use reqwest::StatusCode;

/// `mp4tomp3 user ARGS... --data-dir DATA`, with `stdin`: (exit code, stderr).
fn cli(data: &Path, args: &[&str], stdin: &[u8]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mp4tomp3"))
        .arg("user")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

async fn status_with(api: &Api, token: &str) -> (StatusCode, String) {
    let r = api
        .http
        .get(api.url("/v1/jobs"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    Api::error_code(r).await
}

async fn delete_user(api: &Api, token: &str, email: &str) -> (StatusCode, String) {
    let r = api
        .http
        .delete(api.url(&format!("/v1/users/{email}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    Api::error_code(r).await
}

/// `POST /v1/me/password`: the current password is checked like a login, every older token
/// is revoked, and the answer is a token that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_change_their_own_password_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let api = Api::new(&node);
    let admin = api.login(ADMIN.0, ADMIN.1).await;
    api.create_user(&admin, "dee@example.com", "dee-password-1").await;
    let first = api.login("dee@example.com", "dee-password-1").await;
    let second = api.login("dee@example.com", "dee-password-1").await;
    let change = |token: &str, current: &str, new: &str| {
        api.http
            .post(api.url("/v1/me/password"))
            .bearer_auth(token)
            .json(&serde_json::json!({"current_password": current, "new_password": new}))
            .send()
    };
    let r = change(&first, "not-the-password", "dee-password-2").await.unwrap();
    assert_eq!(
        Api::error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_credentials".into())
    );
    let r = change(&first, "dee-password-1", "short").await.unwrap();
    assert_eq!(Api::error_code(r).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        status_with(&api, &first).await.0,
        StatusCode::OK,
        "refused changes change nothing"
    );

    let r = change(&first, "dee-password-1", "dee-password-2").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    let fresh = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(body["token_type"], "Bearer");
    for old in [&first, &second] {
        assert_eq!(
            status_with(&api, old).await,
            (StatusCode::UNAUTHORIZED, "token_revoked".into())
        );
    }
    assert_eq!(status_with(&api, &fresh).await.0, StatusCode::OK);
    let r = api
        .http
        .post(api.url("/login"))
        .basic_auth("dee@example.com", Some("dee-password-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the old password no longer logs in"
    );
    api.login("dee@example.com", "dee-password-2").await;
    // Someone else's session cannot change it: the token names the user.
    let r = change(&admin, "dee-password-2", "dee-password-3").await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the admin's password is not dee's"
    );
    api.login("dee@example.com", "dee-password-2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_or_removal_revokes_tokens_and_removal_deletes_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]).await;
    let api = Api::new(&node);
    let admin = api.login(ADMIN.0, ADMIN.1).await;
    api.create_user(&admin, "bob@example.com", "bob-password-1").await;
    let old = api.login("bob@example.com", "bob-password-1").await;
    let input = crate::common::tone("users.m4a", 440, 22_050, 1.0, 1, &["-c:a", "aac"]);
    let job = api.upload(&old, &input).await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(api.finished(&old, &id).await["state"], "done");
    assert_eq!(status_with(&api, &old).await.0, StatusCode::OK);

    // A new password (the CLI, while the server runs) revokes the old token.
    let (code, err) = cli(&node.data, &["add", "bob@example.com"], b"bob-password-2\n");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        status_with(&api, &old).await,
        (StatusCode::UNAUTHORIZED, "token_revoked".into())
    );
    let r = api
        .http
        .post(api.url("/login"))
        .basic_auth("bob@example.com", Some("bob-password-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let new = api.login("bob@example.com", "bob-password-2").await;
    assert_eq!(status_with(&api, &new).await.0, StatusCode::OK);

    // Only admins remove users, and not themselves; unknown users are 404.
    assert_eq!(
        delete_user(&api, &new, "bob@example.com").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(delete_user(&api, &admin, ADMIN.0).await.0, StatusCode::CONFLICT);
    assert_eq!(
        delete_user(&api, &admin, "nobody@example.com").await.0,
        StatusCode::NOT_FOUND
    );
    // Removal: the token stops working, the login too, and the jobs and files go.
    assert_eq!(
        delete_user(&api, &admin, "bob@example.com").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status_with(&api, &new).await,
        (StatusCode::UNAUTHORIZED, "token_revoked".into())
    );
    let r = api
        .http
        .post(api.url("/login"))
        .basic_auth("bob@example.com", Some("bob-password-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    poll(Duration::from_secs(10), "bob's job to be deleted", || async {
        (api.job(&admin, &id).await.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(!node.data.join("jobs").join(&id).exists(), "bob's files are gone");
    // The CLI removes too (and says so for an unknown user).
    api.create_user(&admin, "cy@example.com", "cy-password-1").await;
    let cy = api.login("cy@example.com", "cy-password-1").await;
    assert_eq!(cli(&node.data, &["remove", "cy@example.com"], b"").0, Some(0));
    assert_eq!(status_with(&api, &cy).await.0, StatusCode::UNAUTHORIZED);
    let (code, err) = cli(&node.data, &["remove", "cy@example.com"], b"");
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    // A removed user's email can be used again, and old tokens stay revoked.
    api.create_user(&admin, "bob@example.com", "bob-password-3").await;
    assert_eq!(status_with(&api, &new).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_user_on_one_node_revokes_and_deletes_on_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let peers = format!("127.0.0.2:{},127.0.0.3:{}", ports[0], ports[1]);
    let mut nodes = Vec::new();
    for (i, name) in ["node-a", "node-b"].iter().enumerate() {
        let listen = format!("127.0.0.{}:{}", i + 2, ports[i]);
        let args = ["--node-name", name, "--cluster-listen", &listen, "--peers", &peers];
        nodes.push(Node::start(&dir.path().join(name), &args).await);
    }
    let (a, b) = (Api::new(&nodes[0]), Api::new(&nodes[1]));
    let admin = a.login(ADMIN.0, ADMIN.1).await;
    a.create_user(&admin, "dee@example.com", "dee-password-1").await;
    // The user reaches node-b; a token from node-a works there (one key per cluster).
    let token = a.login("dee@example.com", "dee-password-1").await;
    poll(Duration::from_secs(20), "dee's token to work on node-b", || async {
        (status_with(&b, &token).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    // A web session signed out on node-a: its token is refused on node-b too, at once, while
    // dee's other token goes on.
    let signed_in = a
        .http
        .post(a.url("/v1/session"))
        .json(&serde_json::json!({"email": "dee@example.com", "password": "dee-password-1"}))
        .send()
        .await
        .unwrap();
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let session_token = cookie.split_once('=').unwrap().1.to_string();
    assert_eq!(status_with(&b, &session_token).await.0, StatusCode::OK);
    let out = a
        .http
        .delete(a.url("/v1/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert_eq!(status_with(&a, &session_token).await.0, StatusCode::UNAUTHORIZED);
    // Acknowledged once every reachable node has applied it: refused on node-b at once.
    assert_eq!(
        status_with(&b, &session_token).await.0,
        StatusCode::UNAUTHORIZED,
        "the signed-out token on node-b right after the sign-out's answer"
    );
    assert_eq!(
        status_with(&b, &token).await.0,
        StatusCode::OK,
        "the other session goes on"
    );
    // A job dee owns on node-b.
    let input = crate::common::tone("users_b.m4a", 440, 22_050, 1.0, 1, &["-c:a", "aac"]);
    let id = b.upload(&token, &input).await["id"].as_str().unwrap().to_string();
    assert_eq!(b.finished(&token, &id).await["state"], "done");
    assert_eq!(
        delete_user(&a, &admin, "dee@example.com").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status_with(&b, &token).await.0,
        StatusCode::UNAUTHORIZED,
        "the removed user's token on node-b right after the removal's answer"
    );
    let admin_b = b.login(ADMIN.0, ADMIN.1).await;
    poll(Duration::from_secs(20), "dee's job deleted on node-b", || async {
        (b.job(&admin_b, &id).await.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(!nodes[1].data.join("jobs").join(&id).exists());
}
