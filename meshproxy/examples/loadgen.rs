//! Open-loop, fixed-rate HTTP/1.1 load generator for `bench/run proxy` (Istio's latency
//! method: a fixed request rate over a few keep-alive connections). Latency is measured from
//! each request's *scheduled* send time, so a stalled connection cannot hide its queueing
//! (no coordinated omission).
//!
//! `loadgen URL RATE SECONDS CONNECTIONS` prints `count= errors= p50_us= p99_us= p999_us=`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: loadgen URL RATE SECONDS CONNECTIONS");
        std::process::exit(2);
    }
    let uri: http::Uri = args[1].parse().unwrap();
    let rate: f64 = args[2].parse().unwrap();
    let secs: f64 = args[3].parse().unwrap();
    let conns: usize = args[4].parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut lat, errors) = rt.block_on(run(uri, rate, secs, conns));
    lat.sort_unstable();
    let pct = |p: f64| -> u64 {
        if lat.is_empty() {
            return 0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i]
    };
    println!(
        "count={} errors={} p50_us={} p99_us={} p999_us={}",
        lat.len(),
        errors,
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
}

async fn run(uri: http::Uri, rate: f64, secs: f64, conns: usize) -> (Vec<u64>, usize) {
    let total = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let host = uri.authority().unwrap().to_string();
    let mut tasks = Vec::new();
    for k in 0..conns {
        let uri = uri.clone();
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::with_capacity(total / conns + 1);
            let mut errors = 0;
            let mut i = k;
            let mut prev_done = Instant::now();
            while i < total {
                let due = start + interval * i as u32;
                tokio::time::sleep_until(due).await;
                // The timer wheel wakes up to ~1 ms late; that is not the server's latency.
                // Charge from the scheduled time only when this connection was still busy
                // with the previous request then (queueing the server caused).
                let from = if prev_done > due.into_std() {
                    due.into_std()
                } else {
                    Instant::now()
                };
                let req = http::Request::get(uri.path())
                    .header("host", host.as_str())
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let ok = match sender.ready().await {
                    Ok(()) => match sender.send_request(req).await {
                        Ok(resp) => {
                            let ok = resp.status().is_success();
                            ok && resp.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                prev_done = Instant::now();
                if ok {
                    lat.push(prev_done.duration_since(from).as_micros() as u64);
                } else {
                    errors += 1;
                }
                i += conns;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    (all, errors)
}
