//! The HTTP listener of `creditd serve`, with the limits a server facing
//! the open network needs (issue 18, item 3):
//!
//! - **Header read timeout**: a connection that does not finish sending a
//!   request head in time is closed (slow headers, and sockets opened and
//!   left silent).
//! - **Idle timeout**: a kept-alive connection with no request in flight and
//!   no byte read or written for that long is closed.
//! - **Body read timeout**: in `creditd-server`'s body extractor (`408
//!   request_timeout`).
//! - **Connection cap**: at most `max_connections` connections are served at
//!   once; the next ones get a `503 unavailable` JSON answer with
//!   `Retry-After: 1` and are closed, so a flood of idle sockets cannot
//!   starve the process of descriptors.
//! - **Descriptor limit**: [`raise_nofile_limit`] raises `RLIMIT_NOFILE` from
//!   its soft to its hard limit at start; the cap is kept below it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Descriptors kept for the process itself (database files and
/// connections, the WAL, logs) when the connection cap is derived from
/// `RLIMIT_NOFILE`.
const RESERVED_DESCRIPTORS: u64 = 256;
/// At most this many refusals are being written at once; past that an
/// over-the-cap connection is closed without an answer.
const MAX_REFUSING: usize = 64;
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The listener's limits (`[server]` in `creditd.toml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit in
/// force afterwards (the soft limit), or `None` where it cannot be read.
pub fn raise_nofile_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).ok().map(|(soft, _)| soft)
        }
    }
}

/// The connection cap: the configured one, kept below what the descriptor
/// limit allows (with [`RESERVED_DESCRIPTORS`] left for the process).
pub fn connection_cap(configured: usize, nofile: Option<u64>) -> usize {
    match nofile {
        Some(limit) => {
            let room = limit.saturating_sub(RESERVED_DESCRIPTORS + MAX_REFUSING as u64).max(16);
            configured.min(usize::try_from(room).unwrap_or(usize::MAX)).max(1)
        }
        None => configured.max(1),
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for
/// the connections in flight to finish (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(AtomicUsize::new(0));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(None);
    let builder = Arc::new(builder);
    let started = Instant::now();
    let mut last_accept_error: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    if !is_connection_error(&error) {
                        // Out of descriptors (EMFILE) and the like: wait a
                        // little rather than spin; say so at most once a second.
                        if last_accept_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            tracing::warn!(%error, "accept failed");
                            last_accept_error = Some(Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(stream, &refusing);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity { last: AtomicU64::new(0), in_flight: AtomicUsize::new(0), started });
        let io = TokioIo::new(Watched { inner: stream, activity: activity.clone() });
        let tracked = activity.clone();
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let guard = InFlight::new(tracked.clone());
            let call = tower::ServiceExt::oneshot(router.clone(), request);
            async move {
                let response = call.await;
                drop(guard);
                response
            }
        });
        let builder = builder.clone();
        let conn = graceful.watch(builder.serve_connection_with_upgrades(io, service).into_owned());
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            tokio::pin!(conn);
            let tick = (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = &mut conn => break,
                    () = tokio::time::sleep(tick) => {
                        if activity.idle_for() >= idle_timeout {
                            // Nothing in flight, nothing read or written: close.
                            break;
                        }
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Errors of one connection that say nothing about the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// The body of the answer to a connection over the cap.
const REFUSAL_BODY: &str =
    r#"{"error":{"code":"unavailable","message":"too many open connections; try again shortly","details":{}}}"#;

/// The answer to a connection over the cap.
fn refusal() -> String {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    )
}

fn refuse(mut stream: TcpStream, refusing: &Arc<AtomicUsize>) {
    if refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::AcqRel);
        return; // dropped: closed without an answer
    }
    let refusing = refusing.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        // Read what the client sent first (a close with unread bytes would
        // reset the connection and lose the answer), answer, then drain
        // until the client closes; all of it briefly.
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
            stream.write_all(refusal().as_bytes()).await?;
            stream.shutdown().await?;
            while stream.read(&mut buf).await? > 0 {}
            Ok::<(), io::Error>(())
        })
        .await;
        refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// When a connection last read or wrote a byte, and how many of its
/// requests are being answered.
struct Activity {
    /// Milliseconds since `started`.
    last: AtomicU64,
    in_flight: AtomicUsize,
    started: Instant,
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// How long the connection has had nothing in flight and no I/O
    /// (zero while a request is being answered).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that records its activity.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_json_503_of_the_length_it_says() {
        let text = refusal();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(value["error"]["code"], "unavailable");
    }

    #[test]
    fn the_cap_stays_below_the_descriptor_limit() {
        assert_eq!(connection_cap(10_000, Some(1_048_576)), 10_000);
        assert_eq!(connection_cap(10_000, Some(1024)), 1024 - 256 - 64);
        assert_eq!(connection_cap(10_000, Some(100)), 16);
        assert_eq!(connection_cap(5, None), 5);
    }
}
