//! The node's metrics, in the Prometheus text format at `GET /metrics`.
//!
//! Counters and histograms are updated where things happen (HTTP middleware, converter,
//! notifier); gauges (jobs by state, queue depth, converter slots, cluster members) are read
//! from the actors at each scrape.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    slot: &'static str,
}

struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    emails: Family<OutcomeLabels, Counter>,
    webhook_calls: Family<OutcomeLabels, Counter>,
    conversion_seconds: Histogram,
    realtime_factor: Histogram,
    jobs: Family<StateLabels, Gauge>,
    queue_depth: Gauge,
    slots: Family<SlotLabels, Gauge>,
    members: Gauge,
    replicas: Gauge,
    free_bytes: Gauge,
    low_storage: Gauge,
    stored_bytes: Family<KindLabels, Gauge>,
    adopted: Counter,
    meta_leader: Gauge,
    meta_term: Gauge,
    meta_voters: Gauge,
    meta_applied: Gauge,
}

static METRICS: LazyLock<Mutex<Metrics>> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("mp4tomp3");
    let http_requests = Family::<HttpLabels, Counter>::default();
    registry.register(
        "http_requests",
        "HTTP requests by route and status",
        http_requests.clone(),
    );
    let emails = Family::<OutcomeLabels, Counter>::default();
    registry.register("emails", "Email deliveries by outcome (sent, failed)", emails.clone());
    let webhook_calls = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "webhook_calls",
        "Webhook call attempts by outcome (delivered, retry, gone, refused)",
        webhook_calls.clone(),
    );
    let conversion_seconds = Histogram::new([0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]);
    registry.register(
        "conversion_seconds",
        "Wall time of conversions run on this node",
        conversion_seconds.clone(),
    );
    let realtime_factor = Histogram::new([1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0]);
    registry.register(
        "conversion_realtime_factor",
        "Seconds of audio converted per second of wall time",
        realtime_factor.clone(),
    );
    let jobs = Family::<StateLabels, Gauge>::default();
    registry.register("jobs", "This node's jobs by state", jobs.clone());
    let queue_depth = Gauge::default();
    registry.register("queue_depth", "Jobs waiting for a converter slot", queue_depth.clone());
    let slots = Family::<SlotLabels, Gauge>::default();
    registry.register(
        "converter_slots",
        "This node's converter slots: busy (a job each), free, and lent (free slots a running job encodes segments on, given back to the next job)",
        slots.clone(),
    );
    let members = Gauge::default();
    registry.register(
        "cluster_members",
        "Peers this node sees (itself excluded)",
        members.clone(),
    );
    let replicas = Gauge::default();
    registry.register(
        "cluster_replicas",
        "Nodes the cluster should have, this one included: the StatefulSet's declared replicas \
         (kube discovery), the configured peers and this node (static), 1 alone; -1 until known",
        replicas.clone(),
    );
    let free_bytes = Gauge::default();
    registry.register(
        "data_free_bytes",
        "Bytes free on this node's data volume",
        free_bytes.clone(),
    );
    let stored_bytes = Family::<KindLabels, Gauge>::default();
    registry.register(
        "stored_bytes",
        "Bytes this node stores: job inputs, MP3s, unfinished resumable uploads (measured every minute)",
        stored_bytes.clone(),
    );
    let low_storage = Gauge::default();
    registry.register(
        "data_low_storage",
        "1 while the data volume is under its reserve (uploads refused with 507)",
        low_storage.clone(),
    );
    let meta_leader = Gauge::default();
    registry.register(
        "metadata_is_leader",
        "1 while this node leads the replicated metadata group",
        meta_leader.clone(),
    );
    let meta_term = Gauge::default();
    registry.register("metadata_term", "The metadata group's Raft term", meta_term.clone());
    let meta_voters = Gauge::default();
    registry.register(
        "metadata_voters",
        "Voters of the metadata group (as this node's log has them)",
        meta_voters.clone(),
    );
    let meta_applied = Gauge::default();
    registry.register(
        "metadata_applied_index",
        "The last metadata log index this node applied",
        meta_applied.clone(),
    );
    let adopted = Counter::default();
    registry.register(
        "jobs_adopted",
        "Jobs this node took over from pods leaving on scale-down",
        adopted.clone(),
    );
    Mutex::new(Metrics {
        registry,
        adopted,
        http_requests,
        emails,
        webhook_calls,
        conversion_seconds,
        realtime_factor,
        jobs,
        queue_depth,
        slots,
        members,
        replicas,
        free_bytes,
        low_storage,
        stored_bytes,
        meta_leader,
        meta_term,
        meta_voters,
        meta_applied,
    })
});

fn with<T>(f: impl FnOnce(&Metrics) -> T) -> T {
    f(&METRICS.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Counts an HTTP request (`route` is the matched route pattern, never the raw path).
pub fn http_request(route: &str, method: &str, status: u16) {
    let labels = HttpLabels {
        route: route.to_string(),
        method: method.to_string(),
        status,
    };
    with(|m| m.http_requests.get_or_create(&labels).inc());
}

/// Counts an email delivery attempt.
pub fn email(sent: bool) {
    let outcome = if sent { "sent" } else { "failed" };
    with(|m| m.emails.get_or_create(&OutcomeLabels { outcome }).inc());
}

/// Sets the bytes stored: job inputs, MP3s, unfinished uploads.
pub fn stored(inputs: u64, mp3s: u64, uploads: u64) {
    with(|m| {
        for (kind, n) in [("inputs", inputs), ("mp3s", mp3s), ("uploads", uploads)] {
            m.stored_bytes.get_or_create(&KindLabels { kind }).set(gauge(n));
        }
    });
}

/// Counts a webhook call attempt by how it ended.
pub fn webhook_call(outcome: &'static str) {
    with(|m| m.webhook_calls.get_or_create(&OutcomeLabels { outcome }).inc());
}

/// Sets how many converter slots are lent to running jobs for their segments.
pub fn lent_slots(n: usize) {
    with(|m| m.slots.get_or_create(&SlotLabels { slot: "lent" }).set(gauge(n as u64)));
}

/// Records a finished conversion: its wall time and the audio it produced.
pub fn conversion(wall: Duration, audio: Duration) {
    let secs = wall.as_secs_f64();
    with(|m| {
        m.conversion_seconds.observe(secs);
        if secs > 0.0 {
            m.realtime_factor.observe(audio.as_secs_f64() / secs);
        }
    });
}

/// Counts a job taken over from a leaving pod.
pub fn adopted() {
    with(|m| m.adopted.inc());
}

/// What the actors say at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Jobs by state.
    pub jobs: Vec<(&'static str, u64)>,
    /// Jobs waiting for a slot.
    pub queue_depth: usize,
    /// Converter slots `(busy, total)`.
    pub slots: (usize, usize),
    /// Peers seen.
    pub members: usize,
    /// The nodes there should be (`None`: not known yet).
    pub replicas: Option<usize>,
    /// The data volume.
    pub storage: crate::cluster::probe::Storage,
    /// The metadata group as this node sees it, and whether this node leads it.
    pub meta: (crate::meta::MetaStatus, bool),
}

/// The text exposition, with the gauges set from `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    with(|m| {
        m.jobs.clear();
        for (state, n) in &snapshot.jobs {
            m.jobs.get_or_create(&StateLabels { state }).set(gauge(*n));
        }
        m.queue_depth.set(gauge(snapshot.queue_depth as u64));
        let (busy, total) = snapshot.slots;
        m.slots
            .get_or_create(&SlotLabels { slot: "busy" })
            .set(gauge(busy as u64));
        let free = total.saturating_sub(busy) as u64;
        m.slots.get_or_create(&SlotLabels { slot: "free" }).set(gauge(free));
        m.members.set(gauge(snapshot.members as u64));
        m.replicas.set(snapshot.replicas.map_or(-1, |n| gauge(n as u64)));
        m.free_bytes.set(gauge(snapshot.storage.free_bytes));
        m.low_storage.set(i64::from(snapshot.storage.low));
        let (meta, leads) = &snapshot.meta;
        m.meta_leader.set(i64::from(*leads));
        m.meta_term.set(gauge(meta.term));
        m.meta_voters.set(gauge(meta.voters.len() as u64));
        m.meta_applied.set(gauge(meta.applied));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
        out
    })
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
