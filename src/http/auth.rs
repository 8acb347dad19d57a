//! `POST /v1/auth/token` (JSON login) and `POST /v1/users` (admins create users).
//! The seed's `POST /login` (HTTP Basic) is in `seed.rs` and shares [`login`].

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Path};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{ApiError, AppState, Authed};
use crate::actors::auth::{AuthMsg, Issued};
use crate::actors::{CALL_TIMEOUT, Role, ask};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/token", post(token))
        .route("/v1/users", post(create_user))
        .route("/v1/users/{email}", delete(remove_user))
}

/// Logs in through the auth actor.
pub(super) async fn login(email: String, password: String, client: IpAddr) -> Result<Issued, ApiError> {
    Ok(ask(
        Role::Auth,
        |reply| AuthMsg::Login {
            email,
            password,
            client,
            reply,
        },
        CALL_TIMEOUT,
    )
    .await??)
}

#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

async fn token(
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    body: Result<Json<Credentials>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body.map_err(ApiError::json)?;
    let issued = login(body.email, body.password, client.ip()).await?;
    Ok(Json(serde_json::json!({
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    })))
}

#[derive(Deserialize)]
struct NewUser {
    email: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

async fn create_user(
    Authed(who): Authed,
    body: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if !who.admin {
        return Err(ApiError::forbidden("only admins create users"));
    }
    let Json(body) = body.map_err(ApiError::json)?;
    let admin = body.admin;
    let email = ask(
        Role::Auth,
        |reply| AuthMsg::CreateUser {
            email: body.email,
            password: body.password,
            admin,
            reply,
        },
        CALL_TIMEOUT,
    )
    .await??;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"email": email, "admin": admin})),
    ))
}

/// `DELETE /v1/users/{email}` (admins): the user's tokens stop working on every node and
/// every node deletes their jobs and files.
async fn remove_user(Authed(who): Authed, Path(email): Path<String>) -> Result<StatusCode, ApiError> {
    if !who.admin {
        return Err(ApiError::forbidden("only admins remove users"));
    }
    if email.trim().eq_ignore_ascii_case(&who.email) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "an admin cannot remove their own account",
        ));
    }
    ask(Role::Auth, |reply| AuthMsg::RemoveUser { email, reply }, CALL_TIMEOUT).await??;
    Ok(StatusCode::NO_CONTENT)
}
