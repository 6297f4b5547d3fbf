//! A read-side guard in front of hyper's HTTP/1 parser on downstream connections, so
//! ambiguous framing gets `400` instead of being normalised and forwarded.
//!
//! hyper applies RFC 9112 section 6.3 to a request with both Transfer-Encoding and
//! Content-Length (TE wins, CL is dropped) and silently merges equal duplicate Content-Length
//! fields, so the service never sees either shape. [`FramingGuard`] tracks HTTP/1 message
//! boundaries (heads, Content-Length bodies, chunked bodies and trailers) on the raw bytes,
//! holds each request head until it is complete, and replaces an ambiguous head with a marker
//! request that [`crate::http::check_framing`] turns into `400 DPE` with `Connection: close`;
//! nothing after it is read. Anything it does not understand (HTTP/2 preface, Upgrade or
//! CONNECT, malformed sizes, oversized heads) is passed through untouched for hyper to judge.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Header of the marker request that replaces an ambiguous head (a reserved name).
pub const MARKER: &str = meshapi::headers::FRAMING_ERROR;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailers,
    Passthrough,
    Poisoned,
}

/// Wraps a downstream stream; see the module docs.
#[derive(Debug)]
pub struct FramingGuard<S> {
    inner: S,
    state: State,
    held: Vec<u8>,
    line: Vec<u8>,
    ready: VecDeque<u8>,
    max_head: usize,
    eof: bool,
    /// How long a started head may take; hyper's own header timer never sees held bytes.
    head_timeout: Duration,
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FramingGuard<S> {
    /// Guards `inner`; heads longer than `max_head` are passed to hyper (which answers 431).
    pub fn new(inner: S, max_head: usize, head_timeout: Duration) -> Self {
        FramingGuard {
            inner,
            state: State::Head,
            held: Vec::new(),
            line: Vec::new(),
            ready: VecDeque::new(),
            max_head,
            eof: false,
            head_timeout,
            head_deadline: None,
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Passthrough => {
                    self.ready.extend(data);
                    return;
                }
                State::Poisoned => return,
                State::Head => {
                    if self.held.is_empty() && (data[0] == b'\r' || data[0] == b'\n') {
                        self.ready.push_back(data[0]);
                        data = &data[1..];
                        continue;
                    }
                    self.held.push(data[0]);
                    data = &data[1..];
                    if self.held.ends_with(b"\r\n\r\n") || self.held.ends_with(b"\n\n") {
                        self.finish_head();
                    } else if self.held.len() > self.max_head {
                        self.ready.extend(self.held.drain(..));
                        self.state = State::Passthrough;
                    }
                }
                State::Body(n) | State::ChunkData(n) => {
                    let k = data.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    self.ready.extend(&data[..k]);
                    data = &data[k..];
                    let left = n - k as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkCrlf(2),
                        (_, l) => State::ChunkData(l),
                    };
                }
                State::ChunkCrlf(k) => {
                    self.ready.push_back(data[0]);
                    data = &data[1..];
                    self.state = if k <= 1 {
                        State::ChunkSize
                    } else {
                        State::ChunkCrlf(k - 1)
                    };
                }
                State::ChunkSize | State::Trailers => {
                    let b = data[0];
                    data = &data[1..];
                    self.ready.push_back(b);
                    self.line.push(b);
                    if b == b'\n' {
                        self.finish_line();
                    } else if self.line.len() > 4096 {
                        self.state = State::Passthrough;
                    }
                }
            }
        }
    }

    fn finish_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        self.state = match self.state {
            State::Trailers if text.is_empty() => State::Head,
            State::Trailers => State::Trailers,
            _ => {
                let size = text.split(';').next().unwrap_or("").trim();
                match u64::from_str_radix(size, 16) {
                    Ok(0) => State::Trailers,
                    Ok(n) => State::ChunkData(n),
                    Err(_) => State::Passthrough,
                }
            }
        };
    }

    fn finish_head(&mut self) {
        let head = std::mem::take(&mut self.held);
        match inspect(&head) {
            Verdict::Next(next) => {
                self.ready.extend(head);
                self.state = next;
            }
            Verdict::Ambiguous(reason) => {
                tracing::info!(reason, "ambiguous request framing refused");
                let marker =
                    format!("GET / HTTP/1.1\r\nhost: invalid\r\n{MARKER}: {reason}\r\n\r\n");
                self.ready.extend(marker.as_bytes());
                self.state = State::Poisoned;
            }
        }
    }
}

enum Verdict {
    Next(State),
    Ambiguous(&'static str),
}

fn inspect(head: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let request_line = lines.next().unwrap_or("");
    if request_line.starts_with("PRI * HTTP/2.0") {
        return Verdict::Next(State::Passthrough);
    }
    let connect = request_line.starts_with("CONNECT ");
    let (mut cls, mut te, mut chunked, mut upgrade, mut len) = (0, false, false, false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                cls += 1;
                len = value.parse::<u64>().ok();
            }
            "transfer-encoding" => {
                te = true;
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
            }
            "upgrade" => upgrade = true,
            _ => {}
        }
    }
    if te && cls > 0 {
        return Verdict::Ambiguous("both Transfer-Encoding and Content-Length");
    }
    if cls > 1 {
        return Verdict::Ambiguous("more than one Content-Length");
    }
    Verdict::Next(match (connect || upgrade, te, chunked, len) {
        (true, ..) => State::Passthrough,
        (_, true, true, _) => State::ChunkSize,
        (_, true, false, _) => State::Passthrough,
        (_, _, _, Some(0)) => State::Head,
        (_, _, _, Some(n)) => State::Body(n),
        (_, _, _, None) if cls == 1 => State::Passthrough,
        _ => State::Head,
    })
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = buf.remaining().min(this.ready.len());
                let (a, b) = this.ready.as_slices();
                let from_a = n.min(a.len());
                buf.put_slice(&a[..from_a]);
                buf.put_slice(&b[..n - from_a]);
                this.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Poisoned {
                // Nothing after an ambiguous head reaches hyper. Keep draining the socket (so
                // closing it sends FIN, not a RST that could destroy the 400 in flight) and
                // never report EOF: hyper writes the 400 with `Connection: close` and closes.
                let mut tmp = [0u8; 8192];
                loop {
                    let mut rb = ReadBuf::new(&mut tmp);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => continue,
                        Poll::Ready(Ok(())) | Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    }
                }
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Passthrough && this.held.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    this.eof = true;
                    let held = std::mem::take(&mut this.held);
                    this.ready.extend(held);
                }
                Poll::Ready(Ok(())) => {
                    let filled = rb.filled().to_vec();
                    this.feed(&filled);
                    if this.state == State::Head && !this.held.is_empty() {
                        if this.head_deadline.is_none() {
                            this.head_deadline =
                                Some(Box::pin(tokio::time::sleep(this.head_timeout)));
                        }
                    } else {
                        this.head_deadline = None;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if let Some(d) = this.head_deadline.as_mut()
                        && d.as_mut().poll(cx).is_ready()
                    {
                        tracing::debug!("request head not complete in time");
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head read timeout",
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (Vec<u8>, State) {
        let mut g = FramingGuard::new(&b""[..], 65536, Duration::from_secs(1));
        for b in input.chunks(3) {
            g.feed(b);
        }
        (g.ready.into_iter().collect(), g.state)
    }

    #[test]
    fn passes_well_framed_pipelines_unchanged() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\nT: 1\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        let (out, state) = run(input);
        assert_eq!(out, input);
        assert_eq!(state, State::Head);
    }

    #[test]
    fn replaces_ambiguous_heads_and_stops() {
        for input in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        ] {
            let (out, state) = run(input);
            assert_eq!(state, State::Poisoned);
            let out = String::from_utf8(out).unwrap();
            assert!(out.starts_with("GET / HTTP/1.1\r\n") && out.contains(MARKER), "{out}");
            assert!(!out.contains("/x"));
        }
    }

    #[test]
    fn hands_unknown_shapes_to_hyper() {
        assert_eq!(
            run(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").1,
            State::Passthrough
        );
        assert_eq!(
            run(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").1,
            State::Passthrough
        );
        assert_eq!(
            run(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").1,
            State::Passthrough
        );
    }
}
