//! The request handler: mesh names from the current [`Zone`] snapshot, the rest forwarded.
//!
//! Every decision about what a client gets back is made here, in one place:
//!
//! - not exactly one question, or not a standard query: FORMERR / NOTIMP, echoing no
//!   questions (a hostile 1,000-question packet gets a 12-byte answer);
//! - class other than IN, zone transfers: REFUSED;
//! - a mesh name: authoritative answer (A, AAAA, SRV + targets in additional, SOA at apexes),
//!   NODATA or NXDOMAIN with the SOA in the authority section;
//! - anything else: forwarded upstream (waiting at most the forwarder's deadline, then a
//!   stale answer or SERVFAIL);
//! - ANY (RFC 8482, the classic amplification vector): a mesh name gets one RRset (A, else
//!   AAAA, else SRV); any other name gets one synthesized `HINFO "RFC8482" ""` and is never
//!   forwarded.
//!
//! UDP responses are at most `min(client EDNS payload, max_udp_payload)` (512 bytes without
//! EDNS) and at most [`AMPLIFICATION_FACTOR`] times the size of the query, mesh names
//! included (except a mesh reply of a single record, see `single_mesh_record`). A reply over
//! that bound first loses its additional, then its authority section (optional data, RFC 2181
//! section 9: no TC); if still too big it keeps the answer records that fit and is flagged
//! TC, so the client retries over TCP, where no bound applies.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::HINFO;
use hickory_server::proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use tracing::{debug, warn};

use crate::forward::{Forwarded, Forwarder};
use crate::zone::{Lookup, Zone};

/// A UDP response is at most this many times the size of its query.
pub const AMPLIFICATION_FACTOR: usize = 3;

/// TTL of the synthesized RFC 8482 HINFO answer to ANY (the RFC suggests a long one, so that
/// clients do not ask again soon).
pub const RFC8482_TTL: u32 = 86_400;

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
                // RFC 8482: one RRset is enough.
                metadata.authoritative = true;
                let answers = [&data.a, &data.aaaa, &data.srv]
                    .into_iter()
                    .find(|set| !set.is_empty());
                let authority = answers.is_none().then_some(soa);
                let msg = builder.build(
                    metadata,
                    answers.into_iter().flatten(),
                    authority,
                    None,
                    None,
                );
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
                // RFC 8482 section 4.2: one synthesized HINFO, never forwarded.
                let hinfo = Record::from_rdata(
                    query.original().name().clone(),
                    RFC8482_TTL,
                    RData::HINFO(HINFO::new("RFC8482".to_string(), String::new())),
                );
                let msg = builder.build(metadata, [&hinfo], None, None, None);
                finish(response.send_response(msg).await, request)
            }
            Lookup::NotOurs => {
                drop(zone);
                let name = query.original().name().clone();
                match self.forwarder.forward(&name, qtype).await {
                    Forwarded::Answer(answer) => {
                        let msg = builder.build(
                            metadata,
                            &answer.answers,
                            &answer.authorities,
                            None,
                            &answer.additionals,
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

    /// Answers a parsed request and returns the encoded reply, sized for its protocol: over
    /// UDP, at most [`AMPLIFICATION_FACTOR`] times the query.
    pub async fn answer(&self, request: &Request) -> Option<Vec<u8>> {
        let bound = request
            .as_slice()
            .len()
            .saturating_mul(AMPLIFICATION_FACTOR);
        let capture = capture::Capture::new(request.protocol()).with_bound(bound);
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
    use hickory_server::proto::op::Message;
    use hickory_server::proto::rr::Record;
    use hickory_server::proto::serialize::binary::BinEncoder;
    use hickory_server::server::{ResponseHandler, ResponseInfo};
    use hickory_server::zone_handler::MessageResponse;
    use tracing::warn;

    #[derive(Clone)]
    pub struct Capture {
        protocol: Protocol,
        /// Extra cap on UDP replies (the amplification bound).
        bound: usize,
        out: Arc<Mutex<Option<Vec<u8>>>>,
    }

    impl Capture {
        pub fn new(protocol: Protocol) -> Capture {
            Capture {
                protocol,
                bound: usize::MAX,
                out: Arc::new(Mutex::new(None)),
            }
        }

        /// Caps UDP replies at `bound` bytes too.
        pub fn with_bound(mut self, bound: usize) -> Capture {
            self.bound = bound;
            self
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
            // UDP: the EDNS size (already capped by the handler) or 512, and the amplification
            // bound. TCP: unbounded.
            let edns_max = match (self.protocol, response.edns()) {
                (Protocol::Udp, Some(edns)) => usize::from(edns.max_payload()),
                (Protocol::Udp, None) => 512,
                _ => usize::from(u16::MAX),
            };
            let opt = u16::from(response.edns().is_some());
            let mut bytes = Vec::with_capacity(512);
            let mut encoder = BinEncoder::new(&mut bytes);
            let info = response.destructive_emit(&mut encoder)?;
            let max = if single_mesh_record(&info, opt) {
                edns_max
            } else {
                edns_max.min(self.bound)
            };
            let bytes = if bytes.len() <= max {
                Some(bytes)
            } else {
                fit(&bytes, max)
            };
            if let Ok(mut out) = self.out.lock() {
                *out = bytes;
            }
            Ok(info)
        }
    }

    /// An authoritative (mesh) reply with at most one record in its answer and authority
    /// sections: one A, AAAA or SOA, or a negative answer with its SOA. Its size is the
    /// question plus one record of ours, which a client cannot inflate, so the amplification
    /// bound does not cut it (it still obeys the EDNS / 512-byte limit). A reply with glue
    /// (additional records besides OPT) is not one.
    fn single_mesh_record(info: &ResponseInfo, opt: u16) -> bool {
        let counts = info.counts();
        info.authoritative
            && u32::from(counts.answers) + u32::from(counts.authorities) <= 1
            && counts.additionals <= opt
    }

    /// Shrinks an encoded reply (our own) to `max` bytes: without its additional section if
    /// that fits, else without its authority section too (both optional: no TC, RFC 2181
    /// section 9), else header, question, OPT and the answer records that fit, with TC.
    /// `None` only if our own reply does not parse back.
    pub fn fit(reply: &[u8], max: usize) -> Option<Vec<u8>> {
        let mut message = match Message::from_vec(reply) {
            Ok(message) => message,
            Err(error) => {
                warn!(%error, "cannot re-read an oversized reply; dropping it");
                return None;
            }
        };
        message.additionals.clear();
        let bytes = message.to_vec().ok()?;
        if bytes.len() <= max {
            return Some(bytes);
        }
        // The authority section is optional too: NS records of a positive answer, or the SOA
        // of a forwarded negative answer (which then is not cached downstream, RFC 2308
        // section 5, but costs no TCP retry).
        message.authorities.clear();
        let bytes = message.to_vec().ok()?;
        if bytes.len() <= max {
            return Some(bytes);
        }
        let mut cut = message.truncate();
        let mut best = cut.to_vec().ok()?;
        for record in message.answers {
            cut.answers.push(record);
            match cut.to_vec() {
                Ok(bytes) if bytes.len() <= max => best = bytes,
                _ => break,
            }
        }
        Some(best)
    }
}
