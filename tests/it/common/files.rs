//! Fixture servers and readers shared by the tests: a file server for URL imports, and
//! a ZIP reader that is not our code (Python's zipfile).

use std::process::Command;

/// A tiny file server for URL imports: serves `file` at `/a.mp4`, redirects `/r` to
/// `target`, counts connections.
pub struct FileServer {
    pub addr: std::net::SocketAddr,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

pub async fn file_server(ip: &str, file: Option<std::path::PathBuf>, redirect_to: Option<String>) -> FileServer {
    use axum::response::{IntoResponse, Redirect};
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let file_route = move || {
        let file = file.clone();
        async move {
            match file {
                Some(f) => std::fs::read(f).unwrap().into_response(),
                None => axum::http::StatusCode::NOT_FOUND.into_response(),
            }
        }
    };
    let redirect_route = move || {
        let to = redirect_to.clone().unwrap_or_default();
        async move { Redirect::temporary(&to) }
    };
    let app = axum::Router::new()
        .route("/a.mp4", axum::routing::get(file_route))
        .route("/r", axum::routing::get(redirect_route))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                next.run(req)
            },
        ));
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    FileServer { addr, hits }
}

/// `(name, compress_type, bytes)` of every entry, by Python's zipfile (after `testzip`).
pub fn zip_entries(dir: &std::path::Path, zip: &[u8]) -> Vec<(String, i64, Vec<u8>)> {
    let path = dir.join("got.zip");
    std::fs::write(&path, zip).unwrap();
    let out_dir = dir.join("unzipped");
    let script = "import json, sys, zipfile\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        assert z.testzip() is None\n\
        out = []\n\
        for i, info in enumerate(z.infolist()):\n\
        \x20   p = sys.argv[2] + '/' + str(i)\n\
        \x20   open(p, 'wb').write(z.read(info))\n\
        \x20   out.append([info.filename, info.compress_type, p])\n\
        print(json.dumps(out))\n";
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Vec<(String, i64, String)> = serde_json::from_slice(&out.stdout).unwrap();
    listed
        .into_iter()
        .map(|(name, kind, p)| (name, kind, std::fs::read(p).unwrap()))
        .collect()
}
