//! Turning a workload's CSR into a workload certificate.
//!
//! The CSR is only trusted for two things: its public key (the signature over the request
//! proves the requester holds the private key) and its subject alternative names, which must
//! be exactly one URI SAN equal to the identity the caller proved. Everything else in the
//! certificate is decided here: empty subject, that one URI SAN, CA:false, digitalSignature +
//! keyEncipherment, serverAuth + clientAuth, a random serial, notBefore backdated for clock skew.

use std::time::{Duration, SystemTime};

use meshapi::ca_api::SpiffeId;
use rand::RngCore;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::CaError;
use super::store::CaMaterial;

/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_PEM_BYTES: usize = 16 * 1024;

/// A freshly signed workload certificate.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// Expiry of the leaf (second precision, as encoded).
    pub not_after: SystemTime,
    /// The serial number, hex.
    pub serial: String,
}

/// A random, positive, 128-bit serial number.
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Parses and verifies `csr_pem`, checks that it asks for exactly `identity`, and signs it.
pub fn sign_csr(
    ca: &CaMaterial,
    csr_pem: &str,
    identity: &SpiffeId,
    lifetime: Duration,
    backdate: Duration,
    now: SystemTime,
) -> Result<IssuedCert, CaError> {
    if csr_pem.len() > MAX_CSR_PEM_BYTES {
        return Err(CaError::BadCsr("CSR is larger than 16 KiB".into()));
    }
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        CaError::BadCsr(match e {
            rcgen::Error::InvalidCertificationRequestSignature => {
                "CSR signature does not verify".into()
            }
            rcgen::Error::UnsupportedExtension => "CSR requests an unsupported extension".into(),
            other => format!("CSR does not parse: {other}"),
        })
    })?;
    check_requested_sans(&csr.params.subject_alt_names, identity)?;
    if matches!(csr.params.is_ca, IsCa::Ca(_)) {
        return Err(CaError::BadCsr("CSR asks to be a CA".into()));
    }

    let uri = identity
        .to_string()
        .try_into()
        .map_err(|e| CaError::BadCsr(format!("identity is not an IA5 string: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    let not_after = (now + lifetime).min(ca.signer_not_after);
    let not_before = OffsetDateTime::from(now.checked_sub(backdate).unwrap_or(now));
    params.not_before = not_before.replace_nanosecond(0).unwrap_or(not_before);
    let not_after_dt = OffsetDateTime::from(not_after);
    let not_after_dt = not_after_dt.replace_nanosecond(0).unwrap_or(not_after_dt);
    params.not_after = not_after_dt;
    let serial = params
        .serial_number
        .as_ref()
        .map(|s| s.to_bytes().iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default();

    let signed = CertificateSigningRequestParams {
        params,
        public_key: csr.public_key,
    }
    .signed_by(&ca.issuer)
    .map_err(CaError::Generate)?;
    let secs = u64::try_from(not_after_dt.unix_timestamp()).unwrap_or(0);
    Ok(IssuedCert {
        cert_pem: signed.pem(),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        serial,
    })
}

/// Exactly one URI SAN, a SPIFFE ID, equal to `identity`.
fn check_requested_sans(sans: &[SanType], identity: &SpiffeId) -> Result<(), CaError> {
    let describe = |san: &SanType| match san {
        SanType::DnsName(n) => format!("DNS name {:?}", n.as_str()),
        SanType::URI(u) => format!("URI {:?}", u.as_str()),
        SanType::IpAddress(ip) => format!("IP address {ip}"),
        SanType::Rfc822Name(m) => format!("email {:?}", m.as_str()),
        _ => "an unsupported name".to_owned(),
    };
    match sans {
        [] => Err(CaError::BadCsr(
            "CSR has no subject alternative name; it needs exactly one SPIFFE URI".into(),
        )),
        [SanType::URI(uri)] => match uri.as_str().parse::<SpiffeId>() {
            Ok(asked) if asked == *identity => Ok(()),
            Ok(asked) => Err(CaError::CsrIdentityMismatch {
                requested: identity.to_string(),
                in_csr: asked.to_string(),
            }),
            Err(e) => Err(CaError::BadCsr(format!(
                "CSR URI SAN is not a SPIFFE ID: {e}"
            ))),
        },
        [one] => Err(CaError::BadCsr(format!(
            "CSR names {}; only one SPIFFE URI SAN is allowed",
            describe(one)
        ))),
        many => Err(CaError::BadCsr(format!(
            "CSR has {} subject alternative names ({}); exactly one SPIFFE URI is allowed",
            many.len(),
            many.iter().map(describe).collect::<Vec<_>>().join(", ")
        ))),
    }
}
