//! Tenant-admin bearer JWTs.
//!
//! The verification key decides the algorithm (HS256 for a shared secret,
//! RS256/ES256/EdDSA for a public key or JWKS entry); the token header can
//! never choose it, so `alg: none` and algorithm confusion are rejected.
//! `exp` is checked against the injected clock.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub const ROLE_ADMIN: &str = "tenant_admin";
pub const ROLE_VIEWER: &str = "tenant_viewer";
const LEEWAY_SECONDS: i64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminClaims {
    pub sub: String,
    pub tenant_id: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// An authenticated tenant admin or viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPrincipal {
    pub subject: String,
    pub tenant_id: String,
    pub can_write: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAuthFailure {
    /// Bad signature, wrong algorithm, wrong audience/issuer, malformed.
    Invalid,
    Expired,
    /// Valid token without a tenant role.
    NoRole,
}

struct VerifyKey {
    key: DecodingKey,
    alg: Algorithm,
}

pub struct AdminVerifier {
    /// kid (or "" for the single configured key) → key.
    keys: BTreeMap<String, VerifyKey>,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for AdminVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminVerifier")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// A tenant id is a short identifier; anything else is refused so that no
/// token can name the internal `_unattributed` bucket or inject text.
pub fn tenant_id_is_valid(t: &str) -> bool {
    let mut bytes = t.bytes();
    (1..=64).contains(&t.len())
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl AdminVerifier {
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Result<Self, String> {
        if secret.len() < crate::secrets::MIN_KEY_BYTES {
            return Err(format!(
                "the admin JWT secret must be at least {} bytes",
                crate::secrets::MIN_KEY_BYTES
            ));
        }
        let mut keys = BTreeMap::new();
        keys.insert(
            String::new(),
            VerifyKey { key: DecodingKey::from_secret(secret), alg: Algorithm::HS256 },
        );
        Ok(Self { keys, issuer: issuer.into(), audience: audience.into() })
    }

    /// A PEM public key: RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA.
    pub fn public_key_pem(pem: &[u8], issuer: &str, audience: &str) -> Result<Self, String> {
        // jsonwebtoken classifies the PEM by key OID, so each constructor
        // only accepts its own key type.
        let (key, alg) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (k, Algorithm::RS256)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            (k, Algorithm::ES256)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (k, Algorithm::EdDSA)
        } else {
            return Err("the admin public key is not an RSA, EC P-256 or Ed25519 PEM public key".into());
        };
        let mut keys = BTreeMap::new();
        keys.insert(String::new(), VerifyKey { key, alg });
        Ok(Self { keys, issuer: issuer.into(), audience: audience.into() })
    }

    /// A JWKS document; every key needs a `kid`, and its algorithm comes
    /// from the key type, never from the token.
    pub fn jwks(json: &[u8], issuer: &str, audience: &str) -> Result<Self, String> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("the JWKS file is not valid: {e}"))?;
        let mut keys = BTreeMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().ok_or("every JWKS key needs a `kid`")?;
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => return Err(format!("JWKS key `{kid}` has an unsupported type")),
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key `{kid}`: {e}"))?;
            keys.insert(kid, VerifyKey { key, alg });
        }
        if keys.is_empty() {
            return Err("the JWKS file has no keys".into());
        }
        Ok(Self { keys, issuer: issuer.into(), audience: audience.into() })
    }

    /// Verifies signature, algorithm, issuer, audience, expiry and role.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<AdminPrincipal, AdminAuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AdminAuthFailure::Invalid)?;
        let key = match header.kid.as_deref() {
            Some(kid) if !self.keys.contains_key("") => self.keys.get(kid),
            _ => self.keys.get(""),
        }
        .ok_or(AdminAuthFailure::Invalid)?;
        if header.alg != key.alg {
            return Err(AdminAuthFailure::Invalid);
        }
        let mut validation = Validation::new(key.alg);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data = jsonwebtoken::decode::<AdminClaims>(token, &key.key, &validation)
            .map_err(|_| AdminAuthFailure::Invalid)?;
        let claims = data.claims;
        if now.timestamp() >= claims.exp + LEEWAY_SECONDS {
            return Err(AdminAuthFailure::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now.timestamp() + LEEWAY_SECONDS < nbf) {
            return Err(AdminAuthFailure::Invalid);
        }
        if !tenant_id_is_valid(&claims.tenant_id) || claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(AdminAuthFailure::Invalid);
        }
        let can_write = claims.roles.iter().any(|r| r == ROLE_ADMIN);
        let can_read = can_write || claims.roles.iter().any(|r| r == ROLE_VIEWER);
        if !can_read {
            return Err(AdminAuthFailure::NoRole);
        }
        Ok(AdminPrincipal { subject: claims.sub, tenant_id: claims.tenant_id, can_write })
    }
}

/// Mints an HS256 tenant-admin token (the `admin-token` subcommand and tests).
pub fn mint_hs256(secret: &[u8], claims: &AdminClaims) -> Result<String, String> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "iss-fixture";
    const AUDIENCE: &str = "aud-fixture";

    fn claims(now: DateTime<Utc>) -> AdminClaims {
        AdminClaims {
            sub: "admin@fixture".into(),
            tenant_id: "tenant-a".into(),
            roles: vec![ROLE_ADMIN.into()],
            exp: now.timestamp() + 600,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            nbf: None,
        }
    }

    #[test]
    fn a_public_key_verifier_accepts_its_algorithm_and_refuses_hs256_signed_with_the_public_key() {
        let now = Utc::now();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("fixture key");
        let public_pem = key.public_key_pem();
        let verifier =
            AdminVerifier::public_key_pem(public_pem.as_bytes(), ISSUER, AUDIENCE).expect("verifier");

        let es256 = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims(now),
            &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("encoding key"),
        )
        .expect("sign");
        assert_eq!(verifier.verify(&es256, now).map(|p| p.tenant_id), Ok("tenant-a".to_owned()));

        let confused = mint_hs256(public_pem.as_bytes(), &claims(now)).expect("sign");
        assert_eq!(
            verifier.verify(&confused, now),
            Err(AdminAuthFailure::Invalid),
            "algorithm confusion is refused"
        );
    }

    #[test]
    fn viewers_read_admins_write_and_expiry_follows_the_injected_clock() {
        let now = DateTime::from_timestamp(1_790_000_000, 0).expect("fixture time");
        let secret = b"fixture-admin-secret-long-enough-000000000";
        let verifier = AdminVerifier::hs256(secret, ISSUER, AUDIENCE).expect("verifier");
        let mut viewer = claims(now);
        viewer.roles = vec![ROLE_VIEWER.into()];
        let p = verifier.verify(&mint_hs256(secret, &viewer).expect("sign"), now).expect("valid");
        assert!(!p.can_write);
        let admin = mint_hs256(secret, &claims(now)).expect("sign");
        assert!(verifier.verify(&admin, now).expect("valid").can_write);
        assert_eq!(
            verifier.verify(&admin, now + chrono::Duration::seconds(600 + LEEWAY_SECONDS)),
            Err(AdminAuthFailure::Expired)
        );
    }

    const SECRET: &[u8] = b"fixture-admin-secret-long-enough-000000000";

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).expect("fixture time")
    }

    fn verify_claims(c: &AdminClaims, now: DateTime<Utc>) -> Result<AdminPrincipal, AdminAuthFailure> {
        AdminVerifier::hs256(SECRET, ISSUER, AUDIENCE)
            .expect("verifier")
            .verify(&mint_hs256(SECRET, c).expect("sign"), now)
    }

    #[test]
    fn expiry_admits_exactly_the_leeway_after_exp_and_not_a_second_more() {
        let now = t0();
        let mut c = claims(now);
        c.exp = now.timestamp() - LEEWAY_SECONDS + 1;
        assert!(verify_claims(&c, now).is_ok(), "inside the leeway");
        c.exp = now.timestamp() - LEEWAY_SECONDS;
        assert_eq!(
            verify_claims(&c, now),
            Err(AdminAuthFailure::Expired),
            "the leeway's last instant is past"
        );
        c.exp = now.timestamp() + 10;
        assert!(verify_claims(&c, now).is_ok(), "a token with ten seconds left is valid");
    }

    #[test]
    fn not_before_admits_exactly_the_leeway_early_and_not_a_second_more() {
        let now = t0();
        let mut c = claims(now);
        c.nbf = Some(now.timestamp() + LEEWAY_SECONDS);
        assert!(verify_claims(&c, now).is_ok(), "clock skew up to the leeway is tolerated");
        c.nbf = Some(now.timestamp() + LEEWAY_SECONDS + 1);
        assert_eq!(verify_claims(&c, now), Err(AdminAuthFailure::Invalid));
        c.nbf = Some(now.timestamp() + 10);
        assert!(verify_claims(&c, now).is_ok());
        c.nbf = Some(now.timestamp() - 3600);
        assert!(verify_claims(&c, now).is_ok(), "a past nbf is no obstacle");
    }

    #[test]
    fn subjects_must_be_present_and_at_most_256_bytes() {
        let now = t0();
        let mut c = claims(now);
        c.sub = String::new();
        assert_eq!(verify_claims(&c, now), Err(AdminAuthFailure::Invalid));
        c.sub = "s".repeat(256);
        assert!(verify_claims(&c, now).is_ok());
        c.sub = "s".repeat(257);
        assert_eq!(verify_claims(&c, now), Err(AdminAuthFailure::Invalid));
        c.sub = "admin@fixture".into();
        c.tenant_id = "_unattributed".into();
        assert_eq!(
            verify_claims(&c, now),
            Err(AdminAuthFailure::Invalid),
            "no token names the unattributed bucket"
        );
        c.tenant_id = "tenant-a".into();
        c.roles = vec!["auditor".into()];
        assert_eq!(verify_claims(&c, now), Err(AdminAuthFailure::NoRole));
    }

    #[test]
    fn a_single_key_ignores_the_kid_and_a_key_set_picks_by_kid() {
        let now = t0();
        // One configured key: a token's `kid` does not matter.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("any-kid".into());
        let with_kid =
            jsonwebtoken::encode(&header, &claims(now), &EncodingKey::from_secret(SECRET)).expect("sign");
        assert!(
            AdminVerifier::hs256(SECRET, ISSUER, AUDIENCE).expect("verifier").verify(&with_kid, now).is_ok()
        );

        // A key set: the `kid` chooses the key, and an unknown one is refused.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("fixture key");
        let der = key.public_key_raw();
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256", "x": b64(&der[1..33]), "y": b64(&der[33..65])}]});
        let verifier =
            AdminVerifier::jwks(jwks.to_string().as_bytes(), ISSUER, AUDIENCE).expect("jwks verifier");
        let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("encoding key");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let signed = jsonwebtoken::encode(&header, &claims(now), &encoding).expect("sign");
        assert!(verifier.verify(&signed, now).is_ok(), "the key named by kid verifies");
        header.kid = Some("k2".into());
        let unknown = jsonwebtoken::encode(&header, &claims(now), &encoding).expect("sign");
        assert_eq!(verifier.verify(&unknown, now), Err(AdminAuthFailure::Invalid));
    }
}
