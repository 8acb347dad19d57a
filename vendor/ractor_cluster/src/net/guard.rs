// Patched for mp4tomp3 (not in ractor_cluster 0.16.5): bounds on what a connection may cost
// before it has authenticated. See vendor/README.md in the mp4tomp3 repository.

//! Admission of unauthenticated connections: how many may be open (in total and per remote
//! address), how long their handshake may take, and how large a frame they may send.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limits on a connection that has not yet completed the cookie handshake (and, with TLS,
/// the TLS handshake). Every unauthenticated byte on the node port is bounded by these.
#[derive(Clone, Copy, Debug)]
pub struct HandshakeLimits {
    /// How long the TLS handshake and the cookie challenge together may take; a session
    /// not authenticated by then is closed.
    pub timeout: Duration,
    /// The largest frame accepted before authentication (the handshake's messages are a few
    /// hundred bytes). A larger length prefix waits for the session to authenticate (the
    /// reader may run ahead of it) and closes the connection if it does not in time.
    pub max_frame_size: u64,
    /// Unauthenticated incoming connections open at once, from all addresses together.
    pub max_pending: usize,
    /// Unauthenticated incoming connections open at once from one IP address.
    pub max_pending_per_ip: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_frame_size: 64 * 1024,
            max_pending: 256,
            max_pending_per_ip: 16,
        }
    }
}

/// Counts unauthenticated incoming connections and refuses those over the limits.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: HandshakeLimits,
    open: Mutex<Pending>,
    refused: Throttled,
}

#[derive(Debug, Default)]
struct Pending {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    pub(crate) fn new(limits: HandshakeLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::new(Pending::default()),
            refused: Throttled::new(Duration::from_secs(10)),
        })
    }

    pub(crate) fn limits(&self) -> HandshakeLimits {
        self.limits
    }

    /// A place for a new connection from `ip`, or `None` (logged at most once per
    /// interval) when the connection must be refused.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PendingPermit> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if open.total >= self.limits.max_pending || from_ip >= self.limits.max_pending_per_ip {
            let (total, limit_total, limit_ip) = (open.total, self.limits.max_pending, self.limits.max_pending_per_ip);
            drop(open);
            if let Some(count) = self.refused.hit() {
                tracing::warn!(
                    "Refused {count} cluster connection(s) over the unauthenticated limits \
                     (latest from {ip}: {from_ip} open from it, {total} in all; limits {limit_ip} per address, {limit_total} in all)"
                );
            }
            return None;
        }
        open.total += 1;
        *open.per_ip.entry(ip).or_insert(0) += 1;
        Some(PendingPermit {
            admission: self.clone(),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&ip);
            }
        }
    }
}

/// One unauthenticated connection's place; released when dropped (the connection
/// authenticated or closed).
#[derive(Debug)]
pub struct PendingPermit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        self.admission.release(self.ip);
    }
}

/// A repeated event reported at most once per interval, with how often it happened since.
#[derive(Debug)]
pub(crate) struct Throttled {
    interval: Duration,
    start: Instant,
    last: AtomicU64,
    count: AtomicU64,
}

impl Throttled {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            start: Instant::now(),
            last: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one event; `Some(events since the last report)` when it is time to report.
    pub(crate) fn hit(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        // Milliseconds since start, plus one so that 0 means "never reported".
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let interval = self.interval.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) < interval {
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        Some(self.count.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_per_address_and_in_all_and_released_on_drop() {
        let admission = Admission::new(HandshakeLimits {
            max_pending: 3,
            max_pending_per_ip: 2,
            ..HandshakeLimits::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = admission.admit(a).unwrap();
        let _p2 = admission.admit(a).unwrap();
        assert!(admission.admit(a).is_none());
        let _p3 = admission.admit(b).unwrap();
        assert!(admission.admit(b).is_none());
        drop(p1);
        assert!(admission.admit(a).is_some());
    }

    #[test]
    fn throttled_reports_once_per_interval_with_the_count() {
        let t = Throttled::new(Duration::from_secs(3600));
        assert_eq!(t.hit(), Some(1));
        for _ in 0..1000 {
            assert_eq!(t.hit(), None);
        }
    }
}
