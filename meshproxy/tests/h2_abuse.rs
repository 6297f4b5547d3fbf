//! HTTP/2 abuse by an authenticated mesh peer, spoken frame by frame over real mTLS to a
//! server proxy's inbound listener: rapid reset, a stream flood past the advertised
//! concurrency, an oversized header list. Each is bounded — the connection or stream is refused,
//! the application sees little or nothing of it — and the proxy keeps serving everyone else.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use meshtest::EchoServer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A read half that `scan` can take (its writes are never made: `ack` is off).
struct ReadOnly<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for ReadOnly<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadOnly<R> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::Unsupported.into()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const CANCEL: u32 = 8;
const REFUSED_STREAM: u32 = 7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 section 5.1).
fn int(first: u8, n: u8, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header field without indexing (new name, no Huffman).
fn literal(name: &str, value: &str, out: &mut Vec<u8>) {
    out.push(0);
    int(0, 7, name.len(), out);
    out.extend_from_slice(name.as_bytes());
    int(0, 7, value.len(), out);
    out.extend_from_slice(value.as_bytes());
}

/// The header block of `GET <path>` with `extra` headers.
fn request_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    // :method GET (static 2), :scheme http (static 6), then :path and :authority literal
    // with indexed names 4 and 1.
    let mut b = vec![0x82, 0x86];
    int(0x00, 4, 4, &mut b);
    int(0, 7, path.len(), &mut b);
    b.extend_from_slice(path.as_bytes());
    int(0x00, 4, 1, &mut b);
    int(0, 7, "backend".len(), &mut b);
    b.extend_from_slice(b"backend");
    for (k, v) in extra {
        literal(k, v, &mut b);
    }
    b
}

/// What the server sent, frame by frame.
#[derive(Debug, Default)]
struct Seen {
    goaway: Option<u32>,
    resets: Vec<(u32, u32)>,
    headers: Vec<u32>,
    closed: bool,
}

/// The next frame, `None` when the connection closed.
async fn next_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}

fn code(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

/// Reads frames for up to `wait` (or until the connection closes, or with `until_goaway` a
/// GOAWAY); ACKs SETTINGS when it can write (`ack`).
async fn read_frames<R: AsyncRead + AsyncWrite + Unpin>(
    s: &mut R,
    wait: Duration,
    until_goaway: bool,
) -> Seen {
    scan(s, wait, until_goaway, true).await
}

async fn scan<R: AsyncRead + AsyncWrite + Unpin>(
    s: &mut R,
    wait: Duration,
    until_goaway: bool,
    ack: bool,
) -> Seen {
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, next_frame(s)).await else {
            return seen;
        };
        let Some((ty, flags, stream, payload)) = next else {
            seen.closed = true;
            return seen;
        };
        match ty {
            SETTINGS if flags & 1 == 0 && ack => {
                let _ = s.write_all(&frame(SETTINGS, 1, 0, &[])).await;
            }
            GOAWAY => {
                seen.goaway = Some(code(&payload, 4));
                if until_goaway {
                    return seen;
                }
            }
            RST_STREAM => seen.resets.push((stream, code(&payload, 0))),
            HEADERS => seen.headers.push(stream),
            _ => {}
        }
    }
}

struct Target {
    mesh: Mesh,
    echo: EchoServer,
    proxy: meshproxy::Bound,
}

async fn target(limits: &str) -> Target {
    let mesh = Mesh::new();
    let echo = EchoServer::start("app").await;
    let yaml = format!(
        "{}limits: {{ {limits} }}\ninbound:\n  - {{ port: {}, protocol: http, mode: STRICT }}\n",
        base_yaml(&mesh.identity_yaml("backend"), 1),
        echo.port()
    );
    let proxy = meshproxy::build(parse(&yaml)).await.unwrap();
    Target { mesh, echo, proxy }
}

impl Target {
    async fn h2(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let peer = self.mesh.ca.issue(&spiffe("frontend"));
        let mut s = mtls_connect(self.proxy.inbound, self.echo.port(), Some(&peer), b"h2")
            .await
            .expect("mTLS handshake");
        s.write_all(PREFACE).await.unwrap();
        s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        s
    }

    /// A well-behaved request from another peer still gets its answer.
    async fn still_serves(&self) {
        let out = {
            let peer = self.mesh.ca.issue(&spiffe("frontend"));
            let mut s = mtls_connect(
                self.proxy.inbound,
                self.echo.port(),
                Some(&peer),
                b"http/1.1",
            )
            .await
            .expect("mTLS handshake");
            s.write_all(b"GET /ok HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_with_goaway() {
    let t = target("").await;
    // 5,000 requests, each cancelled as soon as it is sent (CVE-2023-44487's shape), in one go.
    const N: u32 = 5_000;
    let block = request_block("/reset", &[]);
    let mut burst = Vec::new();
    for i in 0..N {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let mut s = t.h2().await;
    let _ = read_frames(&mut s, Duration::from_millis(300), false).await;
    let (r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&burst).await;
        w
    });
    let mut r = ReadOnly(r);
    let seen = scan(&mut r, Duration::from_secs(10), true, false).await;
    let _ = writer.await;
    assert_eq!(
        seen.goaway,
        Some(ENHANCE_YOUR_CALM),
        "the connection must be cut with ENHANCE_YOUR_CALM: {seen:?}"
    );
    // Little of it reached the application.
    let reached = t.echo.completed() + t.echo.connections();
    assert!(
        reached < (N / 10) as usize,
        "{reached} of {N} reached the app"
    );
    t.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_past_the_advertised_concurrency_is_refused() {
    const LIMIT: usize = 20;
    let t = target(&format!("maxConcurrentStreams: {LIMIT}")).await;
    let mut s = t.h2().await;
    // Take the server's SETTINGS (and ACK them) first, so the limit is in force.
    let _ = read_frames(&mut s, Duration::from_millis(300), false).await;
    // 100 requests whose bodies never end: each would hold a stream (and an app connection).
    let block = request_block("/flood", &[]);
    let mut burst = Vec::new();
    for i in 0..100u32 {
        burst.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
    }
    s.write_all(&burst).await.unwrap();
    let seen = read_frames(&mut s, Duration::from_secs(2), false).await;
    let refused = seen
        .resets
        .iter()
        .filter(|(_, c)| *c == REFUSED_STREAM)
        .count();
    assert!(
        refused >= 100 - LIMIT || seen.goaway.is_some(),
        "streams past the limit must be refused: {seen:?}"
    );
    assert!(
        t.echo.connections() <= LIMIT,
        "{} app connections for a limit of {LIMIT}",
        t.echo.connections()
    );
    t.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_list_is_refused_and_never_forwarded() {
    let t = target("maxHeaderBytes: 16384").await;
    let mut s = t.h2().await;
    let _ = read_frames(&mut s, Duration::from_millis(300), false).await;
    // One request whose header list is 96 KiB, in a HEADERS frame and CONTINUATIONs.
    let big = "x".repeat(96 * 1024);
    let block = request_block("/big", &[("x-big", &big)]);
    let chunks: Vec<&[u8]> = block.chunks(16_000).collect();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let flags = if last { END_HEADERS } else { 0 };
        if i == 0 {
            out.extend(frame(HEADERS, flags | END_STREAM, 1, c));
        } else {
            out.extend(frame(CONTINUATION, flags, 1, c));
        }
    }
    let _ = s.write_all(&out).await;
    let seen = read_frames(&mut s, Duration::from_secs(2), true).await;
    assert!(
        seen.resets.iter().any(|(id, _)| *id == 1) || seen.goaway.is_some() || seen.closed,
        "the request must be refused: {seen:?}"
    );
    assert_eq!(t.echo.completed(), 0, "forwarded to the app");
    t.still_serves().await;
}
