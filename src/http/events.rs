//! `GET /v1/events`: the caller's job events as Server-Sent Events, from every node of the
//! cluster (how they get here: `actors/request/events.rs`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::responses::{BadRequest, Forbidden, Unauthorized};
use super::{ApiError, AppState, Authed, ErrorCode};
use crate::actors::request::events::{Cursor, Event, Events};
use crate::auth::Principal;
use crate::view::event_body;

/// A comment line this often keeps proxies and clients from timing the stream out.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Events read from the ring at a time.
const BATCH: usize = 256;
/// How often a stream checks its credential again: a stream ends within this of its token
/// being revoked (password changed, user removed, admin rights taken).
const RECHECK: Duration = Duration::from_secs(2);

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// Which jobs' events.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Filter {
    /// Every user's jobs (admins only).
    all: Option<bool>,
}

/// A live stream (`text/event-stream`) of the caller's job events: `job.created`,
/// `job.progress` (at most 2 a second per job), `job.finished`, `job.failed`,
/// `job.canceled`, `job.deleted`; each with an `id`, its type as the `event`, and the job
/// as JSON `data` (schema `JobEvent`). Events of jobs on every node arrive, whichever node
/// serves the stream. A comment line comes every 15 s. Reconnecting with `Last-Event-ID`
/// resumes after that event (events may repeat; the last 10 minutes are kept).
#[utoipa::path(get, path = "/v1/events", tag = "jobs", operation_id = "job_events",
    security(("bearer" = [])),
    params(Filter, ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received")),
    responses(
        (status = 200, description = "The event stream; each event's data is a JobEvent",
            content_type = "text/event-stream", body = String),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ))]
async fn stream(
    State(state): State<AppState>,
    Authed(who): Authed,
    headers: HeaderMap,
    filter: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(filter) = filter.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let all = filter.all.unwrap_or(false);
    if all && !who.admin {
        return Err(ApiError::forbidden("only admins follow every user's jobs"));
    }
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let credential = super::session::credential(&headers).ok_or_else(ApiError::missing_credentials)?;
    let feed = Feed {
        credential,
        checked: tokio::time::Instant::now(),
        cursor: state.events.cursor(last),
        watch: state.events.watch(),
        events: state.events.clone(),
        pending: VecDeque::new(),
        who,
        all,
    };
    let events = futures_util::stream::unfold(feed, Feed::next)
        .map(|e| Ok::<_, Infallible>(sse(&e)))
        .take_until(state.shutdown.clone().cancelled_owned());
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"));
    // Proxies (nginx and kin) must pass events on as they come.
    Ok(([("x-accel-buffering", "no")], sse).into_response())
}

fn sse(e: &Event) -> SseEvent {
    let data = event_body(&e.id, e.kind.name(), e.at_ms, &e.job);
    SseEvent::default()
        .id(e.id.clone())
        .event(e.kind.name())
        .data(String::from_utf8_lossy(&data))
}

/// One subscriber's place in the ring.
struct Feed {
    /// The token the stream was opened with, checked again every [`RECHECK`].
    credential: String,
    checked: tokio::time::Instant,
    events: Events,
    cursor: Cursor,
    watch: watch::Receiver<u64>,
    pending: VecDeque<Event>,
    who: Principal,
    all: bool,
}

impl Feed {
    fn visible(&self, e: &Event) -> bool {
        (self.all && self.who.admin) || e.job.owner_email.eq_ignore_ascii_case(&self.who.email)
    }

    /// Whether the stream's token still holds, with the rights it was opened with (checked
    /// every [`RECHECK`]). A revoked token ends the stream; a node too busy to answer does not.
    async fn still_allowed(&mut self) -> bool {
        if self.checked.elapsed() < RECHECK {
            return true;
        }
        self.checked = tokio::time::Instant::now();
        match super::verify(&self.credential).await {
            Ok(who) => {
                if who.admin != self.who.admin {
                    // Rights changed (tokens are revoked then too; this is the belt to it).
                    return false;
                }
                self.who = who;
                true
            }
            Err(e) => !matches!(e.status.as_u16(), 401 | 403),
        }
    }

    /// The next event this subscriber may see, waiting for one if need be; `None` ends the
    /// stream (revoked, or the ring closed).
    async fn next(mut self) -> Option<(Event, Feed)> {
        loop {
            if !self.still_allowed().await {
                return None;
            }
            if let Some(e) = self.pending.pop_front() {
                return Some((e, self));
            }
            // Marked seen before reading, so an event added after the read wakes us.
            self.watch.borrow_and_update();
            let batch = self.events.read(&mut self.cursor, BATCH);
            if batch.is_empty() {
                // Woken by an event, or when the credential is due for its next check.
                let due = self.checked + RECHECK;
                tokio::select! {
                    changed = self.watch.changed() => changed.ok()?,
                    () = tokio::time::sleep_until(due) => {}
                }
                continue;
            }
            let visible: Vec<Event> = batch.into_iter().filter(|e| self.visible(e)).collect();
            self.pending.extend(visible);
        }
    }
}
