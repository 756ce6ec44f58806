//! What one client connection is doing, as its timeouts need to know: when bytes last moved
//! each way, whether a request is in flight, and since when a request head has been arriving.
//!
//! [`Watched`] wraps the connection's stream (below hyper, above TLS): it notes every read and
//! write in the connection's [`Activity`], tells HTTP/2 from HTTP/1 by the first bytes (as
//! hyper-util's auto builder does), and on HTTP/1 passes its writes through
//! [`Responses`], which gives hyper's own parse-error answers their JSON body.
//! The service notes each request as it starts and ends ([`RequestGuard`]). The connection's
//! task reads it all through [`Activity::check`].

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::parse_errors::{Awaited, Responses};

/// The first bytes of every HTTP/2 connection.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// "No time": no request head is arriving.
const NONE: u64 = u64::MAX;

/// Slices passed on in one vectored write (hyper queues at most 16 buffers).
const MAX_SLICES: usize = 64;

/// One connection's activity; times are milliseconds since it was accepted.
#[derive(Debug)]
pub(super) struct Activity {
    accepted: Instant,
    last_read: AtomicU64,
    last_write: AtomicU64,
    /// When the request head now arriving began: its first byte on an HTTP/1 connection that
    /// had no request in flight, or the connection's opening, for its first request.
    head_since: AtomicU64,
    /// When the last request in flight ended.
    idle_since: AtomicU64,
    /// Requests whose answer has not been sent in full.
    in_flight: AtomicUsize,
    h2: AtomicBool,
    /// HTTP/1 requests whose answer's head is still to be written, in order.
    awaited: Mutex<VecDeque<Awaited>>,
    /// Woken when the connection moves between waiting for a head, handling requests and
    /// idling: its next timeout may then fall due sooner than the one being waited for.
    changed: Notify,
}

/// Which timeout a connection ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// A request head took longer than the header timeout.
    SlowHeaders,
    /// No request in flight and no bytes for the idle timeout.
    Idle,
    /// A request in flight moved no bytes either way for the idle timeout.
    Stalled,
}

/// When a connection's next timeout falls due, and which it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Due {
    pub(super) at: Instant,
    pub(super) expiry: Expiry,
}

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            accepted: Instant::now(),
            last_read: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
            awaited: Mutex::new(VecDeque::new()),
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64, after: Duration) -> Instant {
        self.accepted + Duration::from_millis(ms) + after
    }

    fn read(&self) {
        let now = self.now();
        self.last_read.store(now, Ordering::Relaxed);
        // The first byte of a new request on an HTTP/1 connection starts its header timeout.
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.h2.load(Ordering::Relaxed)
            && self.head_since.load(Ordering::Relaxed) == NONE
        {
            self.head_since.store(now, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    fn wrote(&self) {
        self.last_write.store(self.now(), Ordering::Relaxed);
    }

    /// Notes a request that hyper has parsed and hands to the service; the guard notes its end
    /// when the answer has been sent (or abandoned).
    pub(super) fn request_started(self: &Arc<Self>, http1: bool, head_request: bool) -> RequestGuard {
        if http1 {
            self.awaited
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(Awaited { head_request });
        }
        self.head_since.store(NONE, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        RequestGuard(self.clone())
    }

    /// Resolves when the connection has changed what it is doing since the last time.
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }

    fn next_awaited(&self) -> Option<Awaited> {
        self.awaited.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    /// When this connection's next timeout falls due.
    pub(super) fn due(&self, header: Duration, idle: Duration) -> Due {
        let last_read = self.last_read.load(Ordering::Relaxed);
        let last_io = last_read.max(self.last_write.load(Ordering::Relaxed));
        let head_since = self.head_since.load(Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) > 0 {
            Due {
                at: self.at(last_io, idle),
                expiry: Expiry::Stalled,
            }
        } else if head_since != NONE {
            Due {
                at: self.at(head_since, header),
                expiry: Expiry::SlowHeaders,
            }
        } else {
            let idle_since = self.idle_since.load(Ordering::Relaxed);
            // An HTTP/2 client's pings and window updates are bytes, not requests: its idle
            // time runs from the end of its last request.
            let since = if self.h2.load(Ordering::Relaxed) {
                idle_since
            } else {
                idle_since.max(last_io)
            };
            Due {
                at: self.at(since, idle),
                expiry: Expiry::Idle,
            }
        }
    }
}

/// A request in flight; dropped once its answer has been sent in full, or abandoned.
#[derive(Debug)]
pub(super) struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        a.changed.notify_one();
    }
}

/// How far the first bytes have told the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// This many bytes read, all matching the HTTP/2 preface.
    Sniffing(usize),
    Http1,
    Http2,
}

/// A client connection's stream, watched (see the module's documentation).
pub(super) struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
    protocol: Protocol,
    responses: Responses,
    /// Bytes taken from hyper but not yet sent: a response head, or its replacement.
    held: Vec<u8>,
    held_sent: usize,
}

impl<T> Watched<T> {
    pub(super) fn new(inner: T, activity: Arc<Activity>) -> Watched<T> {
        Watched {
            inner,
            activity,
            protocol: Protocol::Sniffing(0),
            responses: Responses::new(),
            held: Vec::new(),
            held_sent: 0,
        }
    }

    fn sniff(&mut self, read: &[u8]) {
        let Protocol::Sniffing(matched) = self.protocol else {
            return;
        };
        let n = read.len().min(H2_PREFACE.len() - matched);
        self.protocol = if read[..n] != H2_PREFACE[matched..matched + n] {
            Protocol::Http1
        } else if matched + n == H2_PREFACE.len() {
            self.activity.h2.store(true, Ordering::Relaxed);
            self.responses.through();
            Protocol::Http2
        } else {
            Protocol::Sniffing(matched + n)
        };
    }
}

impl<T: AsyncWrite + Unpin> Watched<T> {
    /// Sends what is held, if anything.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.held_sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.held_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.activity.wrote();
            self.held_sent += n;
        }
        self.held.clear();
        self.held_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes (the rest of) a response head from the start of `bufs`; returns how many bytes it
    /// took.
    fn take_head(&mut self, bufs: &[IoSlice<'_>]) -> usize {
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
            return 0;
        };
        let activity = self.activity.clone();
        let taken = self.responses.take_head(first, || activity.next_awaited());
        if let Some(send) = taken.send {
            self.held = send;
            self.held_sent = 0;
        }
        taken.consumed
    }

    fn poll_write_slices(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.held.is_empty() && self.responses.is_through() {
            let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
                self.activity.wrote();
            }
            return r;
        }
        // Bytes of `bufs` taken into `held` (a head) and so reported written.
        let mut taken = 0;
        loop {
            if taken == 0 && self.held.is_empty() && self.responses.at_head() {
                taken = self.take_head(bufs);
                if taken == 0 {
                    return Poll::Ready(Ok(0));
                }
            }
            let mut out: [IoSlice<'_>; MAX_SLICES] = std::array::from_fn(|_| IoSlice::new(&[]));
            let mut count = 0;
            if !self.held.is_empty() {
                out[0] = IoSlice::new(&self.held[self.held_sent..]);
                count = 1;
            }
            let from_held = self.held.len() - self.held_sent;
            let mut body = 0;
            if !self.responses.at_head() {
                let mut peek = self.responses.peek_body();
                for piece in pieces(bufs, taken) {
                    if count == MAX_SLICES {
                        break;
                    }
                    let n = peek.span(piece);
                    if n > 0 {
                        out[count] = IoSlice::new(&piece[..n]);
                        count += 1;
                        body += n;
                    }
                    if n < piece.len() {
                        break;
                    }
                }
            }
            if count == 0 {
                // A head is held in part; hyper writes the rest next.
                return Poll::Ready(Ok(taken));
            }
            let n = match Pin::new(&mut self.inner).poll_write_vectored(cx, &out[..count]) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) if taken == 0 => return Poll::Ready(Err(e)),
                Poll::Pending if taken == 0 => return Poll::Pending,
                // What was taken is held; an error will show again on the next write.
                Poll::Ready(Err(_)) | Poll::Pending => return Poll::Ready(Ok(taken)),
            };
            if n == 0 {
                return Poll::Ready(if taken == 0 { Ok(0) } else { Ok(taken) });
            }
            self.activity.wrote();
            let held_out = n.min(from_held);
            self.held_sent += held_out;
            if self.held_sent == self.held.len() {
                self.held.clear();
                self.held_sent = 0;
            }
            let body_out = (n - held_out).min(body);
            if body_out > 0 {
                let mut left = body_out;
                for piece in pieces(bufs, taken) {
                    let k = left.min(piece.len());
                    self.responses.body_written(&piece[..k]);
                    left -= k;
                    if left == 0 {
                        break;
                    }
                }
                return Poll::Ready(Ok(taken + body_out));
            }
            if taken > 0 {
                return Poll::Ready(Ok(taken));
            }
            // Only held bytes went out: go on with `bufs`.
        }
    }
}

/// The bytes of `bufs` after the first `skip`, slice by slice.
fn pieces<'a>(bufs: &'a [IoSlice<'a>], mut skip: usize) -> impl Iterator<Item = &'a [u8]> + 'a {
    bufs.iter().filter_map(move |b| {
        let b: &[u8] = b;
        if skip >= b.len() {
            skip -= b.len();
            None
        } else {
            let piece = &b[skip..];
            skip = 0;
            Some(piece)
        }
    })
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            self.activity.read();
            self.sniff(read);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_slices(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.is_empty() && self.responses.holds_partial_head() {
            // hyper flushes only whole heads; should one ever be cut, send it as it is.
            self.held = self.responses.give_up();
        }
        ready!(self.poll_send_held(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_held(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `max` bytes a write, and is not ready every other time.
    struct Socket {
        out: Vec<u8>,
        max: usize,
        busy: bool,
    }

    impl Socket {
        fn take(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
            self.busy = !self.busy;
            if !self.busy {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(self.max - n);
                self.out.extend_from_slice(&b[..k]);
                n += k;
                if n == self.max {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.take(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.take(cx, bufs)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes `parts` as hyper does (the head and the body as slices of one vectored write,
    /// again with what is left until all is taken), then flushes.
    fn write(w: &mut Watched<Socket>, parts: &[&[u8]]) {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut done = 0;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        while done < total {
            let mut skip = done;
            let rest: Vec<&[u8]> = parts
                .iter()
                .filter_map(|p| {
                    if skip >= p.len() {
                        skip -= p.len();
                        None
                    } else {
                        let r = &p[skip..];
                        skip = 0;
                        Some(r)
                    }
                })
                .collect();
            let slices: Vec<IoSlice<'_>> = rest.iter().map(|p| IoSlice::new(p)).collect();
            match Pin::new(&mut *w).poll_write_vectored(&mut cx, &slices) {
                Poll::Ready(Ok(n)) => {
                    assert!(n > 0, "a write took nothing");
                    done += n;
                }
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => {}
            }
        }
        while Pin::new(&mut *w).poll_flush(&mut cx).is_pending() {}
    }

    #[test]
    fn answers_reach_the_socket_whole_and_in_order_and_hyper_s_own_get_a_body() {
        let answers: [(&[u8], &[u8]); 3] = [
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", b"hello"),
            (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", b""),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                b"3\r\nabc\r\n0\r\n\r\n",
            ),
        ];
        let own: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        for max in [1, 3, 17, 100_000] {
            let activity = Arc::new(Activity::new());
            let socket = Socket {
                out: Vec::new(),
                max,
                busy: false,
            };
            let mut w = Watched::new(socket, activity.clone());
            w.sniff(b"GET / HTTP/1.1\r\n");
            let mut want = Vec::new();
            let mut guards = Vec::new();
            for (head, body) in answers {
                guards.push(activity.request_started(true, false));
                write(&mut w, &[head, body]);
                want.extend_from_slice(head);
                want.extend_from_slice(body);
            }
            write(&mut w, &[own]);
            let out = &w.inner.out;
            assert_eq!(out[..want.len()], want[..], "max {max}");
            let rest = String::from_utf8_lossy(&out[want.len()..]).into_owned();
            assert!(rest.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{rest}");
            assert!(
                rest.ends_with("}}") && rest.contains(r#""code":"invalid_request""#),
                "{rest}"
            );
            drop(guards);
        }
    }

    #[test]
    fn an_http2_connection_is_told_by_its_first_bytes() {
        let activity = Arc::new(Activity::new());
        let mut w = Watched::new(Vec::<u8>::new(), activity.clone());
        w.sniff(&H2_PREFACE[..10]);
        assert_eq!(w.protocol, Protocol::Sniffing(10));
        w.sniff(&H2_PREFACE[10..]);
        assert_eq!(w.protocol, Protocol::Http2);
        assert!(w.responses.is_through() && activity.h2.load(Ordering::Relaxed));
        let mut w = Watched::new(Vec::<u8>::new(), Arc::new(Activity::new()));
        w.sniff(b"PRI * HTTP/1.1");
        assert_eq!(w.protocol, Protocol::Http1);
    }

    #[test]
    fn the_next_timeout_follows_what_the_connection_does() {
        let header = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let a = Arc::new(Activity::new());
        // A new connection must send its first head within the header timeout.
        assert_eq!(a.due(header, idle).expiry, Expiry::SlowHeaders);
        let guard = a.request_started(true, false);
        assert_eq!(a.due(header, idle).expiry, Expiry::Stalled);
        drop(guard);
        assert_eq!(a.due(header, idle).expiry, Expiry::Idle);
        // The first byte of the next request starts its header timeout.
        a.read();
        let due = a.due(header, idle);
        assert_eq!(due.expiry, Expiry::SlowHeaders);
        assert!(due.at <= Instant::now() + header);
        drop(a.request_started(true, false));
        a.h2.store(true, Ordering::Relaxed);
        // On HTTP/2, bytes between requests (pings) do not start a header timeout.
        a.read();
        assert_eq!(a.due(header, idle).expiry, Expiry::Idle);
    }
}
