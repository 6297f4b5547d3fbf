//! The compiled, immutable answer table built from one [`Records`] snapshot.
//!
//! Every name meshdns answers positively is precomputed into a hash map with its A, AAAA and
//! SRV records, so a query is one lowercase hash lookup and no allocation. For each service
//! `svc` in namespace `ns` (cluster domain `cd`) these names exist:
//!
//! - `svc.ns.svc.cd.` (canonical), `svc.ns.svc.`, `svc.ns.`, and `svc.` when `ns` is the
//!   default namespace (the bare name containers send without a search list);
//! - `_port._proto.<each form>` with one SRV record per declared port, and SRV records for all
//!   ports on the service name itself (as Kubernetes does);
//! - the empty non-terminals in between (`_tcp.svc...`, `ns.svc.cd.`, `svc.cd.`), which answer
//!   NOERROR with no records.
//!
//! ServiceEntry hosts (`records.hosts`) are exact names with one A record each.
//!
//! Names under the cluster domain or under `ns.svc.` for a namespace that has services are
//! ours: a miss there is NXDOMAIN with the SOA in the authority section. A miss elsewhere
//! (including an unknown single-label name, which may be a Docker container name) is forwarded.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::ProtoError;
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use meshapi::dns::Records;

/// Records published under one name.
#[derive(Debug, Default)]
pub struct NameData {
    pub a: Vec<Record>,
    pub aaaa: Vec<Record>,
    pub srv: Vec<Record>,
    /// A/AAAA of SRV targets, for the additional section.
    pub srv_additional: Vec<Record>,
    /// The SOA, only on a zone apex.
    pub soa: Vec<Record>,
    /// SOA of the zone this name is in, for NODATA answers; computed once at build.
    zone_soa: Option<Arc<Record>>,
}

impl NameData {
    /// The answer records for a query type; empty means NODATA.
    pub fn answers(&self, qtype: RecordType) -> (&[Record], &[Record]) {
        match qtype {
            RecordType::A => (&self.a, &[]),
            RecordType::AAAA => (&self.aaaa, &[]),
            RecordType::SRV => (&self.srv, &self.srv_additional),
            RecordType::SOA => (&self.soa, &[]),
            _ => (&[], &[]),
        }
    }
}

/// What the mesh table says about a name.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// A name we own; `soa` goes into the authority section when the answer is empty.
    Found { data: &'a NameData, soa: &'a Record },
    /// Inside one of our zones, but no such name.
    NxDomain { soa: &'a Record },
    /// Not ours: forward it.
    NotOurs,
}

/// One immutable snapshot of everything meshdns answers itself.
#[derive(Debug)]
pub struct Zone {
    names: HashMap<LowerName, NameData>,
    /// Zone apexes (cluster domain, `ns.svc.`) with their SOA record.
    zones: HashMap<LowerName, Arc<Record>>,
    /// The cluster domain's SOA, used for NODATA answers on names outside any apex.
    default_soa: Arc<Record>,
    /// How many services this snapshot holds, for logs.
    pub services: usize,
}

/// A records snapshot could not be compiled (only if it skipped validation).
#[derive(Debug, thiserror::Error)]
#[error("cannot build DNS name {name:?}: {source}")]
pub struct ZoneError {
    name: String,
    #[source]
    source: ProtoError,
}

fn name(text: &str) -> Result<Name, ZoneError> {
    Name::from_ascii(text).map_err(|source| ZoneError {
        name: text.to_string(),
        source,
    })
}

fn soa_record(
    apex: &Name,
    cluster_domain: &str,
    ttl: u32,
    serial: u32,
) -> Result<Record, ZoneError> {
    let mname = name(&format!("ns.dns.{cluster_domain}."))?;
    let rname = name(&format!("hostmaster.{cluster_domain}."))?;
    let soa = SOA::new(mname, rname, serial, 7200, 1800, 86400, ttl);
    Ok(Record::from_rdata(apex.clone(), ttl, RData::SOA(soa)))
}

impl Zone {
    /// A zone with no services (everything but the cluster domain is forwarded).
    pub fn empty() -> Result<Zone, ZoneError> {
        Zone::build(&Records::default(), 0)
    }

    /// Compiles a validated records snapshot; `serial` becomes the SOA serial.
    pub fn build(records: &Records, serial: u32) -> Result<Zone, ZoneError> {
        let cd = records
            .cluster_domain
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ttl = records.ttl;
        let cd_name = name(&format!("{cd}."))?;
        let default_soa = Arc::new(soa_record(&cd_name, &cd, ttl, serial)?);
        let mut zones = HashMap::new();
        zones.insert(LowerName::new(&cd_name), default_soa.clone());
        let mut names: HashMap<LowerName, NameData> = HashMap::new();
        names.entry(LowerName::new(&cd_name)).or_default().soa = vec![(*default_soa).clone()];
        names
            .entry(LowerName::new(&name(&format!("svc.{cd}."))?))
            .or_default();

        let mut namespaces = BTreeSet::new();
        namespaces.insert(records.default_namespace.clone());
        for svc in &records.services {
            namespaces.insert(records.namespace_of(svc).to_string());
        }
        for ns in &namespaces {
            let apex = name(&format!("{ns}.svc."))?;
            let soa = soa_record(&apex, &cd, ttl, serial)?;
            names.entry(LowerName::new(&apex)).or_default().soa = vec![soa.clone()];
            zones.insert(LowerName::new(&apex), Arc::new(soa));
            names
                .entry(LowerName::new(&name(&format!("{ns}.svc.{cd}."))?))
                .or_default();
        }

        for svc in &records.services {
            let ns = records.namespace_of(svc);
            let canonical = name(&format!("{}.{ns}.svc.{cd}.", svc.name))?;
            let mut forms = vec![
                canonical.clone(),
                name(&format!("{}.{ns}.svc.", svc.name))?,
                name(&format!("{}.{ns}.", svc.name))?,
            ];
            if ns == records.default_namespace {
                forms.push(name(&format!("{}.", svc.name))?);
            }
            let target_a = Record::from_rdata(canonical.clone(), ttl, RData::A(A(svc.vip)));
            let target_aaaa = svc
                .vip6
                .map(|v6| Record::from_rdata(canonical.clone(), ttl, RData::AAAA(AAAA(v6))));
            let additional: Vec<Record> = std::iter::once(target_a).chain(target_aaaa).collect();
            let srv = |owner: &Name, port: u16| {
                Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::SRV(SRV::new(0, 100, port, canonical.clone())),
                )
            };
            for form in &forms {
                let data = names.entry(LowerName::new(form)).or_default();
                data.a = vec![Record::from_rdata(form.clone(), ttl, RData::A(A(svc.vip)))];
                data.aaaa = svc
                    .vip6
                    .map(|v6| Record::from_rdata(form.clone(), ttl, RData::AAAA(AAAA(v6))))
                    .into_iter()
                    .collect();
                data.srv = svc.ports.iter().map(|p| srv(form, p.port)).collect();
                data.srv_additional = if data.srv.is_empty() {
                    Vec::new()
                } else {
                    additional.clone()
                };
                for port in &svc.ports {
                    let proto = name(&format!("_{}.{form}", port.protocol.srv_label()))?;
                    let owner = name(&format!("_{}.{proto}", port.name))?;
                    names.entry(LowerName::new(&proto)).or_default();
                    let data = names.entry(LowerName::new(&owner)).or_default();
                    data.srv = vec![srv(&owner, port.port)];
                    data.srv_additional = additional.clone();
                }
            }
        }
        // ServiceEntry hosts: exact names, A only; NODATA for other types with the default SOA.
        for h in &records.hosts {
            let owner = name(&format!("{}.", h.name.trim_end_matches('.')))?;
            let data = names.entry(LowerName::new(&owner)).or_default();
            data.a = vec![Record::from_rdata(owner.clone(), ttl, RData::A(A(h.vip)))];
        }
        Ok(Zone {
            names,
            zones,
            default_soa,
            services: records.services.len(),
        })
    }

    /// Looks a (lowercased) query name up.
    pub fn lookup(&self, qname: &LowerName) -> Lookup<'_> {
        if let Some(data) = self.names.get(qname) {
            let soa = data.zone_soa.as_deref().unwrap_or(&self.default_soa);
            return Lookup::Found { data, soa };
        }
        match enclosing_zone(&self.zones, qname) {
            Some(soa) => Lookup::NxDomain { soa },
            None => Lookup::NotOurs,
        }
    }

    /// The VIP a name resolves to, for logs and tests.
    pub fn vip_of(&self, qname: &str) -> Option<IpAddr> {
        let n = Name::from_ascii(qname).ok()?;
        let data = self.names.get(&LowerName::new(&n))?;
        data.a.first().and_then(|r| r.data.ip_addr())
    }
}

/// The SOA of the innermost zone (cluster domain or `ns.svc.`) containing `qname`.
fn enclosing_zone<'a>(
    zones: &'a HashMap<LowerName, Arc<Record>>,
    qname: &LowerName,
) -> Option<&'a Arc<Record>> {
    let mut name = qname.clone();
    while !name.is_root() {
        if let Some(soa) = zones.get(&name) {
            return Some(soa);
        }
        name = name.base_name();
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let records = Records::from_yaml(
            r#"
services:
  - name: backend
    vip: 127.240.0.10
    vip6: fd00::10
    ports: [{ name: http, port: 8080 }]
  - { name: db, namespace: data, vip: 127.240.0.11 }
hosts:
  - { name: api.payments.test, vip: 127.240.0.12 }
"#,
            "t",
        )
        .unwrap();
        Zone::build(&records, 7).unwrap()
    }

    fn lookup<'a>(z: &'a Zone, q: &str) -> Lookup<'a> {
        z.lookup(&LowerName::new(&Name::from_ascii(q).unwrap()))
    }

    #[test]
    fn service_entry_hosts_resolve_exactly_and_their_neighbours_are_forwarded() {
        let z = zone();
        for q in ["api.payments.test.", "API.Payments.TEST."] {
            assert_eq!(z.vip_of(q), Some("127.240.0.12".parse().unwrap()), "{q}");
        }
        assert!(matches!(
            lookup(&z, "other.payments.test."),
            Lookup::NotOurs
        ));
        assert!(matches!(lookup(&z, "payments.test."), Lookup::NotOurs));
    }

    #[test]
    fn every_form_resolves() {
        let z = zone();
        for q in [
            "backend.",
            "BACKEND.default.",
            "backend.default.svc.",
            "backend.default.svc.cluster.local.",
        ] {
            assert_eq!(z.vip_of(q), Some("127.240.0.10".parse().unwrap()), "{q}");
        }
        for q in ["db.data.", "db.data.svc.", "db.data.svc.cluster.local."] {
            assert_eq!(z.vip_of(q), Some("127.240.0.11".parse().unwrap()), "{q}");
        }
        assert_eq!(
            z.vip_of("db."),
            None,
            "bare names only resolve in the default namespace"
        );
    }

    #[test]
    fn misses_inside_and_outside_our_zones() {
        let z = zone();
        for q in [
            "nope.default.svc.cluster.local.",
            "x.cluster.local.",
            "nope.data.svc.",
            "a.b.backend.default.svc.",
        ] {
            assert!(matches!(lookup(&z, q), Lookup::NxDomain { .. }), "{q}");
        }
        for q in ["example.com.", "nope.", "nope.default.", "db."] {
            assert!(matches!(lookup(&z, q), Lookup::NotOurs), "{q}");
        }
        for q in [
            "cluster.local.",
            "svc.cluster.local.",
            "_tcp.backend.default.svc.cluster.local.",
        ] {
            assert!(matches!(lookup(&z, q), Lookup::Found { .. }), "{q}");
        }
    }

    #[test]
    fn srv_names() {
        let z = zone();
        let Lookup::Found { data, .. } =
            lookup(&z, "_http._tcp.backend.default.svc.cluster.local.")
        else {
            panic!()
        };
        let (answers, additional) = data.answers(RecordType::SRV);
        assert_eq!(answers.len(), 1);
        assert_eq!(additional.len(), 2);
        let Lookup::Found { data, .. } = lookup(&z, "backend.") else {
            panic!()
        };
        assert_eq!(data.answers(RecordType::SRV).0.len(), 1);
        assert!(data.answers(RecordType::MX).0.is_empty());
    }
}
