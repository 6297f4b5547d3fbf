//! The UDP listener.
//!
//! hickory-server's `Server` spawns a task and a response channel per datagram. Mesh answers
//! come from memory, so this loop answers them inline (one recv, one lookup, one send) and
//! spawns a task only for queries that go upstream, bounded by a semaphore so a flood of
//! non-mesh names cannot grow memory without limit. Parsing and answering are the same code
//! the fuzz target runs ([`handle_packet`](crate::handler::handle_packet)). TCP stays on
//! hickory-server's `Server`.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_server::net::xfer::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, watch};
use tracing::debug;

use crate::handler::{MeshHandler, Parsed, parse_packet};

/// Most queries waiting on upstreams at once; beyond it new ones are dropped (clients retry).
pub const MAX_FORWARDS_IN_FLIGHT: usize = 1024;

/// Serves `socket` until `shutdown` turns true (or its sender is dropped).
pub async fn serve(socket: UdpSocket, handler: MeshHandler, mut shutdown: watch::Receiver<bool>) {
    let socket = Arc::new(socket);
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS_IN_FLIGHT));
    let mut buf = vec![0u8; 65_535];
    loop {
        let (len, src) = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(error) => {
                    debug!(%error, "UDP receive error");
                    continue;
                }
            },
        };
        if !respondable(src) {
            continue;
        }
        let request = match parse_packet(&buf[..len], src, Protocol::Udp).await {
            Parsed::Request(request) => request,
            Parsed::Reply(reply) => {
                send(&socket, &reply, src).await;
                continue;
            }
            Parsed::Drop => continue,
        };
        if !handler.needs_upstream(&request) {
            if let Some(reply) = handler.answer(&request).await {
                send(&socket, &reply, src).await;
            }
            continue;
        }
        let Ok(permit) = forwards.clone().try_acquire_owned() else {
            debug!(%src, "too many forwarded queries in flight; dropping");
            continue;
        };
        let (socket, handler) = (socket.clone(), handler.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = handler.answer(&request).await {
                send(&socket, &reply, src).await;
            }
        });
    }
}

async fn send(socket: &UdpSocket, reply: &[u8], dst: SocketAddr) {
    if let Err(error) = socket.send_to(reply, dst).await {
        debug!(%dst, %error, "UDP send error");
    }
}

/// Port 0, unspecified and broadcast sources cannot be answered (and are spoofing tells).
fn respondable(src: SocketAddr) -> bool {
    src.port() != 0
        && !src.ip().is_unspecified()
        && !matches!(src.ip(), std::net::IpAddr::V4(v4) if v4.is_broadcast())
}
