//! `GET /v1/cluster` (admins): this node and every member it sees, their roles, state,
//! converter slots, version, and the round-trip time of the last heartbeat to it; and the
//! replicated metadata's leader, term, voters and applied index.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, Authed};
use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::cluster::mesh::ClusterMsg;
use crate::cluster::probe::NodeStatus;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(cluster))
}

/// The cluster as this node sees it.
#[derive(Serialize, ToSchema)]
struct ClusterView {
    /// This node.
    #[serde(rename = "self")]
    this: NodeView,
    /// The other members this node knows (empty without a cluster).
    members: Vec<NodeView>,
    /// The replicated metadata (Raft) as this node's member sees it.
    metadata: MetadataView,
    /// How nodes talk: `mutual-tls`, `clear-text` (the cookie alone), or `none` (alone).
    #[schema(example = "mutual-tls")]
    transport: &'static str,
    /// Kube discovery (absent with static peers or alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    discovery: Option<super::health::DiscoveryStatus>,
    /// What an operator should know (a mesh in clear text, a failing discovery).
    warnings: Vec<String>,
}

/// The metadata group as one member sees it.
#[derive(Serialize, ToSchema)]
struct MetadataView {
    /// The leader's node name, if one is known.
    leader: Option<String>,
    /// The Raft term.
    term: u64,
    /// The voters' node names.
    voters: Vec<String>,
    /// The learners' node names (they receive the log, they do not vote).
    learners: Vec<String>,
    /// A change of voters is under way: until it ends, `voters` lists the old and the new
    /// voters together, and a majority of each must agree (a lost old voter stalls writes).
    changing: bool,
    /// The last log index this member applied.
    applied_index: u64,
    /// The last log index this member holds.
    last_log_index: u64,
}

/// One node: what its last heartbeat said (absent fields: no heartbeat answered yet).
#[derive(Serialize, ToSchema)]
struct NodeView {
    /// Its name (the pod name in Kubernetes).
    node: String,
    /// This run of the node (changes at every restart).
    incarnation: String,
    /// `up` or `suspect` (missed heartbeats), as this node sees it.
    state: String,
    /// Its cluster address.
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    /// Round-trip time of the last heartbeat, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_rtt_ms: Option<f64>,
    /// Its clock minus this node's, in milliseconds, from the last heartbeat (each node
    /// keeps its own time through jumps of its wall clock; a large offset is a node whose
    /// clock was wrong when it started).
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_offset_ms: Option<i64>,
    /// Its version.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// The roles it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<Vec<String>>,
    /// Its converter slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    slots: Option<Slots>,
    /// Its data volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<Storage>,
}

/// Converter slots.
#[derive(Serialize, ToSchema)]
struct Slots {
    busy: u32,
    free: u32,
    total: u32,
}

/// A data volume.
#[derive(Serialize, ToSchema)]
struct Storage {
    /// Free bytes.
    free_bytes: u64,
    /// Under the reserve (`--min-free-bytes`): takes no new work.
    low: bool,
}

impl Slots {
    fn of(status: &NodeStatus) -> Self {
        Slots {
            busy: status.busy_slots,
            free: status.total_slots.saturating_sub(status.busy_slots),
            total: status.total_slots,
        }
    }
}

impl Storage {
    fn of(status: &NodeStatus) -> Self {
        Storage {
            free_bytes: status.free_bytes,
            low: status.low_storage,
        }
    }
}

/// This node and every member it sees (admins only).
#[utoipa::path(get, path = "/v1/cluster", tag = "operations", operation_id = "cluster",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The cluster", body = ClusterView),
        (status = 401, response = super::responses::Unauthorized),
        (status = 403, response = super::responses::Forbidden),
        (status = 503, response = super::responses::Unavailable),
    ))]
async fn cluster(State(state): State<AppState>, Authed(who): Authed) -> Result<Json<ClusterView>, ApiError> {
    if !who.admin {
        return Err(ApiError::forbidden("only admins see the cluster"));
    }
    let me = state.facts.status(&state.config.node_name, "");
    let members = if state.config.cluster.is_some() {
        ask(Role::Cluster, |reply| ClusterMsg::Members { reply }, CALL_TIMEOUT).await?
    } else {
        Vec::new()
    };
    let transport = match state.config.cluster.as_ref() {
        None => "none",
        Some(c) if c.tls.is_some() => "mutual-tls",
        Some(_) => "clear-text",
    };
    let view = super::health::discovery(&state.config).await?;
    let warnings = super::health::mesh_warnings(&state.config, view.as_ref());
    let discovery = view.map(super::health::DiscoveryStatus::of);
    let members = members
        .iter()
        .map(|m| {
            let status = m.status.as_ref();
            NodeView {
                node: m.node.clone(),
                incarnation: m.name.clone(),
                state: m.state.to_string(),
                address: Some(m.address.clone()),
                heartbeat_rtt_ms: m.rtt.map(|d| d.as_secs_f64() * 1000.0),
                clock_offset_ms: m.clock_offset_ms,
                version: status.map(|s| s.version.clone()),
                roles: status.map(|s| s.roles.clone()),
                slots: status.map(Slots::of),
                storage: status.map(Storage::of),
            }
        })
        .collect();
    Ok(Json(ClusterView {
        this: NodeView {
            node: me.node.clone(),
            incarnation: me.incarnation.clone(),
            state: "up".into(),
            address: None,
            heartbeat_rtt_ms: None,
            clock_offset_ms: None,
            version: Some(me.version.clone()),
            roles: Some(me.roles.clone()),
            slots: Some(Slots::of(&me)),
            storage: Some(Storage::of(&me)),
        },
        members,
        metadata: {
            let m = state.meta.status();
            MetadataView {
                leader: m.leader,
                term: m.term,
                voters: m.voters,
                learners: m.learners,
                changing: m.changing,
                applied_index: m.applied,
                last_log_index: m.last_log,
            }
        },
        transport,
        discovery,
        warnings,
    }))
}
