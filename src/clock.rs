//! This node's time: the wall clock, without its jumps.
//!
//! Every time the service keeps or compares (token and link expiry, quota days, retention,
//! resumable uploads' expiry, the times on records) is [`now_ms`]: the wall clock as it was
//! when last trusted, carried forward by the monotonic clock (which NTP slews like the wall
//! clock but never steps). [`check`] (once a second, [`watch`]) compares the two:
//!
//! - within [`TOLERANCE_MS`] of each other, the kept time follows the wall clock;
//! - when the wall clock has stepped away (someone set it, a bad NTP source, a VM restored
//!   from a snapshot), the kept time follows it at once if the peers' times (from the mesh's
//!   heartbeats, [`peer_said`]) agree with the new wall clock — it was the kept time that was
//!   wrong, as after a suspended VM resumes — and not while they agree with the kept time; a
//!   node with no peer to ask follows a step once it has held for [`STEP_HOLD`].
//!
//! So a clock jump on one node changes neither its tokens' lifetimes, nor its records' times,
//! nor its quota days, and what it tells its peers. Peers' offsets are shown in
//! `/v1/cluster` (`clock_offset_ms`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How far the wall clock may be from the kept time and still be followed at once.
pub const TOLERANCE_MS: i64 = 1000;
/// How long a step of the wall clock must hold before a node with no peer to ask follows it.
pub const STEP_HOLD: Duration = Duration::from_secs(600);
/// How long a peer's reading counts.
const SAMPLE_AGE: Duration = Duration::from_secs(10);

struct Clock {
    start: Instant,
    /// The kept time at `start`: [`now_ms`] is this plus the monotonic time since.
    base: AtomicI64,
    watch: Mutex<Watch>,
}

#[derive(Default)]
struct Watch {
    /// Since when the wall clock has been away from the kept time, and by how much it was
    /// then (a second step starts a new hold).
    step_since: Option<(Instant, i64)>,
    /// Each peer's latest reading: when, its time − our wall clock, its time − our kept time.
    peers: HashMap<String, (Instant, i64, i64)>,
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(|| {
        let start = Instant::now();
        Clock {
            start,
            base: AtomicI64::new(wall_ms()),
            watch: Mutex::default(),
        }
    })
}

impl Clock {
    fn kept(&self) -> i64 {
        let since = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.base.load(Ordering::Relaxed).saturating_add(since)
    }
}

/// Milliseconds since the Unix epoch, as this node keeps them (see the module's doc).
pub fn now_ms() -> i64 {
    clock().kept()
}

/// Both clocks at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    wall: i64,
    kept: i64,
}

/// Reads both clocks.
pub fn read() -> Reading {
    Reading {
        wall: wall_ms(),
        kept: now_ms(),
    }
}

/// Peer `peer` said its time was `peer_ms` in a call sent at `before` and answered at
/// `after` (taken as read half-way). Answers the peer's offset from the kept time.
pub fn peer_said(peer: &str, before: Reading, after: Reading, peer_ms: i64) -> i64 {
    let wall = before.wall + (after.wall - before.wall) / 2;
    let kept = before.kept + (after.kept - before.kept) / 2;
    let offsets = (peer_ms - wall, peer_ms - kept);
    if let Ok(mut watch) = clock().watch.lock() {
        watch
            .peers
            .insert(peer.to_string(), (Instant::now(), offsets.0, offsets.1));
    }
    offsets.1
}

/// What the kept time does about the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Take the wall clock's time.
    Follow,
    /// Stay on the monotonic clock.
    Keep,
}

/// The rule of the module's doc: the wall clock is `wall_minus_kept` from the kept time and
/// has been away for `held`; `peers` are (peer − wall, peer − kept) of recent readings.
fn verdict(wall_minus_kept: i64, held: Duration, peers: &[(i64, i64)]) -> Verdict {
    if wall_minus_kept.abs() <= TOLERANCE_MS {
        return Verdict::Follow;
    }
    // Only a reading taken while the two clocks disagreed can tell which is right: one taken
    // before the step (both offsets alike) would let a few milliseconds of noise decide.
    let telling: Vec<(i64, i64)> = peers
        .iter()
        .copied()
        .filter(|(to_wall, to_kept)| (to_wall - to_kept).abs() > TOLERANCE_MS)
        .collect();
    if !telling.is_empty() {
        let median = |pick: fn(&(i64, i64)) -> i64| {
            let mut all: Vec<i64> = telling.iter().map(|p| pick(p).abs()).collect();
            all.sort_unstable();
            all[(all.len() - 1) / 2]
        };
        let (to_wall, to_kept) = (median(|p| p.0), median(|p| p.1));
        if to_wall <= TOLERANCE_MS && to_wall < to_kept {
            return Verdict::Follow;
        }
        if to_kept <= TOLERANCE_MS {
            return Verdict::Keep;
        }
    }
    if held >= STEP_HOLD {
        Verdict::Follow
    } else {
        Verdict::Keep
    }
}

/// Compares the wall clock with the kept time and follows it or not (the module's rule).
pub fn check() {
    let clock = clock();
    let Ok(mut watch) = clock.watch.lock() else {
        return;
    };
    watch.peers.retain(|_, (at, _, _)| at.elapsed() < SAMPLE_AGE);
    let now = read();
    let away = now.wall - now.kept;
    let stepped = away.abs() > TOLERANCE_MS;
    let held = if stepped {
        let new = match watch.step_since {
            Some((_, then)) => (away - then).abs() > TOLERANCE_MS,
            None => true,
        };
        if new {
            watch.step_since = Some((Instant::now(), away));
            tracing::warn!(
                jump_ms = away,
                "the wall clock jumped; this node keeps its own time until its peers confirm the new one \
                 (or, with none to ask, until it has held for {STEP_HOLD:?})"
            );
        }
        watch.step_since.map_or(Duration::ZERO, |(since, _)| since.elapsed())
    } else {
        watch.step_since = None;
        Duration::ZERO
    };
    let peers: Vec<(i64, i64)> = watch.peers.values().map(|&(_, w, k)| (w, k)).collect();
    if verdict(away, held, &peers) == Verdict::Follow {
        if stepped {
            tracing::warn!(jump_ms = away, "following the wall clock's step");
            watch.peers.clear();
        }
        watch.step_since = None;
        clock.base.fetch_add(away, Ordering::Relaxed);
    }
}

/// Checks the clock once a second, for ever.
pub async fn watch() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn small_differences_are_followed_and_a_jump_is_not() {
        assert_eq!(verdict(0, Duration::ZERO, &[]), Verdict::Follow);
        assert_eq!(verdict(-900, Duration::ZERO, &[]), Verdict::Follow);
        assert_eq!(verdict(HOUR, Duration::ZERO, &[]), Verdict::Keep);
        assert_eq!(verdict(-HOUR, Duration::from_secs(599), &[]), Verdict::Keep);
    }

    #[test]
    fn a_step_is_followed_after_the_hold_when_no_peer_can_tell() {
        assert_eq!(verdict(-HOUR, STEP_HOLD, &[]), Verdict::Follow);
        // Peers that agree with neither clock do not decide either.
        assert_eq!(verdict(HOUR, STEP_HOLD, &[(5 * HOUR, 6 * HOUR)]), Verdict::Follow);
        assert_eq!(verdict(HOUR, Duration::ZERO, &[(5 * HOUR, 6 * HOUR)]), Verdict::Keep);
    }

    #[test]
    fn peers_decide_which_clock_is_right() {
        // This node's wall clock jumped an hour ahead; its peers are where the kept time is.
        let peers = [(-HOUR + 3, 3), (-HOUR - 10, -10), (-HOUR, 0)];
        assert_eq!(verdict(HOUR, STEP_HOLD * 10, &peers), Verdict::Keep);
        // This node was suspended an hour: the wall clock is right, the kept time behind.
        let peers = [(3, HOUR + 3), (-10, HOUR - 10)];
        assert_eq!(verdict(HOUR, Duration::ZERO, &peers), Verdict::Follow);
        // A majority decides: one peer with a wrong clock of its own does not.
        let peers = [(3, HOUR + 3), (-10, HOUR - 10), (-2 * HOUR, -HOUR)];
        assert_eq!(verdict(HOUR, Duration::ZERO, &peers), Verdict::Follow);
    }

    #[test]
    fn readings_from_before_the_step_decide_nothing() {
        // Taken while both clocks agreed: a peer 3 ms nearer the wall clock than the kept
        // time then says nothing about an hour's step since (CI saw one decide).
        let before = [(3, 5), (-2, 4)];
        assert_eq!(verdict(HOUR, Duration::ZERO, &before), Verdict::Keep);
        assert_eq!(verdict(-HOUR, Duration::from_secs(5), &before), Verdict::Keep);
        assert_eq!(verdict(HOUR, STEP_HOLD, &before), Verdict::Follow);
        // With one reading from after the step, that one decides.
        let mixed = [(3, 5), (-HOUR + 3, 3)];
        assert_eq!(verdict(HOUR, STEP_HOLD * 2, &mixed), Verdict::Keep);
    }

    #[test]
    fn the_kept_time_moves_with_the_monotonic_clock() {
        let a = now_ms();
        std::thread::sleep(Duration::from_millis(20));
        let b = now_ms();
        assert!(b - a >= 20 && b - a < 2_000, "{a} {b}");
        assert!((read().wall - read().kept).abs() < 2_000);
    }
}
