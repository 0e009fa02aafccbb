//! TLS termination: the server's certificate, and client certificates
//! requested (never required) at the handshake and verified against the
//! platform CA's chain and earlier generations.
//!
//! A handshake without a client certificate succeeds: enrollment and admin
//! calls carry other credentials. A client certificate that does not chain
//! to the platform CA, is expired or lacks the clientAuth purpose fails the
//! handshake. The verified leaf reaches each request of the connection as
//! a `ClientCertificate` extension; the platform then judges it against the
//! stored identity (see `service::agents`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::clock::Clock;
use crate::pki::PlatformCa;

/// The listener's TLS configuration, as `serve` and `listen::serve` take it.
pub type ServerConfig = rustls::ServerConfig;

/// The development server certificate's files inside the development directory.
pub const DEV_SERVER_CERT_FILE: &str = "server.pem";
pub const DEV_SERVER_KEY_FILE: &str = "server.key";
/// The development server certificate is valid this long and replaced when
/// less than a tenth of it is left.
const DEV_SERVER_LIFETIME: Duration = Duration::days(90);

/// The server's certificate chain and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The platform's clock as the TLS layer's: a client certificate's validity
/// is judged by the same time at the handshake as by the platform after it.
struct PlatformTime(Arc<dyn Clock>);

impl std::fmt::Debug for PlatformTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlatformTime")
    }
}

impl rustls::time_provider::TimeProvider for PlatformTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        let seconds = u64::try_from(self.0.now().timestamp()).ok()?;
        Some(rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds)))
    }
}

/// The rustls configuration of the listener: HTTP/1.1 only, TLS 1.2 and
/// 1.3, client certificates requested and verified against `ca` by `clock`.
pub fn server_config(
    files: &TlsFiles,
    ca: Option<&PlatformCa>,
    clock: Arc<dyn Clock>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("ONEPROTECT_TLS_CERT_FILE {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("ONEPROTECT_TLS_CERT_FILE {}: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("ONEPROTECT_TLS_CERT_FILE {} holds no certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|_| {
        format!("ONEPROTECT_TLS_KEY_FILE {} holds no usable private key", files.key.display())
    })?;
    let builder = rustls::ServerConfig::builder_with_details(provider(), Arc::new(PlatformTime(clock)))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in ca.trusted_der() {
                roots
                    .add(CertificateDer::from(der.to_vec()))
                    .map_err(|e| format!("a platform CA certificate cannot be a trust anchor: {e}"))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("the client certificate verifier: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("the TLS certificate and key do not match or are unusable: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `config` without session resumption (no TLS 1.3 tickets, no session
/// cache): every connection is a full handshake with certificate
/// verification. The benchmark's handshake measure uses it.
pub fn without_resumption(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut config = config.clone();
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Arc::new(config)
}

/// The development server certificate in `dir`, issued by the development
/// CA for `localhost`, 127.0.0.1 and ::1; created when missing or close to
/// expiry, and reissued when the CA changed.
pub fn development_server_files(dir: &Path, ca: &PlatformCa, now: DateTime<Utc>) -> Result<TlsFiles, String> {
    let files = TlsFiles { cert: dir.join(DEV_SERVER_CERT_FILE), key: dir.join(DEV_SERVER_KEY_FILE) };
    if let Ok(pem) = std::fs::read_to_string(&files.cert)
        && files.key.exists()
        && still_good(&pem, ca, now)
    {
        return Ok(files);
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|_| "key generation failed")?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "localhost");
    params.distinguished_name = name;
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().map_err(|_| "localhost is not a DNS name")?),
        SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let not_before = now - crate::pki::CLOCK_SKEW_ALLOWANCE;
    params.not_before =
        time::OffsetDateTime::from_unix_timestamp(not_before.timestamp()).map_err(|e| e.to_string())?;
    let not_after = now + DEV_SERVER_LIFETIME;
    params.not_after =
        time::OffsetDateTime::from_unix_timestamp(not_after.timestamp()).map_err(|e| e.to_string())?;
    let der = ca.sign_server_certificate(&params, &key)?;
    for path in [&files.cert, &files.key] {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    crate::config::write_private(&files.key, key.serialize_pem().as_bytes())
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let chain = crate::pki::pem_of("CERTIFICATE", &der) + ca.chain_pem();
    crate::config::write_private(&files.cert, chain.as_bytes())
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    Ok(files)
}

/// A development server certificate is kept while it has more than a tenth
/// of its lifetime left and was issued by the current development CA.
fn still_good(pem: &str, ca: &PlatformCa, now: DateTime<Utc>) -> bool {
    use x509_parser::prelude::*;
    let Some(Ok(block)) = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).next() else {
        return false;
    };
    let Ok((_, cert)) = X509Certificate::from_der(&block.contents) else { return false };
    let Ok((_, issuer)) = X509Certificate::from_der(ca.issuing_der()) else { return false };
    cert.verify_signature(Some(issuer.public_key())).is_ok()
        && cert.validity().not_after.timestamp() > (now + DEV_SERVER_LIFETIME / 10).timestamp()
}

/// The largest forwarded-certificate header the server reads.
pub const MAX_FORWARDED_CERTIFICATE_BYTES: usize = 16 * 1024;

/// The DER of the client certificate a TLS-terminating proxy forwarded in a
/// header: nginx's `$ssl_client_escaped_cert` (the URL-encoded PEM) or an
/// Envoy `x-forwarded-client-cert` element's `Cert="…"` field. `None` when
/// the value holds no certificate. The result is only a claim: the platform
/// verifies it as it verifies one presented at its own handshake.
pub fn forwarded_certificate(value: &str) -> Option<Vec<u8>> {
    if value.len() > MAX_FORWARDED_CERTIFICATE_BYTES {
        return None;
    }
    // Envoy: `By=…;Hash=…;Cert="<url-encoded PEM>";…` (the first element).
    let encoded = match value.find("Cert=\"") {
        Some(start) => {
            let rest = &value[start + 6..];
            &rest[..rest.find('"')?]
        }
        None => value,
    };
    let pem = percent_decode(encoded.trim())?;
    let block = x509_parser::pem::Pem::iter_from_buffer(&pem).next()?.ok()?;
    (block.label == "CERTIFICATE").then_some(block.contents)
}

/// `%XX` decoding (a `+` stays a `+`: PEM's base64 uses it).
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_pem() -> (String, Vec<u8>) {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["forwarded.fixture".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        (cert.pem(), cert.der().to_vec())
    }

    fn url_encode(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect()
    }

    #[test]
    fn a_certificate_forwarded_by_nginx_or_envoy_decodes_to_its_der() {
        let (pem, der) = fixture_pem();
        assert_eq!(
            forwarded_certificate(&url_encode(&pem)),
            Some(der.clone()),
            "nginx $ssl_client_escaped_cert"
        );
        let xfcc =
            format!("By=spiffe://proxy.fixture;Hash=00ff;Cert=\"{}\";Subject=\"CN=x\"", url_encode(&pem));
        assert_eq!(forwarded_certificate(&xfcc), Some(der), "Envoy x-forwarded-client-cert");
    }

    #[test]
    fn anything_else_in_the_header_is_no_certificate() {
        let (pem, _) = fixture_pem();
        assert_eq!(forwarded_certificate(""), None);
        assert_eq!(forwarded_certificate("not a certificate"), None);
        assert_eq!(forwarded_certificate("%ZZ"), None);
        assert_eq!(forwarded_certificate("Cert=\"unterminated"), None);
        let key = url_encode("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert_eq!(forwarded_certificate(&key), None, "a key is not a certificate");
        let huge = "A".repeat(MAX_FORWARDED_CERTIFICATE_BYTES + 1);
        assert_eq!(forwarded_certificate(&huge), None);
        assert!(forwarded_certificate(&url_encode(&pem)).is_some(), "control: the fixture decodes");
    }
}
