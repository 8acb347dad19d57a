//! The API's contract: an OpenAPI 3.1 document generated from the handlers (utoipa), served
//! at `GET /openapi.json`.
//!
//! Every route is registered through `utoipa_axum::routes!` on an [`OpenApiRouter`], so the
//! router and the document come from one list (a route cannot be served without being
//! described); `tests/it/contract.rs` checks the served document against the running router
//! and runs schemathesis against it. Error answers are the reusable responses of
//! `responses.rs`, one per status, each naming its codes.

use std::sync::OnceLock;

use axum::http::header::CACHE_CONTROL;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ErrorBody, ErrorDetail};
use super::responses::{
    BadRequest, Conflict, Forbidden, InsufficientStorage, Internal, NotFound, QuotaExceeded, TooLarge, TooManyRequests,
    Unauthorized, Unavailable, Unprocessable, UnsupportedMediaType,
};
use crate::view::EventJson;

/// The document's fixed parts; the paths come from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mp4tomp3",
        description = "Turns MP4 (and M4A/MOV) files into MP3s. Log in for a bearer token \
            (`POST /v1/auth/token`, or the original project's `POST /login` with HTTP Basic), \
            submit an upload or a URL (`POST /v1/jobs`), follow the job (`GET /v1/jobs/{id}`), \
            download the MP3 (`GET /v1/jobs/{id}/mp3`, or the link in the email). Errors are \
            `{\"error\":{\"code\",\"message\"}}` with a stable code, except on the original \
            project's routes (`/login`, `/upload`, `/download`), which answer in plain text as \
            it did.",
        license(name = "MIT"),
    ),
    modifiers(&SecuritySchemes),
    components(
        schemas(ErrorBody, ErrorDetail, EventJson, super::error::ErrorCode),
        responses(
            BadRequest, Unauthorized, Forbidden, NotFound, Conflict, TooLarge, UnsupportedMediaType,
            Unprocessable, TooManyRequests, QuotaExceeded, Internal, Unavailable, InsufficientStorage
        )
    ),
    tags(
        (name = "auth", description = "Tokens and users"),
        (name = "jobs", description = "Conversions: submit, follow, cancel"),
        (name = "downloads", description = "The MP3s"),
        (name = "webhooks", description = "Signed calls to your URL when jobs end"),
        (name = "uploads", description = "Resumable uploads (tus 1.0.0) for big files"),
        (name = "web", description = "The web page (`/`) and its session"),
        (name = "seed", description = "The original project's routes, kept for its users"),
        (name = "operations", description = "Health, readiness, metrics, the cluster, this document"),
    )
)]
struct ApiDoc;

/// The security schemes the operations refer to.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("basic", SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)));
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".into());
        bearer.description = Some("An access token from `POST /v1/auth/token` or `POST /login`".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::http::session::COOKIE_NAME,
                "The web page's session (`POST /v1/session`; named `__Host-mp4tomp3_session` when \
                 the server's public URL is https); state-changing requests made with it also \
                 need `X-CSRF-Token` and our `Origin`; a request with two session cookies is refused",
            ))),
        );
    }
}

/// Every operation that takes a Bearer token takes the web session cookie as well; a
/// state-changing one made with the cookie may be refused with `403` (no CSRF token, or
/// another origin).
pub fn add_session_alternative(document: &mut utoipa::openapi::OpenApi) {
    let session = SecurityRequirement::new("session", Vec::<String>::new());
    for item in document.paths.paths.values_mut() {
        let operations = [
            (&mut item.get, false),
            (&mut item.head, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, true),
            (&mut item.patch, true),
        ];
        for (operation, changes) in operations {
            let Some(operation) = operation.as_mut() else {
                continue;
            };
            let Some(security) = operation.security.as_mut() else {
                continue;
            };
            let bearer = security
                .iter()
                .any(|r| serde_json::to_value(r).is_ok_and(|v| v.get("bearer").is_some()));
            if !bearer || security.contains(&session) {
                continue;
            }
            security.push(session.clone());
            if changes {
                operation
                    .responses
                    .responses
                    .entry("403".to_string())
                    .or_insert_with(|| utoipa::openapi::Ref::from_response_name("Forbidden").into());
            }
        }
    }
}

/// The document, once built.
static DOCUMENT: OnceLock<String> = OnceLock::new();

/// Starts the API's router with the document's fixed parts and `GET /openapi.json`.
pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).routes(routes!(document))
}

/// Keeps the finished document for `GET /openapi.json`.
pub(super) fn publish(openapi: &utoipa::openapi::OpenApi, max_upload_bytes: u64) {
    let _ = DOCUMENT.get_or_init(|| {
        let mut document = serde_json::to_value(openapi).unwrap_or_default();
        pin_down(&mut document, max_upload_bytes);
        serde_json::to_string_pretty(&document).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    });
}

/// What the derives cannot say, said in the document so that it states exactly what the
/// server takes (schemathesis checks both ways: schema-valid requests are accepted, others
/// refused): the tus version, the Idempotency-Key's characters, standard bitrates and not
/// both `bitrate` and `vbr`, known webhook events, non-empty job ids, the upload limit.
fn pin_down(document: &mut serde_json::Value, max_upload_bytes: u64) {
    use serde_json::json;
    let tus = json!({"type": "string", "enum": [super::tus::TUS_VERSION]});
    let key = json!({"type": ["string", "null"], "minLength": 1, "maxLength": super::jobs::MAX_IDEMPOTENCY_KEY, "pattern": "^[!-~]+$"});
    if let Some(paths) = document.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for item in paths.values_mut().filter_map(|i| i.as_object_mut()) {
            for operation in item.values_mut() {
                let Some(parameters) = operation.get_mut("parameters").and_then(|p| p.as_array_mut()) else {
                    continue;
                };
                for parameter in parameters {
                    let schema = match parameter["name"].as_str() {
                        Some("Tus-Resumable") => &tus,
                        Some("Idempotency-Key") => &key,
                        Some("fid") => &json!({"type": "string", "minLength": 1}),
                        // What `tus::checksum` takes: sha256 (any case) and a base64 digest.
                        Some("Upload-Checksum") => &json!({"type": "string",
                            "pattern": "^[Ss][Hh][Aa]256 [ \t]*[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=[ \t]*$"}),
                        Some("Upload-Length") => {
                            &json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": max_upload_bytes})
                        }
                        _ => continue,
                    };
                    parameter["schema"] = schema.clone();
                }
            }
        }
    }
    // A creation may come with its first bytes, or none; tus bodies are bytes.
    if let Some(body) = document["paths"]["/v1/uploads"]["post"]["requestBody"].as_object_mut() {
        body.insert("required".into(), json!(false));
    }
    for (path, method) in [("/v1/uploads", "post"), ("/v1/uploads/{id}", "patch")] {
        let content = &mut document["paths"][path][method]["requestBody"]["content"]["application/offset+octet-stream"];
        if content.is_object() {
            content["schema"] = json!({"type": "string", "format": "binary"});
        }
    }
    // The original route reads no webhook: its form has none.
    if document["paths"]["/upload"]["post"]["requestBody"].is_object() {
        document["paths"]["/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"] =
            json!({"$ref": "#/components/schemas/SeedUploadForm"});
    }
    let schemas = &mut document["components"]["schemas"];
    let mut bitrates: Vec<serde_json::Value> = mp4tomp3_convert::STANDARD_BITRATES.iter().map(|b| json!(b)).collect();
    bitrates.push(serde_json::Value::Null);
    let mut seed_form = None;
    for form in ["UploadForm", "UrlJob"] {
        let schema = &mut schemas[form];
        if schema.is_null() {
            continue;
        }
        schema["properties"]["bitrate"]["enum"] = json!(bitrates);
        if form == "UploadForm" {
            // A form field is there or not: it cannot be null; no `vbr` beside a `bitrate`;
            // other fields are not read.
            for field in ["bitrate", "vbr"] {
                schema["properties"][field]["type"] = json!("integer");
            }
            schema["properties"]["webhook_url"]["type"] = json!("string");
            if let Some(values) = schema["properties"]["bitrate"]["enum"].as_array_mut() {
                values.retain(|v| !v.is_null());
            }
            schema["dependentSchemas"] = json!({"bitrate": {"properties": {"vbr": false}}});
            schema["additionalProperties"] = json!(false);
            // An empty field (a form's empty input) is no webhook.
            schema["properties"]["webhook_url"] = json!({
                "description": schema["properties"]["webhook_url"]["description"].clone(),
                "oneOf": [{"type": "string", "format": "uri"}, {"type": "string", "maxLength": 0}]
            });
            let mut seed = schema.clone();
            if let Some(properties) = seed["properties"].as_object_mut() {
                properties.remove("webhook_url");
            }
            seed["description"] = json!("The original project's upload: one file part and optional settings.");
            seed_form = Some(seed);
        } else {
            // An empty webhook URL is none.
            schema["properties"]["webhook_url"] = json!({
                "description": schema["properties"]["webhook_url"]["description"].clone(),
                "oneOf": [{"type": "string", "format": "uri"}, {"type": "string", "maxLength": 0}, {"type": "null"}]
            });
            // Not both a bitrate and a VBR quality (null is the same as absent).
            schema["not"] = json!({
                "required": ["bitrate", "vbr"],
                "properties": {"bitrate": {"type": "integer"}, "vbr": {"type": "integer"}}
            });
        }
    }
    if let Some(seed) = seed_form {
        schemas["SeedUploadForm"] = seed;
    }
    if let Some(events) = schemas["WebhookRequest"]["properties"]["events"].as_object_mut() {
        events.insert(
            "items".into(),
            json!({"type": "string", "enum": crate::store::webhooks::EVENTS}),
        );
    }
    if let Some(ids) = schemas["ArchiveRequest"]["properties"]["ids"].as_object_mut() {
        ids.insert("items".into(), json!({"type": "string", "pattern": "\\S"}));
    }
}

/// This document: the API's OpenAPI 3.1 description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
async fn document() -> impl IntoResponse {
    let text = DOCUMENT.get().cloned().unwrap_or_default();
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
}
