//! The converter pool: a fixed number of slots, each running one conversion on a blocking
//! thread (the engine in `convert/` is synchronous and CPU-bound).
//!
//! A long conversion borrows the slots no job is using, one segment at a time (the
//! engine's N-way encoding, [`SlotPool`]): a job that arrives takes a slot at once (a
//! borrowed slot still counts as free), and the borrower gives it back when its current
//! segment ends — a 30 s upload never waits for a 10-hour file's remaining segments.
//!
//! The request actor places work with [`ConverterMsg::Convert`], which is refused when every
//! slot is busy. Progress and the result go back to the request actor (found by name when
//! they are sent, so they reach a restarted one), tagged with the attempt number so a
//! stale placement's result can be refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use self::host::{HostMsg, tell_host};
use super::Role;
use super::request::RequestMsg;
use crate::cluster::probe::Facts;
use crate::config::Config;
use crate::convert::{self, ConvertOptions, Hooks};
use crate::store::{JobId, Produced};

pub mod host;

/// Progress is reported at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// One conversion to run.
#[derive(Debug, Clone)]
pub struct ConvertTask {
    /// The job.
    pub id: JobId,
    /// Its attempt (fencing token).
    pub attempt: i64,
    /// The MP4.
    pub input: PathBuf,
    /// Where the MP3 goes (written atomically).
    pub output: PathBuf,
    /// Bitrate and limits.
    pub options: ConvertOptions,
    /// Who hears about progress and the result.
    pub report: ReportTo,
}

/// Who a conversion reports to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportTo {
    /// This node's request actor (its own jobs).
    Request,
    /// This node's host actor (another node's job, which it hands back).
    Host,
}

impl ConvertTask {
    fn progress(&self, fraction: f64) {
        let (id, attempt) = (self.id.clone(), self.attempt);
        match self.report {
            ReportTo::Request => {
                super::tell(Role::Request, RequestMsg::Progress { id, attempt, fraction });
            }
            ReportTo::Host => {
                tell_host(HostMsg::Progress(host::Progress {
                    job_id: id.to_string(),
                    attempt,
                    fraction,
                }));
            }
        }
    }

    fn finished(&self, outcome: Outcome) -> bool {
        let (id, attempt) = (self.id.clone(), self.attempt);
        match self.report {
            ReportTo::Request => super::tell(Role::Request, RequestMsg::Converted { id, attempt, outcome }),
            ReportTo::Host => {
                let piece = host::Piece {
                    job_id: id.to_string(),
                    attempt,
                    last: true,
                    ..host::Piece::default()
                };
                tell_host(HostMsg::Done(match outcome {
                    Ok(produced) => host::Piece {
                        duration_ms: u64::try_from(produced.duration_ms).unwrap_or(0),
                        warnings: produced.warnings.unwrap_or_default(),
                        ..piece
                    },
                    Err(failure) => host::Piece {
                        failed: failure.kind() as i32,
                        error_code: failure.code().to_string(),
                        error_message: failure.message(),
                        ..piece
                    },
                }))
            }
        }
    }
}

/// How a conversion ended: what it produced, or why not.
pub type Outcome = Result<Produced, Failure>;

/// The failure code of a conversion that found the data volume full.
const NO_SPACE: &str = "no_space";

/// Why a conversion made no MP3.
#[derive(Debug)]
pub enum Failure {
    /// The data volume is full: not the job's fault; its owner queues it again
    /// (request/storage.rs).
    NoSpace(String),
    /// Reading the input or writing the MP3 failed (`io_error`).
    Io(String),
    /// The input, or the encoder: the engine's typed error.
    Media(convert::ConvertError),
    /// The conversion panicked (`internal_error`).
    Crashed,
    /// A conversion on another node failed with this job failure code and message.
    Remote {
        /// Its code (`corrupt_media`, `io_error`, ...).
        code: String,
        /// Its message.
        message: String,
    },
}

impl Failure {
    /// A failure as another node reported it: a result piece's kind, code and message.
    pub fn from_wire(failed: host::Failed, code: String, message: String) -> Failure {
        match failed {
            host::Failed::NoSpace => Failure::NoSpace(message),
            host::Failed::Job | host::Failed::Unspecified => Failure::Remote { code, message },
        }
    }

    /// Its kind on the wire.
    pub fn kind(&self) -> host::Failed {
        match self {
            Failure::NoSpace(_) => host::Failed::NoSpace,
            _ => host::Failed::Job,
        }
    }

    /// The job failure code the job records (and the wire carries).
    pub fn code(&self) -> &str {
        match self {
            Failure::NoSpace(_) => NO_SPACE,
            Failure::Io(_) => "io_error",
            Failure::Crashed => "internal_error",
            Failure::Media(e) => e.code(),
            Failure::Remote { code, .. } => code,
        }
    }

    /// What a person reads.
    pub fn message(&self) -> String {
        match self {
            Failure::NoSpace(m) | Failure::Io(m) | Failure::Remote { message: m, .. } => m.clone(),
            Failure::Media(e) => e.to_string(),
            Failure::Crashed => "the converter crashed on this input".to_string(),
        }
    }
}

/// The slots, as conversions borrow them for segments.
#[derive(Debug)]
pub struct SlotPool {
    slots: usize,
    /// Conversions running (one slot each).
    running: AtomicUsize,
    /// Slots lent to running conversions for a segment.
    borrowed: AtomicUsize,
}

impl SlotPool {
    /// A pool of `slots`.
    pub fn new(slots: usize) -> Arc<SlotPool> {
        Arc::new(SlotPool {
            slots,
            running: AtomicUsize::new(0),
            borrowed: AtomicUsize::new(0),
        })
    }

    /// Slots lent for segments now.
    pub fn borrowed(&self) -> usize {
        self.borrowed.load(Ordering::Relaxed)
    }

    fn set_running(&self, n: usize) {
        self.running.store(n, Ordering::Relaxed);
    }
}

impl convert::Slots for SlotPool {
    fn try_take(&self) -> bool {
        let running = self.running.load(Ordering::Relaxed);
        let taken = self.borrowed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
            (running + b < self.slots).then_some(b + 1)
        });
        if let Ok(before) = taken {
            crate::metrics::lent_slots(before + 1);
        }
        taken.is_ok()
    }

    fn give_back(&self) {
        if let Ok(before) = self
            .borrowed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1))
        {
            crate::metrics::lent_slots(before - 1);
        }
    }
}

/// The converter's messages.
pub enum ConverterMsg {
    /// Run a conversion; `false` if no slot is free.
    Convert {
        /// What to convert.
        task: ConvertTask,
        /// Accepted or not.
        reply: RpcReplyPort<bool>,
    },
    /// Stop a running conversion (its result will be `canceled`).
    Cancel {
        /// The job.
        id: JobId,
    },
    /// A slot's conversion ended (sent by the slot itself).
    Finished {
        /// The job.
        id: JobId,
    },
    /// Busy and total slots.
    Status {
        /// `(busy, total)`.
        reply: RpcReplyPort<(usize, usize)>,
    },
}

impl ractor::Message for ConverterMsg {}

/// The converter pool actor.
pub struct ConverterActor;

/// Its state: the running conversions and their cancel flags.
pub struct ConverterState {
    slots: usize,
    running: HashMap<JobId, Arc<AtomicBool>>,
    /// What segments borrow.
    pool: Arc<SlotPool>,
    /// Where busy/total slots are published for the mesh's probe.
    facts: Facts,
}

impl ConverterState {
    fn publish(&self) {
        self.pool.set_running(self.running.len());
        self.facts.publish_slots((self.running.len(), self.slots));
    }
}

impl Actor for ConverterActor {
    type Msg = ConverterMsg;
    type State = ConverterState;
    type Arguments = (Arc<Config>, Facts);

    async fn pre_start(
        &self,
        _myself: ActorRef<ConverterMsg>,
        (config, facts): (Arc<Config>, Facts),
    ) -> Result<ConverterState, ActorProcessingErr> {
        let state = ConverterState {
            slots: config.converter_slots,
            running: HashMap::new(),
            pool: SlotPool::new(config.converter_slots),
            facts,
        };
        state.publish();
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConverterMsg>,
        state: &mut ConverterState,
    ) -> Result<(), ActorProcessingErr> {
        state.facts.publish_slots((0, 0));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ConverterMsg>,
        message: ConverterMsg,
        state: &mut ConverterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConverterMsg::Convert { task, reply } => {
                if state.running.len() >= state.slots || state.running.contains_key(&task.id) {
                    let _ = reply.send(false);
                    return Ok(());
                }
                let cancel = Arc::new(AtomicBool::new(false));
                state.running.insert(task.id.clone(), cancel.clone());
                state.publish();
                let _ = reply.send(true);
                let pool = state.pool.clone();
                tokio::task::spawn_blocking(move || {
                    let id = task.id.clone();
                    let attempt = task.attempt;
                    let outcome = in_background(|| run(&task, &cancel, pool)).unwrap_or(Err(Failure::Crashed));
                    match &outcome {
                        Ok(p) => tracing::info!(job_id = %id, attempt, warnings = p.warnings, "converted"),
                        Err(failure) => {
                            let (code, message) = (failure.code(), failure.message());
                            tracing::info!(job_id = %id, attempt, code, message, "conversion failed")
                        }
                    }
                    let _ = myself.send_message(ConverterMsg::Finished { id: id.clone() });
                    if !task.finished(outcome) {
                        tracing::warn!(job_id = %id, "nobody took the result; its owner places the job again");
                    }
                });
            }
            ConverterMsg::Cancel { id } => {
                if let Some(flag) = state.running.get(&id) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            ConverterMsg::Finished { id } => {
                state.running.remove(&id);
                state.publish();
                super::tell(Role::Request, RequestMsg::Dispatch);
            }
            ConverterMsg::Status { reply } => {
                let _ = reply.send((state.running.len(), state.slots));
            }
        }
        Ok(())
    }
}

/// How much lower than the node's other threads a conversion runs (a nice increment):
/// conversions are batch work, and on a busy pod the requests (an upload's admission, a
/// status read, a download) must not wait behind them for a core. A nice of 10 gives a
/// conversion about a tenth of a core's share against a request thread that wants to run;
/// with nothing else to run it has the whole core.
const CONVERT_NICE: i32 = 10;

/// Runs `work` on a thread of its own at [`CONVERT_NICE`] (on Linux a thread's nice value
/// is its own and is inherited by the threads it starts: the engine's decoder and segment
/// threads), so the blocking pool's threads keep their priority for the SQLite and file
/// work of requests. `Err` if `work` panicked. If no thread can be started, `work` runs on
/// this one, at its priority.
fn in_background<T: Send>(work: impl FnOnce() -> T + Send) -> std::thread::Result<T> {
    let work = std::sync::Mutex::new(Some(work));
    let take = || work.lock().unwrap_or_else(|p| p.into_inner()).take();
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("mp4tomp3-convert".into())
            .spawn_scoped(scope, || {
                let now = rustix::process::getpriority_process(None).unwrap_or(0);
                if let Err(e) = rustix::process::setpriority_process(None, (now + CONVERT_NICE).min(19)) {
                    tracing::debug!(error = %e, "a conversion runs at the node's priority");
                }
                take().map(|work| work())
            });
        let ran = match spawned {
            Ok(thread) => thread.join(),
            Err(e) => {
                tracing::warn!(error = %e, "no thread for a conversion; it runs on a pool thread");
                Ok(None)
            }
        };
        match ran {
            Ok(Some(done)) => Ok(done),
            Ok(None) => match take() {
                Some(work) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)),
                None => Err(Box::new("a conversion's work was taken and not done") as Box<dyn std::any::Any + Send>),
            },
            Err(panic) => Err(panic),
        }
    })
}

/// Hands `task` to this node's converter: `false` if no slot is free (or the converter is
/// restarting).
pub async fn start(task: ConvertTask) -> bool {
    let started = super::ask(
        Role::Converter,
        |reply| ConverterMsg::Convert { task, reply },
        super::CALL_TIMEOUT,
    )
    .await;
    started.unwrap_or(false)
}

/// One conversion, on a blocking thread: MP4 → temp file beside the output → fsync → rename.
fn run(task: &ConvertTask, cancel: &AtomicBool, pool: Arc<SlotPool>) -> Outcome {
    // A full disk is not the job's fault: the owner queues it again (request/storage.rs).
    let internal = |what: &str, e: &std::io::Error| {
        let message = format!("{what}: {e}");
        if e.kind() == std::io::ErrorKind::StorageFull {
            Failure::NoSpace(message)
        } else {
            Failure::Io(message)
        }
    };
    let input = std::fs::File::open(&task.input).map_err(|e| internal("cannot open the input", &e))?;
    let dir = task.output.parent().unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| internal("cannot create the output", &e))?;
    let last = std::sync::Mutex::new(Instant::now() - PROGRESS_EVERY);
    let progress = move |fraction: f64| {
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= PROGRESS_EVERY || fraction >= 1.0 {
            *last = Instant::now();
            task.progress(fraction);
        }
    };
    let hooks = Hooks {
        progress: Some(&progress),
        cancel: Some(cancel),
    };
    let started = Instant::now();
    // Every slot at most: the others only while no job needs them.
    let options = convert::ConvertOptions {
        threads: pool.slots,
        slots: Some(pool),
        ..task.options.clone()
    };
    let result = convert::convert(input, tmp.as_file_mut(), &options, hooks);
    match result {
        Ok(summary) => {
            crate::metrics::conversion(started.elapsed(), summary.duration);
            tmp.as_file()
                .sync_all()
                .map_err(|e| internal("cannot write the output", &e))?;
            let written = tmp
                .as_file()
                .metadata()
                .map_err(|e| internal("cannot write the output", &e))?;
            tmp.persist(&task.output)
                .map_err(|e| internal("cannot store the output", &e.error))?;
            crate::store::files::sync_dir(dir).map_err(|e| internal("cannot store the output", &e))?;
            Ok(Produced {
                mp3_bytes: i64::try_from(written.len()).unwrap_or(i64::MAX),
                duration_ms: i64::try_from(summary.duration.as_millis()).unwrap_or(i64::MAX),
                warnings: summary.warning(),
            })
        }
        Err(convert::ConvertError::Io(e)) => Err(internal("I/O error while converting", &e)),
        Err(e) => Err(Failure::Media(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::Slots;

    #[test]
    fn a_conversion_runs_below_the_nodes_priority_and_its_threads_too() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let (own, child) = in_background(|| {
            let own = rustix::process::getpriority_process(None).unwrap();
            let child = std::thread::spawn(|| rustix::process::getpriority_process(None).unwrap())
                .join()
                .unwrap();
            (own, child)
        })
        .unwrap();
        assert_eq!(own, (before + CONVERT_NICE).min(19));
        assert_eq!(child, own, "the engine's decoder and segment threads inherit it");
        assert_eq!(
            rustix::process::getpriority_process(None).unwrap(),
            before,
            "the caller keeps its own"
        );
        assert!(
            in_background(|| panic!("a hostile input")).is_err(),
            "a panic is an answer, not a crash"
        );
    }

    #[test]
    fn segments_borrow_free_slots_and_jobs_come_first() {
        let pool = SlotPool::new(3);
        pool.set_running(1);
        assert!(pool.try_take() && pool.try_take(), "two free slots are lent");
        assert!(!pool.try_take(), "no third");
        // A job arrives: it runs at once (borrowed slots count as free for jobs), and no
        // segment takes a slot again until the borrowers gave enough back.
        pool.set_running(2);
        pool.give_back();
        assert!(!pool.try_take(), "the freed slot is the new job's");
        pool.give_back();
        assert_eq!(pool.borrowed(), 0);
        assert!(pool.try_take(), "with 2 jobs on 3 slots one is free again");
        pool.give_back();
        pool.give_back();
        assert_eq!(pool.borrowed(), 0, "never below zero");
    }
}
