//! A small client for the service's HTTP API, shared by the end-to-end tests.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::service::{Node, poll};

/// One node's API.
pub struct Api {
    /// The client.
    pub http: reqwest::Client,
    node_url: String,
}

impl Api {
    pub fn new(node: &Node) -> Api {
        Api {
            http: reqwest::Client::new(),
            node_url: node.url(""),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.node_url)
    }

    /// An admin (`admin` is their token) creates a user.
    pub async fn create_user(&self, admin: &str, email: &str, password: &str) {
        let r = self
            .http
            .post(self.url("/v1/users"))
            .bearer_auth(admin)
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "create {email}");
    }

    /// The seed's login: HTTP Basic, the JWT as the body (`None` if refused).
    pub async fn try_login(&self, email: &str, password: &str) -> Option<String> {
        let r = self
            .http
            .post(self.url("/login"))
            .basic_auth(email, Some(password))
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::OK {
            return None;
        }
        Some(r.text().await.unwrap())
    }

    /// The seed's login: HTTP Basic, the JWT as the body.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let token = self.try_login(email, password).await;
        token.unwrap_or_else(|| panic!("login {email}"))
    }

    /// The same, waiting (up to 10 s) for a user created on another node to replicate here.
    pub async fn login_soon(&self, email: &str, password: &str) -> String {
        super::service::poll(std::time::Duration::from_secs(10), "the user on this node", || {
            self.try_login(email, password)
        })
        .await
    }

    pub async fn upload_as(&self, path: &str, token: &str, file: &Path, key: Option<&str>) -> reqwest::Response {
        let bytes = std::fs::read(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let form = reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(bytes).file_name(name));
        let mut req = self.http.post(self.url(path)).bearer_auth(token).multipart(form);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        req.send().await.unwrap()
    }

    /// `POST /v1/jobs` of a URL import, with the token in the header.
    pub async fn import(&self, token: &str, url: &str) -> reqwest::Response {
        let body = serde_json::json!({ "url": url });
        let req = self.http.post(self.url("/v1/jobs")).bearer_auth(token).json(&body);
        req.send().await.unwrap()
    }

    pub async fn upload(&self, token: &str, file: &Path) -> Value {
        let r = self.upload_as("/upload", token, file, None).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        r.json().await.unwrap()
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, token: &str, path: &str) -> Value {
        let r = self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.unwrap()
    }

    /// A done job's MP3 (`GET /v1/jobs/{id}/mp3`), which must answer 200.
    pub async fn mp3(&self, token: &str, id: &str) -> Vec<u8> {
        let r = self
            .http
            .get(self.url(&format!("/v1/jobs/{id}/mp3")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        if status != StatusCode::OK {
            panic!(
                "MP3 of {id} through {}: {status} {}",
                self.node_url,
                r.text().await.unwrap_or_default()
            );
        }
        r.bytes().await.unwrap().to_vec()
    }

    pub async fn job(&self, token: &str, id: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// `DELETE /v1/jobs/{id}`: cancels or deletes the job.
    pub async fn delete_job(&self, token: &str, id: &str) -> reqwest::Response {
        self.http
            .delete(self.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Polls the job until it is done, failed or canceled.
    pub async fn finished(&self, token: &str, id: &str) -> Value {
        poll(Duration::from_secs(120), "the job to finish", || async {
            let job: Value = self.job(token, id).await.json().await.ok()?;
            matches!(job["state"].as_str(), Some("done" | "failed" | "canceled")).then_some(job)
        })
        .await
    }

    pub async fn error_code(r: reqwest::Response) -> (StatusCode, String) {
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, body["error"]["code"].as_str().unwrap_or("").to_string())
    }
}
