//! A throwaway certificate authority issuing SPIFFE workload certificates, including
//! deliberately bad ones (expired, two URI SANs, CA leaf, missing digitalSignature) so tests can
//! prove the proxy refuses them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};

/// A self-signed root that issues workload certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// How to shape a leaf certificate. `Default` is a good workload certificate with no URI.
#[derive(Debug, Clone, Default)]
pub struct LeafOptions {
    /// URI SANs (a good SVID has exactly one).
    pub uris: Vec<String>,
    /// Validity ended in 2021.
    pub expired: bool,
    /// BasicConstraints CA:true and keyCertSign.
    pub is_ca: bool,
    /// Leave digitalSignature out of keyUsage.
    pub no_digital_signature: bool,
    /// DNS names and IP addresses (SANs) of a server certificate, e.g. an HTTPS server a
    /// proxy fetches from.
    pub hosts: Vec<String>,
}

/// A certificate chain and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Leaf certificate PEM.
    pub cert_pem: String,
    /// PKCS#8 private key PEM.
    pub key_pem: String,
}

impl Workload {
    /// Writes `<name>.pem` and `<name>.key` into `dir`, returning both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

impl TestCa {
    /// A new root CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The root certificate, PEM.
    pub fn roots_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Writes the root to `dir/<name>` and returns the path.
    pub fn write_roots(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.cert_pem).unwrap();
        p
    }

    /// A good workload certificate for `spiffe_id`, valid now.
    pub fn issue(&self, spiffe_id: &str) -> Workload {
        self.issue_with(LeafOptions {
            uris: vec![spiffe_id.to_string()],
            ..Default::default()
        })
    }

    /// A server certificate for `hosts` (DNS names or IP addresses), no URI.
    pub fn issue_server(&self, hosts: &[&str]) -> Workload {
        self.issue_with(LeafOptions {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        })
    }

    /// A certificate shaped by `opts` (possibly deliberately bad).
    pub fn issue_with(&self, opts: LeafOptions) -> Workload {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "workload");
        params.subject_alt_names = opts
            .uris
            .iter()
            .map(|u| SanType::URI(u.as_str().try_into().unwrap()))
            .chain(opts.hosts.iter().map(|h| match h.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(h.as_str().try_into().unwrap()),
            }))
            .collect();
        if opts.expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        } else {
            params.not_before = date_time_ymd(2024, 1, 1);
            params.not_after = date_time_ymd(2099, 1, 1);
        }
        let mut usages = Vec::new();
        if !opts.no_digital_signature {
            usages.push(KeyUsagePurpose::DigitalSignature);
        }
        usages.push(KeyUsagePurpose::KeyEncipherment);
        if opts.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            usages.push(KeyUsagePurpose::KeyCertSign);
        }
        params.key_usages = usages;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Workload {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
