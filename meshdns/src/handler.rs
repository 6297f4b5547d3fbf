//! The request handler: mesh names from the current [`Zone`] snapshot, the rest forwarded.
//!
//! Every decision about what a client gets back is made here, in one place:
//!
//! - not exactly one question, or not a standard query: FORMERR / NOTIMP, echoing no
//!   questions (a hostile 1,000-question packet gets a 12-byte answer);
//! - class other than IN, zone transfers: REFUSED;
//! - a mesh name: authoritative answer (A, AAAA, SRV + targets in additional, SOA at apexes),
//!   NODATA or NXDOMAIN with the SOA in the authority section;
//! - anything else: forwarded upstream, except ANY (NOTIMP, RFC 8482 spirit: an ANY
//!   answer is the classic amplification vector).
//!
//! UDP responses are sized to `min(client EDNS payload, max_udp_payload)` or 512 bytes
//! without EDNS; larger answers are cut and flagged TC so the client retries over TCP. The
//! encoder in hickory-server applies that limit; this module picks it.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use tracing::{debug, warn};

use crate::forward::{Forwarded, Forwarder};
use crate::zone::{Lookup, Zone};

/// Serves DNS requests from the mesh table and the forwarder.
#[derive(Debug, Clone)]
pub struct MeshHandler {
    zone: Arc<ArcSwap<Zone>>,
    forwarder: Forwarder,
    max_udp_payload: u16,
}

impl MeshHandler {
    /// A handler reading its names from `zone` (swapped by the reloader) and forwarding misses.
    /// `max_udp_payload` caps UDP responses whatever the client advertises.
    pub fn new(
        zone: Arc<ArcSwap<Zone>>,
        forwarder: Forwarder,
        max_udp_payload: u16,
    ) -> MeshHandler {
        MeshHandler {
            zone,
            forwarder,
            max_udp_payload: max_udp_payload.max(512),
        }
    }

    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let meta = &request.metadata;
        let edns = request.edns.as_ref().map(|client| {
            let mut ours = Edns::new();
            ours.set_max_payload(client.max_payload().min(self.max_udp_payload));
            ours
        });
        let empty = empty_queries();
        let no_questions = empty.as_ref().unwrap_or(&request.queries);

        if meta.op_code != OpCode::Query {
            return send_error(
                &mut response,
                request,
                no_questions,
                edns.as_ref(),
                ResponseCode::NotImp,
            )
            .await;
        }
        let Ok(info) = request.request_info() else {
            return send_error(
                &mut response,
                request,
                no_questions,
                edns.as_ref(),
                ResponseCode::FormErr,
            )
            .await;
        };
        let query = info.query;
        let qtype = query.query_type();
        if query.query_class() != DNSClass::IN
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            return send_error(
                &mut response,
                request,
                &request.queries,
                edns.as_ref(),
                ResponseCode::Refused,
            )
            .await;
        }

        let zone = self.zone.load();
        let mut metadata = Metadata::response_from_request(meta);
        metadata.recursion_available = true;
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        match zone.lookup(query.name()) {
            Lookup::Found { data, soa } if qtype == RecordType::ANY => {
                metadata.authoritative = true;
                let answers = data.a.iter().chain(&data.aaaa).chain(&data.srv);
                let empty = data.a.is_empty() && data.aaaa.is_empty() && data.srv.is_empty();
                let msg = builder.build(metadata, answers, empty.then_some(soa), None, None);
                finish(response.send_response(msg).await, request)
            }
            Lookup::Found { data, soa } => {
                metadata.authoritative = true;
                let (answers, additionals) = data.answers(qtype);
                debug!(name = %query.name(), %qtype, answers = answers.len(), "mesh answer");
                let authority = answers.is_empty().then_some(soa);
                let msg = builder.build(metadata, answers, authority, None, additionals);
                finish(response.send_response(msg).await, request)
            }
            Lookup::NxDomain { soa } => {
                metadata.authoritative = true;
                metadata.response_code = ResponseCode::NXDomain;
                debug!(name = %query.name(), %qtype, "mesh nxdomain");
                let msg = builder.build(metadata, None, Some(soa), None, None);
                finish(response.send_response(msg).await, request)
            }
            Lookup::NotOurs if qtype == RecordType::ANY => {
                send_error(
                    &mut response,
                    request,
                    &request.queries,
                    edns.as_ref(),
                    ResponseCode::NotImp,
                )
                .await
            }
            Lookup::NotOurs => {
                drop(zone);
                let name = query.original().name().clone();
                match self.forwarder.forward(&name, qtype).await {
                    Forwarded::Answer(lookup) => {
                        let msg = builder.build(
                            metadata,
                            lookup.answers(),
                            lookup.authorities(),
                            None,
                            lookup.additionals(),
                        );
                        finish(response.send_response(msg).await, request)
                    }
                    Forwarded::Negative { code, authority } => {
                        metadata.response_code = code;
                        let msg = builder.build(metadata, None, authority.iter(), None, None);
                        finish(response.send_response(msg).await, request)
                    }
                    Forwarded::Failed => {
                        send_error(
                            &mut response,
                            request,
                            &request.queries,
                            edns.as_ref(),
                            ResponseCode::ServFail,
                        )
                        .await
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for MeshHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.respond(request, response_handle).await
    }
}

/// An empty question section. Reading zero questions from an empty buffer cannot fail; if it
/// ever did, callers fall back to echoing the request's own questions.
fn empty_queries() -> Option<Queries> {
    Queries::read(&mut BinDecoder::new(&[]), 0).ok()
}

async fn send_error<R: ResponseHandler>(
    response: &mut R,
    request: &Request,
    queries: &Queries,
    edns: Option<&Edns>,
    code: ResponseCode,
) -> ResponseInfo {
    debug!(src = %request.src(), id = request.metadata.id, %code, "error response");
    let msg = MessageResponseBuilder::new(queries, edns).error_msg(&request.metadata, code);
    finish(response.send_response(msg).await, request)
}

fn finish(
    sent: Result<ResponseInfo, hickory_server::net::NetError>,
    request: &Request,
) -> ResponseInfo {
    sent.unwrap_or_else(|error| {
        warn!(src = %request.src(), %error, "failed to send DNS response");
        failed_info(request)
    })
}

fn failed_info(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// What to do with one raw packet.
#[derive(Debug)]
pub enum Parsed {
    /// A query to answer.
    Request(Box<Request>),
    /// Not parseable past the header: send this FORMERR.
    Reply(Vec<u8>),
    /// Not even a header, or a response (never answered: no reflection loops).
    Drop,
}

/// Parses a packet the way hickory-server does: drop on a bad header or a response, FORMERR
/// (no questions echoed) on a bad body.
pub async fn parse_packet(packet: &[u8], src: SocketAddr, protocol: Protocol) -> Parsed {
    match Request::from_bytes(packet.to_vec(), src, protocol) {
        Ok(request) if request.metadata.message_type == MessageType::Query => {
            Parsed::Request(Box::new(request))
        }
        Ok(_) => Parsed::Drop,
        Err(_) => {
            let mut decoder = BinDecoder::new(packet);
            let Ok(header) = Header::read(&mut decoder) else {
                return Parsed::Drop;
            };
            if header.metadata.message_type != MessageType::Query {
                return Parsed::Drop;
            }
            let Some(queries) = empty_queries() else {
                return Parsed::Drop;
            };
            let msg = MessageResponseBuilder::new(&queries, None)
                .error_msg(&header.metadata, ResponseCode::FormErr);
            let mut capture = capture::Capture::new(protocol);
            match capture.send_response(msg).await {
                Ok(_) => capture.take().map_or(Parsed::Drop, Parsed::Reply),
                Err(_) => Parsed::Drop,
            }
        }
    }
}

impl MeshHandler {
    /// Whether answering needs an upstream round trip (so the caller should not wait for it
    /// inline). Everything else is answered from memory without suspending.
    pub fn needs_upstream(&self, request: &Request) -> bool {
        if request.metadata.op_code != OpCode::Query {
            return false;
        }
        let Ok(info) = request.request_info() else {
            return false;
        };
        let q = info.query;
        q.query_class() == DNSClass::IN
            && !matches!(
                q.query_type(),
                RecordType::ANY | RecordType::AXFR | RecordType::IXFR
            )
            && matches!(self.zone.load().lookup(q.name()), Lookup::NotOurs)
    }

    /// Answers a parsed request and returns the encoded reply, sized for `protocol`.
    pub async fn answer(&self, request: &Request) -> Option<Vec<u8>> {
        let capture = capture::Capture::new(request.protocol());
        self.respond(request, capture.clone()).await;
        capture.take()
    }
}

/// Parses and answers one raw packet; `None` means no reply. The UDP listener's path, and the
/// fuzz target's.
pub async fn handle_packet(
    handler: &MeshHandler,
    packet: &[u8],
    src: SocketAddr,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    match parse_packet(packet, src, protocol).await {
        Parsed::Request(request) => handler.answer(&request).await,
        Parsed::Reply(bytes) => Some(bytes),
        Parsed::Drop => None,
    }
}

mod capture {
    //! A [`ResponseHandler`] that keeps the encoded reply instead of sending it.

    use std::sync::{Arc, Mutex};

    use hickory_server::net::NetError;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::proto::rr::Record;
    use hickory_server::proto::serialize::binary::BinEncoder;
    use hickory_server::server::{ResponseHandler, ResponseInfo};
    use hickory_server::zone_handler::MessageResponse;

    #[derive(Clone)]
    pub struct Capture {
        protocol: Protocol,
        out: Arc<Mutex<Option<Vec<u8>>>>,
    }

    impl Capture {
        pub fn new(protocol: Protocol) -> Capture {
            Capture {
                protocol,
                out: Arc::new(Mutex::new(None)),
            }
        }

        pub fn take(&self) -> Option<Vec<u8>> {
            self.out.lock().ok()?.take()
        }
    }

    #[async_trait::async_trait]
    impl ResponseHandler for Capture {
        async fn send_response<'a>(
            &mut self,
            response: MessageResponse<
                '_,
                'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
            >,
        ) -> Result<ResponseInfo, NetError> {
            // Same limit as hickory-server's encoder: UDP sized by EDNS or 512, TCP unbounded.
            let max = match (self.protocol, response.edns()) {
                (Protocol::Udp, Some(edns)) => edns.max_payload(),
                (Protocol::Udp, None) => 512,
                _ => u16::MAX,
            };
            let mut bytes = Vec::with_capacity(512);
            let mut encoder = BinEncoder::new(&mut bytes);
            encoder.set_max_size(max);
            let info = response.destructive_emit(&mut encoder)?;
            if let Ok(mut out) = self.out.lock() {
                *out = Some(bytes);
            }
            Ok(info)
        }
    }
}
