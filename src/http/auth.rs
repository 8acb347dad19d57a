//! `POST /v1/auth/token` (JSON login), `POST /v1/me/password`, and `POST /v1/users` /
//! `DELETE /v1/users/{email}` (admins manage users).
//! The seed's `POST /login` (HTTP Basic) is in `seed.rs` and shares [`login`].

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, Path};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::responses::{
    BadRequest, Conflict, Forbidden, NotFound, TooLarge, TooManyRequests, Unauthorized, Unavailable, Unprocessable,
};
use super::{ApiError, AppState, Authed, ErrorCode};
use crate::actors::auth::{AuthMsg, Issued};
use crate::actors::{CALL_TIMEOUT, Role, ask};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(token))
        .routes(routes!(create_user, list_users))
        .routes(routes!(remove_user, change_user))
        .routes(routes!(change_password))
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

/// A user's credentials.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"email": "ann@example.com", "password": "correct horse battery"}))]
struct Credentials {
    email: String,
    password: String,
}

/// An access token.
#[derive(Serialize, ToSchema)]
struct Token {
    /// The JWT; send it as `Authorization: Bearer …`.
    access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until it expires.
    expires_in: u64,
}

impl From<Issued> for Token {
    fn from(issued: Issued) -> Self {
        Token {
            access_token: issued.token,
            token_type: "Bearer",
            expires_in: issued.expires_in,
        }
    }
}

/// Logs in: an access token for an email and password. Logins are throttled per client
/// address, and an account locks for a while after repeated wrong passwords.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth", operation_id = "login",
    request_body = Credentials,
    responses(
        (status = 200, description = "Logged in", body = Token),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = TooLarge),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ))]
async fn token(
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    body: Result<Json<Credentials>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Token>, ApiError> {
    let Json(body) = body.map_err(ApiError::json)?;
    Ok(Json(login(body.email, body.password, client.ip()).await?.into()))
}

/// A new user.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"email": "bob@example.com", "password": "a long passphrase", "admin": false}))]
struct NewUser {
    #[schema(format = Email)]
    email: String,
    /// 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    /// May manage users and see every job and the cluster.
    #[serde(default)]
    admin: bool,
}

/// A user.
#[derive(Serialize, ToSchema)]
struct User {
    email: String,
    admin: bool,
}

/// Creates a user (admins only). Every node learns it.
#[utoipa::path(post, path = "/v1/users", tag = "auth", operation_id = "create_user",
    security(("bearer" = [])),
    request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = User),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    ))]
async fn create_user(
    Authed(who): Authed,
    body: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<User>), ApiError> {
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
    Ok((StatusCode::CREATED, Json(User { email, admin })))
}

/// Every user (admins only), by email.
#[utoipa::path(get, path = "/v1/users", tag = "auth", operation_id = "list_users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The users", body = Vec<User>),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ))]
async fn list_users(Authed(who): Authed) -> Result<Json<Vec<User>>, ApiError> {
    if !who.admin {
        return Err(ApiError::forbidden("only admins list users"));
    }
    let users = ask(Role::Auth, |reply| AuthMsg::ListUsers { reply }, CALL_TIMEOUT).await??;
    Ok(Json(
        users.into_iter().map(|(email, admin)| User { email, admin }).collect(),
    ))
}

/// What changes about a user.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"admin": true}))]
struct UserChange {
    /// Make the user an admin, or not: their tokens stop working (they sign in again).
    admin: bool,
}

/// Makes a user an admin or not (admins only), on every node.
#[utoipa::path(patch, path = "/v1/users/{email}", tag = "auth", operation_id = "change_user",
    security(("bearer" = [])),
    params(("email" = String, Path, description = "The user's email")),
    request_body = UserChange,
    responses(
        (status = 200, description = "Changed", body = User),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 415, description = "Not JSON"),
        (status = 503, response = Unavailable),
    ))]
async fn change_user(
    Authed(who): Authed,
    Path(email): Path<String>,
    body: Result<Json<UserChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<User>, ApiError> {
    if !who.admin {
        return Err(ApiError::forbidden("only admins change users"));
    }
    let Json(body) = body.map_err(ApiError::json)?;
    if email.trim().eq_ignore_ascii_case(&who.email) && !body.admin {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "an admin cannot take their own admin rights",
        ));
    }
    let admin = body.admin;
    let key = email.clone();
    ask(
        Role::Auth,
        |reply| AuthMsg::SetAdmin {
            email: key,
            admin,
            reply,
        },
        CALL_TIMEOUT,
    )
    .await??;
    Ok(Json(User {
        email: email.trim().to_ascii_lowercase(),
        admin,
    }))
}

/// Removes a user (admins only): their tokens stop working on every node and every node
/// deletes their jobs and files.
#[utoipa::path(delete, path = "/v1/users/{email}", tag = "auth", operation_id = "remove_user",
    security(("bearer" = [])),
    params(("email" = String, Path, description = "The user's email")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    ))]
async fn remove_user(Authed(who): Authed, Path(email): Path<String>) -> Result<StatusCode, ApiError> {
    if !who.admin {
        return Err(ApiError::forbidden("only admins remove users"));
    }
    if email.trim().eq_ignore_ascii_case(&who.email) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "an admin cannot remove their own account",
        ));
    }
    ask(Role::Auth, |reply| AuthMsg::RemoveUser { email, reply }, CALL_TIMEOUT).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// A password change.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"current_password": "correct horse battery", "new_password": "a new long passphrase"}))]
struct PasswordChange {
    /// The password now.
    current_password: String,
    /// 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    new_password: String,
}

/// Changes the caller's password. Every token issued before stops working, on every node;
/// the answer is a fresh token. The current password is checked as a login is (throttled,
/// and failures count towards the lockout).
#[utoipa::path(post, path = "/v1/me/password", tag = "auth", operation_id = "change_password",
    security(("bearer" = [])),
    request_body = PasswordChange,
    responses(
        (status = 200, description = "Changed; a token that works from now on", body = Token),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = TooLarge),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ))]
async fn change_password(
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Authed(who): Authed,
    body: Result<Json<PasswordChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Token>, ApiError> {
    let Json(body) = body.map_err(ApiError::json)?;
    login(who.email.clone(), body.current_password, client.ip()).await?;
    let password = body.new_password;
    let email = who.email;
    let issued = ask(
        Role::Auth,
        |reply| AuthMsg::SetPassword { email, password, reply },
        CALL_TIMEOUT,
    )
    .await??;
    Ok(Json(issued.into()))
}
