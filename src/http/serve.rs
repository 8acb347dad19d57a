//! The HTTP server loop: the router over hyper, with the bounds a public server needs
//! (`axum::serve` has none of them).
//!
//! - **Headers and idle keep-alive**: hyper's header-read timeout runs from the moment a
//!   connection waits for a request head (a new connection, or a kept-alive one after its
//!   last response) until the head is complete, so a client that trickles header bytes or
//!   keeps an idle connection open is closed after [`Limits::header_timeout`].
//! - **Connections per address**: at most [`Limits::per_address`] open connections from one
//!   IP; more are closed at once (logged once per burst at debug level).
//! - **Slow bodies**: [`min_rate`] wraps the bodies we stream to disk (uploads): one that
//!   delivers fewer than the minimum bytes over a window fails, and the upload with it.
//!
//! - **Early refusals reach the client**: a request refused before its body is read (401,
//!   413, 429, 507) is answered with `Connection: close`; closing a socket with unread bytes
//!   makes the kernel send a reset, which destroys the answer in flight (Python's `urllib`
//!   then reports a broken pipe, not the 507 and its `Retry-After`). So the connection
//!   lingers as nginx's does: after the answer, our side of it is shut and what the client
//!   still sends is read and discarded, up to [`LINGER_BYTES`] or [`LINGER_TIME`].
//!
//! Shutdown: stop accepting at once, then let open connections finish their requests
//! (hyper's graceful shutdown); the gateway bounds that wait.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use crate::config::HttpLimits as Limits;

/// Open connections per address; a [`Slot`] gives its place back when dropped.
#[derive(Default, Clone)]
struct Counts(Arc<Mutex<HashMap<IpAddr, usize>>>);

struct Slot {
    counts: Counts,
    ip: IpAddr,
}

impl Counts {
    fn take(&self, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then waits for open requests to finish.
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken, limits: Limits) {
    let counts = Counts::default();
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Some(slot) = counts.take(peer.ip(), limits.per_address) else {
            tracing::debug!(%peer, max = limits.per_address, "too many connections from this address; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = app.clone().map_request(move |mut request: axum::extract::Request<_>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            request
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(Lingering::new(stream)), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Most bytes read and discarded from a client after its connection's last answer.
pub const LINGER_BYTES: u64 = 16 << 20;
/// Longest a connection lingers after its last answer.
pub const LINGER_TIME: Duration = Duration::from_secs(10);

/// A connection that, when hyper closes it, shuts its sending side and then reads and
/// discards what the client still sends (until it closes, or the bounds), so that an answer
/// sent before the request's body was read is not destroyed by a reset.
struct Lingering {
    stream: TcpStream,
    linger: Linger,
}

enum Linger {
    Open,
    Draining {
        until: Pin<Box<tokio::time::Sleep>>,
        left: u64,
    },
    Closed,
}

impl Lingering {
    fn new(stream: TcpStream) -> Self {
        Lingering {
            stream,
            linger: Linger::Open,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.linger {
                Linger::Open => {
                    // The answer is out: send our FIN after it.
                    ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
                    this.linger = Linger::Draining {
                        until: Box::pin(tokio::time::sleep(LINGER_TIME)),
                        left: LINGER_BYTES,
                    };
                }
                Linger::Draining { until, left } => {
                    if until.as_mut().poll(cx).is_ready() {
                        this.linger = Linger::Closed;
                        continue;
                    }
                    let mut scratch = [0u8; 16 * 1024];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            *left = left.saturating_sub(buf.filled().len() as u64);
                            if *left == 0 {
                                this.linger = Linger::Closed;
                            }
                        }
                        // The client closed too (or the socket failed): done.
                        Poll::Ready(_) => this.linger = Linger::Closed,
                    }
                }
                Linger::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Why a body was cut off.
#[derive(Debug, thiserror::Error)]
#[error("the client sent fewer than {min} bytes in {window:?}; upload dropped")]
pub struct TooSlow {
    min: u64,
    window: Duration,
}

/// `body`, failing once a whole `window` passes with fewer than `bytes_per_sec × window`
/// bytes received in it.
pub fn min_rate(body: Body, bytes_per_sec: u64, window: Duration) -> Body {
    let min = (bytes_per_sec as f64 * window.as_secs_f64()) as u64;
    let stream = body.into_data_stream();
    let start = tokio::time::Instant::now();
    let rated = futures_util::stream::unfold(
        (stream, start, 0u64, false),
        move |(mut stream, mut since, mut got, failed)| async move {
            if failed {
                return None;
            }
            loop {
                let deadline = since + window;
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(chunk))) => {
                        got += chunk.len() as u64;
                        if tokio::time::Instant::now() >= deadline {
                            if got < min {
                                let e = axum::Error::new(TooSlow { min, window });
                                return Some((Err(e), (stream, since, got, true)));
                            }
                            (since, got) = (tokio::time::Instant::now(), 0);
                        }
                        return Some((Ok(chunk), (stream, since, got, false)));
                    }
                    Ok(Some(Err(e))) => return Some((Err(e), (stream, since, got, true))),
                    Ok(None) => return None,
                    Err(_) if got < min => {
                        let e = axum::Error::new(TooSlow { min, window });
                        return Some((Err(e), (stream, since, got, true)));
                    }
                    Err(_) => (since, got) = (deadline, 0),
                }
            }
        },
    );
    Body::from_stream(rated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_count_and_slots_come_back() {
        let counts = Counts::default();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let first = counts.take(a, 2).unwrap();
        let _second = counts.take(a, 2).unwrap();
        assert!(counts.take(a, 2).is_none(), "a third from the same address");
        assert!(counts.take(b, 2).is_some(), "another address has its own count");
        drop(first);
        assert!(counts.take(a, 2).is_some(), "a closed connection frees its place");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_slower_than_the_minimum_rate_fails_and_a_fast_one_passes() {
        let window = Duration::from_secs(30);
        // 100 bytes every 10 s: 300 bytes per window, under a 1 KiB/s minimum.
        let slow = futures_util::stream::unfold(0, |i| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            (i < 100).then_some((Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 100])), i + 1))
        });
        let body = min_rate(Body::from_stream(slow), 1024, window);
        let collected = axum::body::to_bytes(body, usize::MAX).await;
        let error = collected.expect_err("a slow body fails");
        let mut chain: Vec<String> = vec![error.to_string()];
        let mut source = std::error::Error::source(&error);
        while let Some(e) = source {
            chain.push(e.to_string());
            source = e.source();
        }
        assert!(chain.iter().any(|m| m.contains("fewer than")), "{chain:?}");
        // 64 KiB every second passes.
        let fast = futures_util::stream::unfold(0, |i| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            (i < 90).then_some((Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 65536])), i + 1))
        });
        let body = min_rate(Body::from_stream(fast), 1024, window);
        assert_eq!(axum::body::to_bytes(body, usize::MAX).await.unwrap().len(), 90 * 65536);
        // A body that stops sending for a whole window fails too.
        let stalled = futures_util::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 10])) })
            .chain(futures_util::stream::pending());
        let body = min_rate(Body::from_stream(stalled), 1024, window);
        assert!(axum::body::to_bytes(body, usize::MAX).await.is_err());
    }
}
