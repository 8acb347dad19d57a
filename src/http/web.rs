//! The web page at `/`: three files from `web/`, embedded in the binary (no build step,
//! no CDN), served by every pod with a strict Content-Security-Policy: no inline script or
//! style, nothing from another origin, and no framing.

use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

const INDEX: &str = include_str!("../../web/index.html");
const SCRIPT: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/app.css");

/// The page's policy: its own script, style and connections only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(script))
        .routes(routes!(style))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

/// The web app: sign in, convert, follow and download jobs.
#[utoipa::path(get, path = "/", tag = "web", operation_id = "web_page",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

/// The page's script.
#[utoipa::path(get, path = "/app.js", tag = "web", operation_id = "web_script",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String)))]
async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// The page's style sheet.
#[utoipa::path(get, path = "/app.css", tag = "web", operation_id = "web_style",
    responses((status = 200, description = "CSS", content_type = "text/css", body = String)))]
async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}
