//! The web page's session: `POST /v1/session` signs in and sets an `HttpOnly`,
//! `SameSite=Strict` cookie holding an access token (`Secure` when the public URL is
//! https); `GET` says who is signed in; `DELETE` signs out. API clients keep using Bearer
//! tokens.
//!
//! Every route takes either: [`caller`] accepts `Authorization: Bearer` first, else the
//! cookie. A state-changing request (anything but `GET`/`HEAD`/`OPTIONS`) made with the
//! cookie must also come from our origin (`Origin`, when the browser sends it, names this
//! server) and carry the session's CSRF token in `X-CSRF-Token`: an HMAC of the session's
//! token that only our own page can read (it is in the sign-in answer and `GET`), so a page
//! of another origin cannot forge one.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::responses::{BadRequest, Forbidden, TooLarge, TooManyRequests, Unauthorized, Unavailable};
use super::{ApiError, AppState, ErrorCode, bearer, verify};
use crate::auth::Principal;

/// The session cookie's name over plain http.
pub const COOKIE_NAME: &str = "mp4tomp3_session";
/// Its name over https: a `__Host-` cookie must be `Secure`, for `Path=/` and no `Domain`,
/// so a sibling subdomain cannot set one, nor a page set it for a narrower path.
pub const HOST_COOKIE_NAME: &str = "__Host-mp4tomp3_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(sign_in, current, sign_out))
}

fn https(state: &AppState) -> bool {
    state.config.public_url.starts_with("https://")
}

/// The session cookie's name on this server.
fn cookie_name(state: &AppState) -> &'static str {
    if https(state) { HOST_COOKIE_NAME } else { COOKIE_NAME }
}

/// The session token in the request's cookies, if any. More than one session cookie is
/// refused: the others were set by someone else (a page on another port or a sibling
/// subdomain can add one for a narrower path, which the browser sends first), and taking
/// either would let that page choose whose account the browser acts in.
fn session_token(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut found = session_cookies(headers);
    let first = found.next();
    if found.next().is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the request carries more than one session cookie (another site may have set one); \
             clear this site's cookies and sign in again",
        ));
    }
    // Over https only the __Host- cookie counts.
    Ok(first
        .filter(|c| c.name() == cookie_name(state))
        .map(|c| c.value().to_string()))
}

/// The credential a request carries: its Bearer token, else its session cookie.
pub(super) fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(token) = bearer(headers) {
        return Some(token.to_string());
    }
    session_cookies(headers).next().map(|c| c.value().to_string())
}

/// The request's session cookies, under either name, in the order sent.
fn session_cookies(headers: &HeaderMap) -> impl Iterator<Item = Cookie<'_>> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(|c| c.name() == COOKIE_NAME || c.name() == HOST_COOKIE_NAME)
}

/// Whether `origin` is this server: the configured public URL's origin, or the `Host` the
/// request was sent to under the scheme it was sent with (the public URL's, or the one a
/// proxy names in `X-Forwarded-Proto`; a page cannot add that header to a cross-origin
/// request without a preflight, which we do not answer). `http://host` is not `https://host`.
fn same_origin(state: &AppState, headers: &HeaderMap, origin: &str) -> bool {
    let public = url::Url::parse(&state.config.public_url).ok();
    if public.as_ref().map(|u| u.origin().ascii_serialization()).as_deref() == Some(origin) {
        return true;
    }
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .or_else(|| public.map(|u| u.scheme().to_string()))
        .unwrap_or_else(|| "http".to_string());
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    host.is_some_and(|host| origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")))
}

/// The caller: a Bearer token, else the session cookie (with, on a state-changing method,
/// our origin and the CSRF token).
pub(super) async fn caller(state: &AppState, parts: &Parts) -> Result<Principal, ApiError> {
    if let Some(token) = bearer(&parts.headers) {
        return super::verify_in(state, token).await;
    }
    let token = session_token(state, &parts.headers)?.ok_or_else(ApiError::missing_credentials)?;
    if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        check_origin(state, &parts.headers)?;
        let given = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !state.config.keys.csrf_ok(&token, given) {
            return Err(ApiError::forbidden(
                "a request made with the session cookie needs its X-CSRF-Token",
            ));
        }
    }
    super::verify_in(state, &token).await
}

fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(ORIGIN).map(|o| o.to_str().unwrap_or("")) {
        Some(origin) if !same_origin(state, headers, origin) => Err(ApiError::forbidden(
            "a request from another origin may not use the session cookie",
        )),
        _ => Ok(()),
    }
}

fn session_cookie(state: &AppState, value: String, max_age: cookie::time::Duration) -> HeaderValue {
    let cookie = Cookie::build((cookie_name(state), value))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(https(state))
        .path("/")
        .max_age(max_age)
        .build();
    HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Who is signed in.
#[derive(Serialize, ToSchema)]
struct SessionJson {
    /// The user.
    email: String,
    /// An admin.
    admin: bool,
    /// Send it as `X-CSRF-Token` with every state-changing request made with the cookie.
    csrf_token: String,
}

/// An email and password.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"email": "ann@example.com", "password": "correct horse battery"}))]
struct SignIn {
    email: String,
    password: String,
}

/// Signs in (as `POST /v1/auth/token`: throttled, with lockout) and sets the session cookie.
#[utoipa::path(post, path = "/v1/session", tag = "auth", operation_id = "sign_in",
    request_body = SignIn,
    responses(
        (status = 200, description = "Signed in; `Set-Cookie` holds the session", body = SessionJson,
            headers(("Set-Cookie" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = TooLarge),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ))]
async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<SignIn>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    // A page of another origin may not sign a browser in (login CSRF).
    check_origin(&state, &headers)?;
    let Json(body) = body.map_err(ApiError::json)?;
    let issued = super::auth::login(body.email, body.password, client.ip()).await?;
    let who = verify(&issued.token).await?;
    let ttl = cookie::time::Duration::seconds(i64::try_from(issued.expires_in).unwrap_or(3600));
    let answer = SessionJson {
        email: who.email,
        admin: who.admin,
        csrf_token: state.config.keys.csrf_token(&issued.token),
    };
    let mut response = Json(answer).into_response();
    let cookie = session_cookie(&state, issued.token, ttl);
    response.headers_mut().insert(SET_COOKIE, cookie);
    Ok(response)
}

/// Who the session cookie signs in, and its CSRF token.
#[utoipa::path(get, path = "/v1/session", tag = "auth", operation_id = "get_session",
    security(("session" = [])),
    responses(
        (status = 200, description = "Signed in", body = SessionJson),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ))]
async fn current(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<SessionJson>, ApiError> {
    let token = session_token(&state, &headers)?.ok_or_else(ApiError::missing_credentials)?;
    let who = verify(&token).await?;
    Ok(Json(SessionJson {
        email: who.email,
        admin: who.admin,
        csrf_token: state.config.keys.csrf_token(&token),
    }))
}

/// Signs out: the session's token is revoked on every node and the cookie is cleared.
#[utoipa::path(delete, path = "/v1/session", tag = "auth", operation_id = "sign_out",
    responses(
        (status = 204, description = "Signed out", headers(("Set-Cookie" = String))),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ))]
async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    // Signing out is harmless, but another origin may not do it either.
    check_origin(&state, &headers)?;
    // The session's token stops working everywhere, not only in this browser.
    if let Some(token) = session_token(&state, &headers)? {
        crate::actors::ask(
            crate::actors::Role::Auth,
            |reply| crate::actors::auth::AuthMsg::SignOut { token, reply },
            crate::actors::CALL_TIMEOUT,
        )
        .await??;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let cookie = session_cookie(&state, String::new(), cookie::time::Duration::ZERO);
    response.headers_mut().insert(SET_COOKIE, cookie);
    Ok(response)
}
