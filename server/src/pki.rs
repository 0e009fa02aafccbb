//! The platform CA: issues agent certificates for verified CSR keys, serves
//! its chain and signs the certificate revocation list.
//!
//! The profile of an agent certificate is written once, in
//! [`PlatformCa::issue`]: a random positive 127-bit serial, subject CN = the
//! agent id, one URI SAN `spiffe://<trust domain>/tenant/<tenant>/agent/<agent>`,
//! EKU clientAuth only, `CA:false`, digitalSignature (and keyEncipherment
//! for RSA keys), SKI and AKI, valid from five minutes before issuance for
//! the configured lifetime, never past the issuing CA's own expiry.
//!
//! The CA key is held in memory only; no error text, log line, response or
//! row carries it.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use x509_parser::prelude::*;

use crate::csr::{KeyAlgorithm, VerifiedCsr};
use crate::secrets::{hex, random_bytes, sha256_hex};

/// The trust domain of SPIFFE ids when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "oneprotect.local";
/// Certificates are valid from this long before issuance, so an agent whose
/// clock runs slightly behind the platform's accepts its own certificate.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::minutes(5);
/// Bounds of the configured agent certificate lifetime.
pub const MIN_CERTIFICATE_LIFETIME: Duration = Duration::hours(1);
pub const MAX_CERTIFICATE_LIFETIME: Duration = Duration::days(397);
/// How long relying parties may keep a CRL before fetching a new one.
pub const CRL_VALIDITY: Duration = Duration::minutes(10);
/// The development CA's files inside the development directory.
pub const DEV_CA_CERT_FILE: &str = "ca.pem";
pub const DEV_CA_KEY_FILE: &str = "ca.key";

/// A certificate the CA signed: what the agent receives (DER and PEM) and
/// what the platform keeps (serial and fingerprint).
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub der: Vec<u8>,
    pub pem: String,
    /// Lowercase hex of the serial number's bytes.
    pub serial_hex: String,
    /// Lowercase hex SHA-256 of the DER certificate.
    pub sha256: String,
    pub subject: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// One entry of the CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSerial {
    pub serial_hex: String,
    pub revoked_at: DateTime<Utc>,
    /// Superseded by a rotation (true) or revoked with its identity.
    pub superseded: bool,
}

pub struct PlatformCa {
    issuer: Issuer<'static, KeyPair>,
    /// The issuing CA's certificate first, then any intermediates given.
    chain_pem: String,
    chain_der: Vec<Vec<u8>>,
    /// Earlier CA certificates, still trusted to verify client certificates.
    previous_der: Vec<Vec<u8>>,
    ca_not_after: DateTime<Utc>,
    trust_domain: String,
}

impl std::fmt::Debug for PlatformCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformCa").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

/// Where the CA comes from.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates of earlier generations (PEM, any number per file).
    pub previous: Option<PathBuf>,
}

fn certificates_in(pem_text: &str, what: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes()) {
        let block = block.map_err(|_| format!("{what} is not valid PEM"))?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(format!("{what} holds no CERTIFICATE block"));
    }
    Ok(out)
}

/// DER as PEM with `label` (RFC 7468: base64 in lines of 64 characters).
pub fn pem_of(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 60);
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn to_offset(t: DateTime<Utc>) -> Result<::time::OffsetDateTime, String> {
    ::time::OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|_| "time out of range".to_owned())
}

/// A valid SPIFFE path segment holds letters, digits, `.`, `-` and `_`;
/// tenant ids are checked to that alphabet on entry, agent ids are UUIDs.
fn spiffe_segment_is_valid(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The SPIFFE id of an agent.
pub fn spiffe_id(trust_domain: &str, tenant_id: &str, agent_id: uuid::Uuid) -> String {
    format!("spiffe://{trust_domain}/tenant/{tenant_id}/agent/{agent_id}")
}

/// Parses `spiffe://<trust domain>/tenant/<tenant>/agent/<agent>` for the
/// given trust domain; anything else is `None`.
pub fn parse_spiffe_id(trust_domain: &str, uri: &str) -> Option<(String, uuid::Uuid)> {
    let rest = uri.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?.strip_prefix("/tenant/")?;
    let (tenant, agent) = rest.split_once("/agent/")?;
    if !spiffe_segment_is_valid(tenant) {
        return None;
    }
    let parsed = uuid::Uuid::parse_str(agent).ok()?;
    // Only the canonical lowercase hyphenated form names an agent.
    (parsed.hyphenated().to_string() == agent).then(|| (tenant.to_owned(), parsed))
}

/// A trust domain is a lowercase DNS-like name (SPIFFE ID spec, section 2.1).
pub fn trust_domain_is_valid(domain: &str) -> bool {
    (1..=255).contains(&domain.len())
        && domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

impl PlatformCa {
    /// Loads the issuing CA from PEM files: the certificate file may carry
    /// the chain up to an offline root after the issuing certificate; the
    /// key (PKCS#8) must belong to the first certificate.
    pub fn load(files: &CaFiles, trust_domain: &str, now: DateTime<Utc>) -> Result<Self, String> {
        let cert_text = std::fs::read_to_string(&files.cert)
            .map_err(|e| format!("ONEPROTECT_CA_CERT_FILE: cannot read {}: {e}", files.cert.display()))?;
        key_file_is_private(&files.key)?;
        let key_text = std::fs::read_to_string(&files.key)
            .map_err(|e| format!("ONEPROTECT_CA_KEY_FILE: cannot read {}: {e}", files.key.display()))?;
        let key = KeyPair::from_pem(&key_text).map_err(|_| {
            "ONEPROTECT_CA_KEY_FILE holds no usable private key (PKCS#8 PEM, ECDSA P-256/P-384, Ed25519 or RSA)"
                .to_owned()
        })?;
        let chain = certificates_in(&cert_text, "ONEPROTECT_CA_CERT_FILE")?;
        let previous = match &files.previous {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("ONEPROTECT_CA_PREVIOUS_CERTS_FILE: cannot read {}: {e}", path.display())
                })?;
                certificates_in(&text, "ONEPROTECT_CA_PREVIOUS_CERTS_FILE")?
            }
            None => Vec::new(),
        };
        Self::from_parts(chain, previous, key, trust_domain, now)
    }

    fn from_parts(
        chain_der: Vec<Vec<u8>>,
        previous_der: Vec<Vec<u8>>,
        key: KeyPair,
        trust_domain: &str,
        now: DateTime<Utc>,
    ) -> Result<Self, String> {
        if !trust_domain_is_valid(trust_domain) {
            return Err(format!(
                "the trust domain {trust_domain:?} is not a lowercase DNS-like name (letters, digits, '-', '.', '_')"
            ));
        }
        let issuing = chain_der.first().ok_or("the CA certificate file holds no certificate")?;
        let (_, cert) = X509Certificate::from_der(issuing)
            .map_err(|_| "the CA certificate is not a valid X.509 certificate".to_owned())?;
        if !cert.is_ca() {
            return Err("the CA certificate is not a CA (basicConstraints CA:TRUE is missing)".into());
        }
        if let Ok(Some(usage)) = cert.key_usage()
            && !(usage.value.key_cert_sign() && usage.value.crl_sign())
        {
            return Err("the CA certificate's key usage does not allow signing certificates and CRLs".into());
        }
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err("the CA key does not belong to the CA certificate".into());
        }
        let not_after = DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
            .ok_or("the CA certificate's validity is out of range")?;
        if not_after <= now {
            return Err(format!("the CA certificate expired at {not_after}"));
        }
        for der in &previous_der {
            X509Certificate::from_der(der)
                .map_err(|_| "a previous CA certificate is not a valid X.509 certificate".to_owned())?;
        }
        let issuer = Issuer::from_ca_cert_der(&issuing.clone().into(), key)
            .map_err(|_| "the CA certificate cannot be used as an issuer".to_owned())?;
        Ok(Self {
            issuer,
            chain_pem: chain_der.iter().map(|d| pem_of("CERTIFICATE", d)).collect(),
            chain_der,
            previous_der,
            ca_not_after: not_after,
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// A new self-signed CA kept in memory (tests, the conformance harness).
    pub fn generate(common_name: &str, trust_domain: &str, now: DateTime<Utc>) -> Result<Self, String> {
        let (cert_pem, key_pem) = new_ca_pem(common_name, now)?;
        Self::from_pem(&cert_pem, &key_pem, trust_domain, now)
    }

    /// The CA from PEM text (as `load`, without files).
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        trust_domain: &str,
        now: DateTime<Utc>,
    ) -> Result<Self, String> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|_| "the CA key is not a usable PKCS#8 key".to_owned())?;
        Self::from_parts(certificates_in(cert_pem, "the CA certificate")?, Vec::new(), key, trust_domain, now)
    }

    /// The development CA in `dir` (`ca.pem`, `ca.key` 0600), created on
    /// first use and reused afterwards.
    pub fn development(dir: &Path, trust_domain: &str, now: DateTime<Utc>) -> Result<Self, String> {
        let files =
            CaFiles { cert: dir.join(DEV_CA_CERT_FILE), key: dir.join(DEV_CA_KEY_FILE), previous: None };
        match (files.cert.exists(), files.key.exists()) {
            (true, true) => {}
            (false, false) => {
                let (cert_pem, key_pem) = new_ca_pem("OneProtect development CA", now)?;
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                crate::config::write_private(&files.key, key_pem.as_bytes())
                    .map_err(|e| format!("{}: {e}", files.key.display()))?;
                crate::config::write_private(&files.cert, cert_pem.as_bytes())
                    .map_err(|e| format!("{}: {e}", files.cert.display()))?;
            }
            _ => {
                return Err(format!(
                    "{} holds only one of {DEV_CA_CERT_FILE} and {DEV_CA_KEY_FILE}; remove it to generate a new development CA",
                    dir.display()
                ));
            }
        }
        Self::load(&files, trust_domain, now)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The issuing CA's certificate and any intermediates, PEM.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// Every CA certificate a client certificate may chain to: the current
    /// chain, then earlier generations still trusted.
    pub fn trusted_der(&self) -> impl Iterator<Item = &[u8]> {
        self.chain_der.iter().chain(&self.previous_der).map(Vec::as_slice)
    }

    /// The issuing CA certificate, DER.
    pub fn issuing_der(&self) -> &[u8] {
        &self.chain_der[0]
    }

    /// Signs a server certificate (the development server's) with the CA.
    pub fn sign_server_certificate(
        &self,
        params: &CertificateParams,
        key: &KeyPair,
    ) -> Result<Vec<u8>, String> {
        params.signed_by(key, &self.issuer).map(|c| c.der().to_vec()).map_err(|_| "signing failed".to_owned())
    }

    /// Signs an agent certificate for the CSR's (already verified) key.
    pub fn issue(
        &self,
        csr: &VerifiedCsr,
        tenant_id: &str,
        agent_id: uuid::Uuid,
        now: DateTime<Utc>,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, String> {
        if !spiffe_segment_is_valid(tenant_id) {
            return Err("the tenant id cannot be named in a SPIFFE id".into());
        }
        let lifetime = lifetime.clamp(MIN_CERTIFICATE_LIFETIME, MAX_CERTIFICATE_LIFETIME);
        let not_before = now - CLOCK_SKEW_ALLOWANCE;
        let not_after = (now + lifetime).min(self.ca_not_after);
        if not_after <= now {
            return Err("the CA certificate has expired".into());
        }
        let mut params = CertificateParams::default();
        let serial = new_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, agent_id.to_string());
        params.distinguished_name = name;
        let uri = spiffe_id(&self.trust_domain, tenant_id, agent_id);
        params.subject_alt_names =
            vec![SanType::URI(uri.try_into().map_err(|_| "the SPIFFE id is not an IA5 string".to_owned())?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = match csr.algorithm {
            KeyAlgorithm::Rsa => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
            _ => vec![KeyUsagePurpose::DigitalSignature],
        };
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)
            .map_err(|_| "the CSR public key cannot be certified".to_owned())?;
        let cert = params.signed_by(&public_key, &self.issuer).map_err(|_| "signing failed".to_owned())?;
        let der = cert.der().to_vec();
        Ok(IssuedCertificate {
            pem: pem_of("CERTIFICATE", &der),
            sha256: sha256_hex(&der),
            serial_hex: hex(&serial),
            subject: format!("CN={agent_id}"),
            der,
            not_before,
            not_after,
        })
    }

    /// A CRL signed by the issuing CA, valid for [`CRL_VALIDITY`].
    pub fn crl(&self, revoked: &[RevokedSerial], now: DateTime<Utc>) -> Result<Vec<u8>, String> {
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&from_hex(&r.serial_hex)?),
                    revocation_time: to_offset(r.revoked_at)?,
                    reason_code: Some(if r.superseded {
                        RevocationReason::Superseded
                    } else {
                        RevocationReason::CessationOfOperation
                    }),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        // Milliseconds since the epoch: increases with every CRL a replica
        // signs, and across replicas whose clocks agree.
        let number = u64::try_from(now.timestamp_millis()).map_err(|_| "time out of range".to_owned())?;
        let params = CertificateRevocationListParams {
            this_update: to_offset(now)?,
            next_update: to_offset(now + CRL_VALIDITY)?,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(|_| "signing the CRL failed".to_owned())?;
        Ok(crl.der().to_vec())
    }
}

/// What a verified agent certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAgentCertificate {
    pub tenant_id: String,
    pub agent_id: uuid::Uuid,
    /// Lowercase hex SHA-256 of the DER certificate.
    pub sha256: String,
    /// Validity, seconds since the epoch, both ends inclusive (RFC 5280,
    /// section 4.1.2.5, as the TLS layer judges it too).
    pub not_before: i64,
    pub not_after: i64,
}

impl VerifiedAgentCertificate {
    /// Whether the certificate is inside its validity at `now`.
    pub fn valid_at(&self, now: DateTime<Utc>) -> bool {
        (self.not_before..=self.not_after).contains(&now.timestamp())
    }
}

impl PlatformCa {
    /// Verifies an agent certificate as the platform issues them, at `now`
    /// (the platform's clock, not the TLS layer's): signed by the issuing
    /// CA or an earlier generation still trusted, inside its validity, an
    /// end-entity certificate for clientAuth, naming exactly one SPIFFE id
    /// of this trust domain. The error says why, for the log; it never
    /// carries the certificate.
    pub fn verify_agent_certificate(
        &self,
        der: &[u8],
        now: DateTime<Utc>,
    ) -> Result<VerifiedAgentCertificate, String> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|_| "not an X.509 certificate".to_owned())?;
        if !rest.is_empty() {
            return Err("trailing data after the certificate".into());
        }
        let signed_by_trusted = self.trusted_der().any(|ca_der| {
            X509Certificate::from_der(ca_der).is_ok_and(|(_, ca)| {
                ca.subject() == cert.issuer() && cert.verify_signature(Some(ca.public_key())).is_ok()
            })
        });
        if !signed_by_trusted {
            return Err("not signed by a trusted platform CA".into());
        }
        let (not_before, not_after) =
            (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
        if now.timestamp() < not_before || now.timestamp() > not_after {
            return Err("outside its validity".into());
        }
        if cert.is_ca() {
            return Err("a CA certificate".into());
        }
        match cert.extended_key_usage() {
            Ok(Some(eku)) if eku.value.client_auth => {}
            _ => return Err("not for client authentication".into()),
        }
        let uris: Vec<&str> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let [uri] = uris.as_slice() else { return Err("not exactly one URI name".into()) };
        let (tenant_id, agent_id) =
            parse_spiffe_id(&self.trust_domain, uri).ok_or("no agent SPIFFE id of this trust domain")?;
        Ok(VerifiedAgentCertificate { tenant_id, agent_id, sha256: sha256_hex(der), not_before, not_after })
    }
}

/// A random positive serial of 16 bytes whose top bit is clear and second
/// bit set: always 16 bytes in DER, 126 random bits.
fn new_serial() -> [u8; 16] {
    let mut serial = random_bytes::<16>();
    serial[0] = (serial[0] & 0x3f) | 0x40;
    serial
}

fn from_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) || s.is_empty() {
        return Err("a stored serial is not hex".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| "a stored serial is not hex".to_owned()))
        .collect()
}

/// A self-signed CA (ECDSA P-256, ten years, path length 0): PEM
/// certificate and PKCS#8 key.
fn new_ca_pem(common_name: &str, now: DateTime<Utc>) -> Result<(String, String), String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|_| "key generation failed")?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "OneProtect");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.serial_number = Some(SerialNumber::from_slice(&new_serial()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.not_before = to_offset(now - CLOCK_SKEW_ALLOWANCE)?;
    params.not_after = to_offset(now + Duration::days(3650))?;
    let cert = params.self_signed(&key).map_err(|_| "signing the CA certificate failed")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The CA key file must not be readable by other users.
fn key_file_is_private(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("ONEPROTECT_CA_KEY_FILE: cannot read {}: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(format!(
                "ONEPROTECT_CA_KEY_FILE {} is readable by other users (mode {mode:o}); restrict it to 0600 or 0640",
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr::verify_csr_pem;
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    const DOMAIN: &str = "oneprotect.test";

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).expect("fixed time")
    }

    fn ca() -> PlatformCa {
        PlatformCa::generate("OneProtect unit-test CA (fixture)", DOMAIN, now()).expect("CA")
    }

    fn csr_for(alg: &'static rcgen::SignatureAlgorithm) -> VerifiedCsr {
        let key = match KeyPair::generate_for(alg) {
            Ok(k) => k,
            Err(_) => KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048).expect("RSA key"),
        };
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "requested-name.fixture");
        let pem = params.serialize_request(&key).expect("CSR").pem().expect("PEM");
        verify_csr_pem(&pem).expect("valid CSR")
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        X509Certificate::from_der(der).expect("parse").1
    }

    #[test]
    fn an_issued_certificate_has_exactly_the_agent_profile_for_every_key_type() {
        let ca = ca();
        let ca_cert = parse(ca.issuing_der());
        let agent = uuid::Uuid::from_u128(0x1234);
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let csr = csr_for(alg);
            let issued = ca.issue(&csr, "tenant-a", agent, now(), Duration::days(30)).expect("issued");
            let cert = parse(&issued.der);
            // The CSR's key, exactly; the requested subject is not copied.
            assert_eq!(cert.public_key().raw, csr.spki_der.as_slice());
            assert_eq!(cert.subject().to_string(), format!("CN={agent}"));
            assert_eq!(issued.subject, format!("CN={agent}"));
            assert_eq!(cert.issuer(), ca_cert.subject());
            // Serial: 16 bytes, positive, the hex the record keeps.
            let serial = cert.raw_serial();
            assert_eq!(serial.len(), 16, "{alg:?}");
            assert!(serial[0] & 0x80 == 0 && serial[0] != 0);
            assert_eq!(issued.serial_hex, hex(serial));
            assert_eq!(issued.sha256, sha256_hex(&issued.der));
            // Validity: skew allowance before, lifetime after.
            assert_eq!(cert.validity().not_before.timestamp(), (now() - CLOCK_SKEW_ALLOWANCE).timestamp());
            assert_eq!(cert.validity().not_after.timestamp(), (now() + Duration::days(30)).timestamp());
            let mut seen = Vec::new();
            for ext in cert.extensions() {
                match ext.parsed_extension() {
                    ParsedExtension::BasicConstraints(bc) => {
                        assert!(!bc.ca);
                        seen.push("bc");
                    }
                    ParsedExtension::KeyUsage(ku) => {
                        assert!(ext.critical);
                        assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
                        assert_eq!(ku.key_encipherment(), *alg == rcgen::PKCS_RSA_SHA256);
                        seen.push("ku");
                    }
                    ParsedExtension::ExtendedKeyUsage(eku) => {
                        assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
                        seen.push("eku");
                    }
                    ParsedExtension::SubjectAlternativeName(san) => {
                        assert_eq!(
                            san.general_names,
                            vec![GeneralName::URI(&format!(
                                "spiffe://{DOMAIN}/tenant/tenant-a/agent/{agent}"
                            ))]
                        );
                        seen.push("san");
                    }
                    ParsedExtension::SubjectKeyIdentifier(_) => seen.push("ski"),
                    ParsedExtension::AuthorityKeyIdentifier(aki) => {
                        let ca_ski = ca_cert.extensions().iter().find_map(|e| match e.parsed_extension() {
                            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                            _ => None,
                        });
                        assert_eq!(aki.key_identifier.as_ref().map(|k| k.0.to_vec()), ca_ski);
                        seen.push("aki");
                    }
                    other => panic!("unexpected extension {other:?}"),
                }
            }
            seen.sort_unstable();
            assert_eq!(seen, ["aki", "bc", "eku", "ku", "san", "ski"], "{alg:?}");
            cert.verify_signature(Some(ca_cert.public_key())).expect("signed by the CA");
        }
    }

    #[test]
    fn two_certificates_never_share_a_serial() {
        let ca = ca();
        let csr = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let serials: std::collections::BTreeSet<String> = (0..64)
            .map(|_| {
                ca.issue(&csr, "tenant-a", uuid::Uuid::new_v4(), now(), Duration::days(1)).expect("issued")
            })
            .map(|c| c.serial_hex)
            .collect();
        assert_eq!(serials.len(), 64);
    }

    #[test]
    fn a_lifetime_is_bounded_and_never_outlives_the_ca() {
        let ca = ca();
        let csr = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let agent = uuid::Uuid::new_v4();
        let long = ca.issue(&csr, "t", agent, now(), Duration::days(5000)).expect("issued");
        assert_eq!(long.not_after, now() + MAX_CERTIFICATE_LIFETIME);
        let short = ca.issue(&csr, "t", agent, now(), Duration::seconds(1)).expect("issued");
        assert_eq!(short.not_after, now() + MIN_CERTIFICATE_LIFETIME);
        // Issued a day before the CA expires: the certificate ends with the CA.
        let late = now() + Duration::days(3649);
        let ending = ca.issue(&csr, "t", agent, late, Duration::days(30)).expect("issued");
        assert_eq!(ending.not_after, ca.ca_not_after);
        let after = ca.issue(&csr, "t", agent, ca.ca_not_after, Duration::days(30));
        assert!(after.is_err(), "an expired CA issues nothing");
    }

    #[test]
    fn a_spiffe_id_parses_only_in_its_own_trust_domain_and_canonical_form() {
        let agent = uuid::Uuid::from_u128(7);
        let id = spiffe_id(DOMAIN, "tenant-a", agent);
        assert_eq!(parse_spiffe_id(DOMAIN, &id), Some(("tenant-a".to_owned(), agent)));
        assert_eq!(parse_spiffe_id("other.test", &id), None);
        assert_eq!(parse_spiffe_id(DOMAIN, &id.to_uppercase()), None);
        assert_eq!(parse_spiffe_id(DOMAIN, &format!("spiffe://{DOMAIN}.evil/tenant/t/agent/{agent}")), None);
        assert_eq!(parse_spiffe_id(DOMAIN, &format!("spiffe://{DOMAIN}/tenant/a/b/agent/{agent}")), None);
        assert_eq!(parse_spiffe_id(DOMAIN, &format!("spiffe://{DOMAIN}/tenant//agent/{agent}")), None);
        assert_eq!(parse_spiffe_id(DOMAIN, &format!("{id}/extra")), None);
        assert_eq!(parse_spiffe_id(DOMAIN, &id.replace('-', "")), None);
    }

    #[test]
    fn the_crl_lists_each_serial_with_its_reason_and_is_signed_by_the_ca() {
        let ca = ca();
        let revoked = vec![
            RevokedSerial {
                serial_hex: "4a".repeat(16),
                revoked_at: now() - Duration::hours(1),
                superseded: false,
            },
            RevokedSerial {
                serial_hex: "5b".repeat(16),
                revoked_at: now() - Duration::hours(2),
                superseded: true,
            },
        ];
        let der = ca.crl(&revoked, now()).expect("CRL");
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&der).expect("parse");
        let ca_cert = parse(ca.issuing_der());
        crl.verify_signature(ca_cert.public_key()).expect("signed by the CA");
        assert_eq!(crl.issuer(), ca_cert.subject());
        assert_eq!(crl.last_update().timestamp(), now().timestamp());
        assert_eq!(crl.next_update().map(|t| t.timestamp()), Some((now() + CRL_VALIDITY).timestamp()));
        let entries: Vec<(String, String)> = crl
            .iter_revoked_certificates()
            .map(|r| {
                let reason = r.reason_code().map(|(_, c)| c.to_string()).unwrap_or_default();
                (hex(r.raw_serial()), reason)
            })
            .collect();
        assert_eq!(entries[0].0, "4a".repeat(16));
        assert_eq!(entries[1].0, "5b".repeat(16));
        assert!(entries[0].1.contains("CessationOfOperation"), "{entries:?}");
        assert!(entries[1].1.contains("Superseded"), "{entries:?}");
    }

    #[test]
    fn a_ca_is_refused_when_its_key_is_not_its_own_or_it_is_no_ca() {
        let (cert_a, _) = new_ca_pem("A (fixture)", now()).expect("A");
        let (_, key_b) = new_ca_pem("B (fixture)", now()).expect("B");
        let err = PlatformCa::from_pem(&cert_a, &key_b, DOMAIN, now()).expect_err("foreign key");
        assert!(err.contains("does not belong"), "{err}");
        assert!(!err.contains("PRIVATE"), "no key material in errors");

        let key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["not-a-ca.fixture".into()]).expect("params").self_signed(&key);
        let err = PlatformCa::from_pem(&leaf.expect("leaf").pem(), &key.serialize_pem(), DOMAIN, now())
            .expect_err("not a CA");
        assert!(err.contains("not a CA"), "{err}");

        let (cert, key) = new_ca_pem("expired (fixture)", now()).expect("CA");
        let err =
            PlatformCa::from_pem(&cert, &key, DOMAIN, now() + Duration::days(3651)).expect_err("expired");
        assert!(err.contains("expired"), "{err}");

        let err = PlatformCa::from_pem(&cert, &key, "Upper.Case", now()).expect_err("bad trust domain");
        assert!(err.contains("trust domain"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_ca_key_file_readable_by_other_users_is_refused_and_the_dev_ca_is_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = PlatformCa::development(dir.path(), DOMAIN, now()).expect("dev CA");
        let key = dir.path().join(DEV_CA_KEY_FILE);
        assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
        let again = PlatformCa::development(dir.path(), DOMAIN, now()).expect("reused");
        assert_eq!(dev.issuing_der(), again.issuing_der(), "the development CA is reused");

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).expect("chmod");
        let err = PlatformCa::development(dir.path(), DOMAIN, now()).expect_err("world-readable key");
        assert!(err.contains("readable by other users"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        PlatformCa::development(dir.path(), DOMAIN, now()).expect("group-readable is allowed");

        std::fs::remove_file(dir.path().join(DEV_CA_CERT_FILE)).expect("rm");
        let err = PlatformCa::development(dir.path(), DOMAIN, now()).expect_err("half a CA");
        assert!(err.contains("only one of"), "{err}");
    }
}
