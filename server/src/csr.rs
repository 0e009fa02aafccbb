//! Verification of PEM PKCS#10 certificate signing requests.
//!
//! Accepts ECDSA P-256/P-384, Ed25519 and RSA ≥ 2048 keys, and only requests
//! whose self-signature verifies. Error texts describe the problem, never
//! the request's content.

use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

use crate::secrets::sha256_hex;

/// Largest PEM the exchange accepts (matches the contract's `maxLength`).
pub const MAX_CSR_PEM_BYTES: usize = 16 * 1024;
pub const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
            Self::Rsa => "rsa",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::EcdsaP256, Self::EcdsaP384, Self::Ed25519, Self::Rsa].into_iter().find(|a| a.as_str() == s)
    }
}

/// What the platform keeps of a verified CSR: public facts only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    pub algorithm: KeyAlgorithm,
    /// Hex SHA-256 of the DER SubjectPublicKeyInfo.
    pub public_key_sha256: String,
    /// RFC 4514 rendering of the requested subject.
    pub subject: String,
    /// The DER SubjectPublicKeyInfo the platform CA certifies.
    pub spki_der: Vec<u8>,
}

/// The signature algorithms a CSR may use: SHA-2 with ECDSA or RSA
/// (PKCS#1 v1.5), and Ed25519. SHA-1 and MD5 signatures are refused.
static STRONG_SIGNATURES: std::sync::LazyLock<[x509_parser::der_parser::oid::Oid<'static>; 7]> =
    std::sync::LazyLock::new(|| {
        use x509_parser::oid_registry::*;
        [
            OID_SIG_ECDSA_WITH_SHA256,
            OID_SIG_ECDSA_WITH_SHA384,
            OID_SIG_ECDSA_WITH_SHA512,
            OID_PKCS1_SHA256WITHRSA,
            OID_PKCS1_SHA384WITHRSA,
            OID_PKCS1_SHA512WITHRSA,
            OID_SIG_ED25519,
        ]
    });

pub fn verify_csr_pem(pem_text: &str) -> Result<VerifiedCsr, String> {
    if pem_text.len() > MAX_CSR_PEM_BYTES {
        return Err(format!("the CSR exceeds {MAX_CSR_PEM_BYTES} bytes"));
    }
    let (rest, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|_| "the CSR is not PEM".to_string())?;
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err("the CSR PEM has trailing data".into());
    }
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err("the PEM block is not a CERTIFICATE REQUEST".into());
    }
    let (rest, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|_| "the CSR is not valid PKCS#10 DER".to_string())?;
    if !rest.is_empty() {
        return Err("the CSR DER has trailing data".into());
    }
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let algorithm = match spki.parsed().map_err(|_| "the CSR public key cannot be parsed".to_string())? {
        PublicKey::EC(_) => {
            if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
                return Err("unsupported public key algorithm".into());
            }
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == OID_EC_P256 => KeyAlgorithm::EcdsaP256,
                Some(c) if c == OID_NIST_EC_P384 => KeyAlgorithm::EcdsaP384,
                _ => return Err("unsupported elliptic curve: use P-256 or P-384".into()),
            }
        }
        PublicKey::RSA(rsa) => {
            if spki.algorithm.algorithm != OID_PKCS1_RSAENCRYPTION {
                return Err("unsupported RSA key encoding".into());
            }
            let bits = rsa.key_size();
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA keys must be at least {MIN_RSA_BITS} bits"));
            }
            KeyAlgorithm::Rsa
        }
        _ if spki.algorithm.algorithm == OID_SIG_ED25519 => KeyAlgorithm::Ed25519,
        _ => {
            return Err(
                "unsupported public key algorithm: use ECDSA P-256/P-384, Ed25519 or RSA >= 2048".into()
            );
        }
    };
    if !STRONG_SIGNATURES.contains(&csr.signature_algorithm.algorithm) {
        return Err("the CSR is signed with a weak or unsupported algorithm (SHA-1, MD5, …): sign it with SHA-256 or stronger, or Ed25519".into());
    }
    csr.verify_signature().map_err(|_| "the CSR signature does not verify".to_string())?;
    Ok(VerifiedCsr {
        algorithm,
        public_key_sha256: sha256_hex(spki.raw),
        subject: info.subject.to_string(),
        spki_der: spki.raw.to_vec(),
    })
}
