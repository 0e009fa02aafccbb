//! Secret material and the formats of the secrets the platform hands out.
//!
//! Enrollment tokens look like `opet_<32 hex id>_<43 base64url secret>`: the
//! prefix lets secret scanners find leaked ones, the id is the lookup key,
//! the rest is 256 random bits. Only an HMAC-SHA256 of the whole token (keyed
//! with the token hash key) is stored, and comparison is constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::model::KeyedHash;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const ENROLLMENT_TOKEN_PREFIX: &str = "opet_";
const ID_HEX_LEN: usize = 32;
const SECRET_LEN: usize = 43;
pub const ENROLLMENT_TOKEN_LEN: usize = ENROLLMENT_TOKEN_PREFIX.len() + ID_HEX_LEN + 1 + SECRET_LEN;
/// Shortest acceptable key for hashing or signing.
pub const MIN_KEY_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A key for keyed hashes (HMAC-SHA256). `Debug` is redacted.
pub struct HashKey(SecretBox<Vec<u8>>);

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey([REDACTED])")
    }
}

impl HashKey {
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!("keys must be at least {MIN_KEY_BYTES} bytes"));
        }
        Ok(Self(SecretBox::new(Box::new(bytes))))
    }

    /// HMAC-SHA256 over the parts, each length-prefixed so that
    /// ("ab", "c") and ("a", "bc") differ.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac =
            HmacSha256::new_from_slice(self.0.expose_secret()).unwrap_or_else(|_| unreachable_hmac());
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    pub fn mac_hex(&self, parts: &[&[u8]]) -> String {
        hex(&self.mac(parts))
    }
}

fn unreachable_hmac() -> HmacSha256 {
    // HMAC accepts keys of any length; this branch cannot be reached.
    panic!("HMAC rejected a key")
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rng().fill_bytes(&mut out);
    out
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Constant-time equality of two byte strings.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A freshly minted enrollment token: the secret (shown once) and its id.
pub struct MintedEnrollmentToken {
    pub id: uuid::Uuid,
    pub secret: SecretString,
}

pub fn mint_enrollment_token() -> MintedEnrollmentToken {
    let id = uuid::Uuid::new_v4();
    let secret = format!("{ENROLLMENT_TOKEN_PREFIX}{}_{}", id.simple(), b64(&random_bytes::<32>()));
    MintedEnrollmentToken { id, secret: SecretString::from(secret) }
}

/// The id of a well-formed enrollment token, or `None`.
pub fn parse_enrollment_token(token: &str) -> Option<uuid::Uuid> {
    if token.len() != ENROLLMENT_TOKEN_LEN || !token.is_ascii() {
        return None;
    }
    let rest = token.strip_prefix(ENROLLMENT_TOKEN_PREFIX)?;
    let (id_hex, secret) = rest.split_at(ID_HEX_LEN);
    let secret = secret.strip_prefix('_')?;
    if secret.len() != SECRET_LEN
        || !secret.bytes().all(is_b64url)
        || !id_hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    uuid::Uuid::try_parse(id_hex).ok()
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The keyed hash stored for an enrollment token.
pub fn enrollment_token_hash(key: &HashKey, token: &str) -> KeyedHash {
    KeyedHash::from_stored(key.mac_hex(&[b"enrollment-token-v1", token.as_bytes()]))
}

/// True when `token` hashes to `stored_hash` (constant time).
pub fn enrollment_token_matches(key: &HashKey, token: &str, stored_hash: &KeyedHash) -> bool {
    constant_time_eq(enrollment_token_hash(key, token).as_str().as_bytes(), stored_hash.as_str().as_bytes())
}

/// A nonce is base64url text carrying at least 128 bits.
pub fn nonce_is_well_formed(nonce: &str) -> bool {
    (22..=128).contains(&nonce.len()) && nonce.bytes().all(is_b64url)
}

/// What is stored for a used nonce: a keyed hash, never the nonce.
pub fn nonce_hash(key: &HashKey, tenant_id: &str, nonce: &str) -> KeyedHash {
    KeyedHash::from_stored(key.mac_hex(&[b"nonce-v1", tenant_id.as_bytes(), nonce.as_bytes()]))
}

/// What is stored for a hardware fingerprint hash sent by an agent.
pub fn fingerprint_hash(key: &HashKey, tenant_id: &str, fingerprint: &str) -> KeyedHash {
    KeyedHash::from_stored(key.mac_hex(&[b"fingerprint-v1", tenant_id.as_bytes(), fingerprint.as_bytes()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> HashKey {
        HashKey::new(vec![7u8; 32]).expect("fixture key")
    }

    #[test]
    fn only_the_exact_token_shape_parses() {
        let good = format!("opet_{}_{}", "0123456789abcdef0123456789abcdef", "A".repeat(SECRET_LEN));
        assert!(parse_enrollment_token(&good).is_some());
        for (what, bad) in [
            ("too short (no panic)", "opet_x".to_owned()),
            ("empty", String::new()),
            ("one character too long", format!("{good}A")),
            ("one character short", good[..good.len() - 1].to_owned()),
            ("non-ASCII at the right length", good.replacen('A', "é", 1)[..ENROLLMENT_TOKEN_LEN].to_owned()),
            ("a secret outside base64url", good.replacen('A', "+", 1)),
            ("an uppercase id", good.replacen("abcdef", "ABCDEF", 1)),
            ("an id that is not hex", good.replacen("abcdef", "abcdeg", 1)),
            ("another prefix", good.replacen("opet_", "opex_", 1)),
            ("no separator", good.replacen("f_A", "fAA", 1)),
        ] {
            assert_eq!(parse_enrollment_token(&bad), None, "{what}");
        }
    }

    #[test]
    fn fingerprints_are_stored_keyed_per_tenant() {
        let fp = "ab".repeat(32);
        let stored = fingerprint_hash(&key(), "tenant-a", &fp);
        assert_eq!(stored.as_str().len(), 64);
        assert!(stored.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(stored.as_str(), fp, "never the value the agent sent");
        assert_eq!(
            stored,
            fingerprint_hash(&key(), "tenant-a", &fp),
            "deterministic, so a re-enrollment can be matched"
        );
        assert_ne!(stored, fingerprint_hash(&key(), "tenant-b", &fp), "not correlatable across tenants");
        assert_ne!(stored, fingerprint_hash(&key(), "tenant-a", &"cd".repeat(32)));
        assert_ne!(
            stored,
            fingerprint_hash(&HashKey::new(vec![8u8; 32]).expect("fixture key"), "tenant-a", &fp),
            "keyed"
        );
    }

    #[test]
    fn minted_tokens_parse_back_to_their_id_and_are_unique() {
        let a = mint_enrollment_token();
        let b = mint_enrollment_token();
        assert_eq!(parse_enrollment_token(a.secret.expose_secret()), Some(a.id));
        assert_ne!(a.secret.expose_secret(), b.secret.expose_secret());
        assert!(a.secret.expose_secret().starts_with("opet_"));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let good = mint_enrollment_token().secret.expose_secret().to_owned();
        for bad in [
            String::new(),
            good.replacen("opet_", "opex_", 1),
            good[..good.len() - 1].to_owned(),
            format!("{good}A"),
            good.replacen('_', "-", 2),
            good.to_uppercase(),
        ] {
            assert_eq!(parse_enrollment_token(&bad), None, "{bad}");
        }
    }

    #[test]
    fn token_hash_is_keyed_and_matches_only_the_same_token() {
        let t = mint_enrollment_token();
        let secret = t.secret.expose_secret();
        let h = enrollment_token_hash(&key(), secret);
        assert!(enrollment_token_matches(&key(), secret, &h));
        assert!(!enrollment_token_matches(&key(), mint_enrollment_token().secret.expose_secret(), &h));
        let other_key = HashKey::new(vec![8u8; 32]).expect("fixture key");
        assert_ne!(enrollment_token_hash(&other_key, secret), h, "the hash depends on the key");
        assert!(!h.as_str().contains(secret));
    }

    #[test]
    fn nonce_format_requires_128_bits_of_base64url() {
        assert!(nonce_is_well_formed(&b64(&random_bytes::<16>())));
        assert!(!nonce_is_well_formed("short"));
        assert!(!nonce_is_well_formed(&"a".repeat(129)));
        assert!(!nonce_is_well_formed("has spaces in it and is long enough"));
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(HashKey::new(vec![0u8; 31]).is_err());
    }
}
