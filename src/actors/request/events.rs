//! Job events, cluster-wide: what `GET /v1/events` streams.
//!
//! DESIGN — every node hears every owner. The node that owns a job (the request actor that
//! stores it) publishes each change of it into its own [`Events`] ring and casts the same
//! event to every other node's events actor (pg group [`GROUP`]), which appends it to its
//! ring. A subscriber reads only the ring of the node it is connected to, whichever pod the
//! Service sent it to: nothing is asked of other nodes at connect time and nothing is
//! registered anywhere. A job converted on node C is reported by its owner B (C reports its
//! progress to B already), so a browser on A sees it. Chosen over a pg group per user
//! because events are few (a converting job makes at most 2 progress events a second,
//! `converter::PROGRESS_EVERY`) and a ring that holds everyone's events serves admins'
//! `?all=true` and reconnections to another pod the same way.
//!
//! Event ids are `{ring}.{seq}.{ms}`: `ring` names this node's ring (random per process),
//! `seq` the event's place in it, `ms` the owner's clock when the change was published. A
//! `Last-Event-ID` from this ring resumes exactly after that event (while the ring holds
//! it: [`KEEP`], at most [`KEEP_MAX`] events); one from another node's ring or an earlier
//! process resumes with the events published since `ms` − [`RESUME_SLACK_MS`] (some may
//! repeat; the slack covers events from different owners arriving out of order).
//!
//! Limits: a node cut off from an owner (a partition) misses that owner's events until it
//! can hear it again; clients that need every final state also have `GET /v1/jobs` and
//! the webhooks, which go through the owner's outbox.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorClusterMessage;
use tokio::sync::watch;

use super::jobs::JobView;
use crate::config::Config;
use crate::store::{Job, JobState, now_ms};

/// The process group of the events actors.
pub const GROUP: &str = "events.v1";
/// How long a ring keeps events.
pub const KEEP: Duration = Duration::from_secs(10 * 60);
/// The most events a ring keeps.
pub const KEEP_MAX: usize = 20_000;
/// How far before a foreign `Last-Event-ID`'s time a resumption starts.
pub const RESUME_SLACK_MS: i64 = 10_000;

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Accepted.
    Created,
    /// Its state or progress changed and it has not ended (fetching, converting, queued
    /// again after a node was lost).
    Progress,
    /// Done: the MP3 is ready.
    Finished,
    /// Failed, with its reason.
    Failed,
    /// Canceled by its user.
    Canceled,
    /// Deleted by its user.
    Deleted,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::Created,
        Kind::Progress,
        Kind::Finished,
        Kind::Failed,
        Kind::Canceled,
        Kind::Deleted,
    ];

    /// The event's type as the API names it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Created => "job.created",
            Kind::Progress => "job.progress",
            Kind::Finished => "job.finished",
            Kind::Failed => "job.failed",
            Kind::Canceled => "job.canceled",
            Kind::Deleted => "job.deleted",
        }
    }

    /// The kind of a change that left a job in `state`.
    pub fn of(state: JobState) -> Kind {
        match state {
            JobState::Queued | JobState::Fetching | JobState::Converting => Kind::Progress,
            JobState::Done => Kind::Finished,
            JobState::Failed => Kind::Failed,
            JobState::Canceled => Kind::Canceled,
        }
    }

    fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One event in a ring.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its id (see the module's notes).
    pub id: String,
    /// What happened.
    pub kind: Kind,
    /// When the owner published it (ms since the epoch, the owner's clock).
    pub at_ms: i64,
    /// The job after the change.
    pub job: Arc<Job>,
    seq: u64,
}

/// Where a subscriber is in a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The next event wanted is this ring's `seq`.
    Next(u64),
    /// Every event published since this time (ms), then on from there.
    Since(i64),
}

/// This node's ring of recent job events (cheap to clone; outlives actor restarts).
#[derive(Clone)]
pub struct Events(Arc<Inner>);

struct Inner {
    ring_id: String,
    ring: Mutex<Ring>,
    last: watch::Sender<u64>,
}

#[derive(Default)]
struct Ring {
    events: VecDeque<Event>,
    next: u64,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// An empty ring with a fresh id.
    pub fn new() -> Self {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        let ring_id = if bytes == [0; 4] {
            format!("{:08x}", now_ms() as u32) // no OS randomness: still differs per start
        } else {
            hex::encode(bytes)
        };
        Events(Arc::new(Inner {
            ring_id,
            ring: Mutex::new(Ring::default()),
            last: watch::channel(0).0,
        }))
    }

    /// The owner's side: records a change of one of this node's jobs and sends it to every
    /// other node's ring.
    pub fn publish(&self, kind: Kind, job: &Job) {
        let at_ms = now_ms();
        let wire = JobEvent {
            kind: kind.name().to_string(),
            at_ms,
            job: Some(JobView::from(job)),
        };
        for cell in ractor::pg::get_members(&GROUP.to_string()) {
            if !cell.get_id().is_local() {
                let _ = cell.send_message(EventsMsg::Job(wire.clone()));
            }
        }
        self.push(kind, at_ms, job.clone());
    }

    fn push(&self, kind: Kind, at_ms: i64, job: Job) {
        let seq = {
            let mut ring = self.0.ring.lock().unwrap_or_else(|p| p.into_inner());
            let seq = ring.next;
            ring.next += 1;
            ring.events.push_back(Event {
                id: format!("{}.{seq}.{at_ms}", self.0.ring_id),
                kind,
                at_ms,
                job: Arc::new(job),
                seq,
            });
            let oldest = now_ms() - KEEP.as_millis() as i64;
            while ring.events.len() > KEEP_MAX
                || ring
                    .events
                    .front()
                    .is_some_and(|e| e.at_ms < oldest && e.seq + 1 < ring.next)
            {
                ring.events.pop_front();
            }
            seq
        };
        self.0.last.send_replace(seq + 1);
    }

    /// Where a subscriber starts: after the event `last_event_id` names, or with what comes
    /// next if none (or an unreadable one) is given.
    pub fn cursor(&self, last_event_id: Option<&str>) -> Cursor {
        let parsed = last_event_id.and_then(|id| {
            let mut parts = id.trim().splitn(3, '.');
            let (ring, seq, ms) = (parts.next()?, parts.next()?, parts.next()?);
            Some((ring, seq.parse::<u64>().ok()?, ms.parse::<i64>().ok()?))
        });
        match parsed {
            Some((ring, seq, _)) if ring == self.0.ring_id && seq < self.next() => Cursor::Next(seq + 1),
            Some((_, _, ms)) => Cursor::Since(ms - RESUME_SLACK_MS),
            None => Cursor::Next(self.next()),
        }
    }

    fn next(&self) -> u64 {
        self.0.ring.lock().unwrap_or_else(|p| p.into_inner()).next
    }

    /// Up to `max` events from `cursor` on, moving it past them.
    pub fn read(&self, cursor: &mut Cursor, max: usize) -> Vec<Event> {
        let ring = self.0.ring.lock().unwrap_or_else(|p| p.into_inner());
        let out: Vec<Event> = match *cursor {
            Cursor::Next(seq) => {
                let first = ring.events.front().map_or(ring.next, |e| e.seq);
                let skip = usize::try_from(seq.saturating_sub(first)).unwrap_or(usize::MAX);
                ring.events.iter().skip(skip).take(max).cloned().collect()
            }
            Cursor::Since(ms) => ring
                .events
                .iter()
                .filter(|e| e.at_ms >= ms)
                .take(max)
                .cloned()
                .collect(),
        };
        *cursor = match (out.last(), *cursor) {
            // A full batch: go on by seq after its last event.
            (Some(last), _) if out.len() == max => Cursor::Next(last.seq + 1),
            (Some(last), Cursor::Next(_)) => Cursor::Next(last.seq + 1),
            // The whole ring was scanned by time: go on with what comes next.
            (_, Cursor::Since(_)) => Cursor::Next(ring.next),
            (None, c) => c,
        };
        out
    }

    /// Changes whenever an event is added.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.0.last.subscribe()
    }
}

/// An event on the wire, from its owner to the other nodes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobEvent {
    /// [`Kind::name`].
    #[prost(string, tag = "1")]
    pub kind: String,
    /// When the owner published it.
    #[prost(int64, tag = "2")]
    pub at_ms: i64,
    /// The job after the change.
    #[prost(message, optional, tag = "3")]
    pub job: Option<JobView>,
}

ractor_cluster::derive_serialization_for_prost_type! {JobEvent}

/// The events actor's messages (from other nodes).
#[derive(RactorClusterMessage)]
pub enum EventsMsg {
    /// A change of one of the sender's jobs.
    Job(JobEvent),
}

/// The request role's events face: appends other owners' events to this node's ring.
pub struct EventsActor(pub Events);

impl Actor for EventsActor {
    type Msg = EventsMsg;
    type State = Events;
    type Arguments = Arc<Config>;

    async fn pre_start(&self, myself: ActorRef<EventsMsg>, _config: Arc<Config>) -> Result<Events, ActorProcessingErr> {
        ractor::pg::join(GROUP.to_string(), vec![myself.get_cell()]);
        Ok(self.0.clone())
    }

    async fn handle(
        &self,
        _myself: ActorRef<EventsMsg>,
        message: EventsMsg,
        events: &mut Events,
    ) -> Result<(), ActorProcessingErr> {
        let EventsMsg::Job(event) = message;
        let job = event.job.as_ref().and_then(JobView::to_job);
        match (Kind::parse(&event.kind), job) {
            (Some(kind), Some(job)) => events.push(kind, event.at_ms, job),
            _ => tracing::debug!(kind = %event.kind, "unreadable job event from another node ignored"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JobId, Source};

    fn job(n: u32) -> Job {
        Job {
            id: JobId::new("node-a"),
            owner_email: format!("u{n}@example.org"),
            state: JobState::Queued,
            progress: 0.0,
            error_code: None,
            error_message: None,
            source: Source::Upload,
            file_name: format!("{n}.mp4"),
            bitrate_kbps: None,
            vbr_quality: None,
            attempt: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            finished_at_ms: None,
            webhook_url: None,
            webhook: None,
            produced: None,
        }
    }

    #[test]
    fn a_subscriber_reads_what_comes_after_it_connected_and_resumes_after_its_last_id() {
        let events = Events::new();
        let t0 = now_ms();
        events.push(Kind::Created, t0, job(0));
        let mut cursor = events.cursor(None);
        assert!(
            events.read(&mut cursor, 10).is_empty(),
            "nothing older than the connection"
        );
        for n in 1..=5 {
            events.push(Kind::Progress, t0 + i64::from(n), job(n));
        }
        let first = events.read(&mut cursor, 2);
        assert_eq!(
            first.iter().map(|e| e.job.file_name.as_str()).collect::<Vec<_>>(),
            ["1.mp4", "2.mp4"]
        );
        // Reconnecting with the last id seen gets exactly the rest.
        let mut resumed = events.cursor(Some(&first[1].id));
        let rest = events.read(&mut resumed, 100);
        assert_eq!(
            rest.iter().map(|e| e.job.file_name.as_str()).collect::<Vec<_>>(),
            ["3.mp4", "4.mp4", "5.mp4"]
        );
        assert!(events.read(&mut resumed, 100).is_empty());
        events.push(Kind::Finished, t0 + 1_000, job(6));
        assert_eq!(events.read(&mut resumed, 100).len(), 1);
    }

    #[test]
    fn an_id_from_another_ring_resumes_by_time_with_slack() {
        let events = Events::new();
        let t0 = now_ms() - 60_000;
        events.push(Kind::Created, t0, job(1));
        events.push(Kind::Created, t0 - 5_000, job(2)); // from a slower owner, arrived later
        events.push(Kind::Created, t0 + 50_000, job(3));
        events.push(Kind::Created, t0 - 20_000, job(4)); // too old
        let mut cursor = events.cursor(Some(&format!("ffffffff.7.{}", t0 + 4_000)));
        assert_eq!(cursor, Cursor::Since(t0 + 4_000 - RESUME_SLACK_MS));
        let got = events.read(&mut cursor, 100);
        assert_eq!(
            got.iter().map(|e| e.job.file_name.as_str()).collect::<Vec<_>>(),
            ["1.mp4", "2.mp4", "3.mp4"]
        );
        assert_eq!(cursor, Cursor::Next(4));
        // Garbage is a fresh start, never an error.
        assert_eq!(events.cursor(Some("nonsense")), Cursor::Next(4));
    }

    #[test]
    fn the_ring_keeps_at_most_keep_max_events() {
        let events = Events::new();
        let now = now_ms();
        for n in 0..(KEEP_MAX as u32 + 10) {
            events.push(Kind::Progress, now, job(n));
        }
        let mut cursor = Cursor::Next(0);
        let all = events.read(&mut cursor, usize::MAX);
        assert_eq!(all.len(), KEEP_MAX);
        assert_eq!(all[0].job.file_name, "10.mp4", "the oldest went first");
    }
}
