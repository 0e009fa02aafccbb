//! The accept loop: HTTP/1.1 only (an explicit choice, not whatever the
//! linked crates enable), with bounds a slow or hoarding client cannot get
//! around. Refused connections are logged, rate-limited in the log.
//!
//! - at most `max_connections` open at once, and `max_per_source` from one
//!   address (a host opening thousands of idle connections is refused its
//!   excess while others keep being served);
//! - a request head must arrive whole within `header_read_timeout`
//!   (one byte a second does not keep a connection);
//! - a connection with no traffic for `idle_timeout` is closed.

use std::collections::HashMap;
use std::future::Future as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::Service;

/// Bounds on connections; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_source: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_per_source: 256,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Open connections per source address.
#[derive(Debug, Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

impl PerSource {
    fn try_add(&self, ip: IpAddr, max: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn remove(&self, ip: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Logs refusals at most once a second, with how many there were.
#[derive(Debug)]
struct RefusalLog {
    /// When the last line was written (none yet), and refusals since.
    last: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    fn new() -> Self {
        Self { last: Mutex::new((None, 0)) }
    }

    fn note(&self, reason: &'static str, peer: SocketAddr) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.1 += 1;
        if last.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(reason, source = %peer.ip(), refused = last.1, "connection refused");
            *last = (Some(Instant::now()), 0);
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes,
/// then lets open connections finish their requests (bounded by the idle
/// timeout).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_source = Arc::new(PerSource::default());
    let refusals = Arc::new(RefusalLog::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: back off, keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.note("the server holds its maximum of connections", peer);
            drop(stream);
            continue;
        };
        if !per_source.try_add(peer.ip(), limits.max_per_source) {
            refusals.note("the source holds its maximum of connections", peer);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (app, per_source, stop) = (app.clone(), per_source.clone(), stop_rx.clone());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let stream = IdleTimeout::new(stream, limits.idle_timeout);
            match acceptor {
                None => connection(stream, peer, None, app, limits, stop).await,
                // The handshake is bounded like a request head.
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let certificate =
                                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|leaf| {
                                    oneprotect_contracts::server::ClientCertificate(Arc::from(leaf.as_ref()))
                                });
                            connection(tls, peer, certificate, app, limits, stop).await;
                        }
                        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
            per_source.remove(peer.ip());
            drop(slot);
        });
    }
    let _ = stop_tx.send(true);
    // Wait for open connections to finish (each is bounded by the idle timeout).
    let _ = slots.acquire_many(u32::try_from(limits.max_connections).unwrap_or(u32::MAX)).await;
    Ok(())
}

/// Serves HTTP/1.1 on one accepted (and, with TLS, handshaken) connection
/// until it closes or the server stops.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    certificate: Option<oneprotect_contracts::server::ClientCertificate>,
    app: axum::Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if let Some(certificate) = &certificate {
            req.extensions_mut().insert(certificate.clone());
        }
        let mut app = app.clone();
        async move { app.call(req.map(axum::body::Body::new)).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A stream that fails with `TimedOut` after `idle` without a byte read or
/// written, so a connection kept open and silent is closed.
struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, idle: Duration) -> Self {
        Self { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)) }
    }

    fn touch(&mut self) {
        self.deadline.as_mut().reset(tokio::time::Instant::now() + self.idle);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle past its limit")
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A server with `limits` on an ephemeral loopback port; its address.
    async fn start(limits: Limits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(listener, app, limits, None, std::future::pending()));
        addr
    }

    /// One whole request on a fresh connection; the status line.
    async fn get(addr: SocketAddr) -> String {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: fixture\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer).await;
        answer.lines().next().unwrap_or_default().to_owned()
    }

    /// Whether the server closed `c` within 120 s (virtual time in the
    /// paused tests): a read answers end of stream or an error.
    async fn closed(c: &mut TcpStream) -> bool {
        let mut buf = [0u8; 1024];
        let read_to_end = async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(120), read_to_end).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_sent_a_byte_a_second_is_cut_at_the_header_timeout_while_others_are_served() {
        let limits = Limits { header_read_timeout: Duration::from_secs(5), ..Limits::default() };
        let addr = start(limits).await;
        let mut slow = Vec::new();
        for _ in 0..10 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"GET /healthz HTTP/1.1\r\n").await.expect("write");
            slow.push(c);
        }
        let started = tokio::time::Instant::now();
        // One byte a second on every slow connection, for at most 30 s.
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(
                get(addr).await,
                "HTTP/1.1 200 OK",
                "a legitimate request is served during the attack"
            );
            let mut open = 0;
            for c in &mut slow {
                if c.write_all(b"x").await.is_ok() && c.flush().await.is_ok() {
                    open += 1;
                }
            }
            if open == 0 {
                break;
            }
        }
        for c in &mut slow {
            assert!(closed(c).await, "the slow connection was closed");
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(5) && elapsed <= Duration::from_secs(8),
            "cut after {elapsed:?}, not at the 5 s header timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_idle_timeout() {
        let limits = Limits {
            idle_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(300),
            ..Limits::default()
        };
        let addr = start(limits).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: fixture\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).await.expect("answer");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let started = tokio::time::Instant::now();
        assert!(closed(&mut c).await, "the idle keep-alive connection is closed");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(29) && elapsed <= Duration::from_secs(32),
            "closed after {elapsed:?}"
        );
    }

    #[tokio::test]
    async fn cleartext_http2_is_not_spoken_whatever_crates_are_linked() {
        let addr = start(Limits::default()).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("write the HTTP/2 preface");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer)).await;
        // An HTTP/2 server would answer with a SETTINGS frame (type 0x4 at byte 3).
        assert!(
            answer.len() < 9 || answer[3] != 0x4 || answer.starts_with(b"HTTP/1.1"),
            "answered as HTTP/2: {answer:?}"
        );
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
            "an HTTP/1.1 refusal or a close: {}",
            String::from_utf8_lossy(&answer)
        );
    }

    #[tokio::test]
    async fn connections_past_the_per_source_and_global_bounds_are_refused_and_their_places_come_back() {
        let limits = Limits { max_per_source: 3, max_connections: 5, ..Limits::default() };
        let addr = start(limits).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // The accept loop runs in order: once a request on a fourth
        // connection is answered (or refused), the three before it are counted.
        let mut fourth = TcpStream::connect(addr).await.expect("connect");
        assert!(closed(&mut fourth).await, "a fourth connection from the source is closed at once");
        // Another source (127.0.0.2) still gets in, up to the global bound of 5.
        let other = tokio::net::TcpSocket::new_v4().expect("socket");
        other.bind("127.0.0.2:0".parse().expect("addr")).expect("bind 127.0.0.2");
        let mut other = other.connect(addr).await.expect("connect from 127.0.0.2");
        other
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: fixture\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        let _ = other.read_to_string(&mut answer).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(held.pop());
        // The freed place is reused (the close is noticed asynchronously: retry a bounded number of times).
        let mut served = false;
        for _ in 0..50 {
            if get(addr).await.starts_with("HTTP/1.1 200") {
                served = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(served, "a closed connection gives its place back");
    }

    #[test]
    fn per_source_counts_are_bounded_and_released() {
        let p = PerSource::default();
        let ip: IpAddr = "127.0.0.2".parse().expect("ip");
        assert!(p.try_add(ip, 2) && p.try_add(ip, 2));
        assert!(!p.try_add(ip, 2), "a third connection from the source is refused");
        assert!(p.try_add("127.0.0.3".parse().expect("ip"), 2), "another source is not");
        p.remove(ip);
        assert!(p.try_add(ip, 2), "a closed connection frees its place");
    }
}
