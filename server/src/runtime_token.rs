//! Runtime service-account tokens: `oprt.v1.<kid>.<claims>.<mac>`.
//!
//! `claims` is base64url JSON; `mac` is HMAC-SHA256 under the key named by
//! `kid` over everything before the last dot. The current key signs; older
//! keys stay accepted until removed from configuration. Expiry is checked
//! against the injected clock. Nothing here touches storage: whether the
//! identity behind a token is still allowed is the heartbeat rules' job.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::error::RuntimeTokenFailure;
use crate::secrets::{HashKey, b64, constant_time_eq, sha256_hex, unb64};

pub const RUNTIME_TOKEN_PREFIX: &str = "oprt.v1.";
pub const SCOPE_AGENT_HEARTBEAT: &str = "agent_heartbeat";
pub const SUBJECT_SERVICE_ACCOUNT: &str = "service_account";
const MAX_TOKEN_BYTES: usize = 4096;

/// What a runtime token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeClaims {
    /// Tenant. (The wire names are short: the token rides on every heartbeat.)
    #[serde(rename = "tid")]
    pub tenant_id: String,
    /// Agent id (the actor).
    #[serde(rename = "aid")]
    pub agent_id: uuid::Uuid,
    #[serde(rename = "cid")]
    pub collector_id: uuid::Uuid,
    #[serde(rename = "asid")]
    pub asset_id: uuid::Uuid,
    /// The certificate record the token was issued with; rotation supersedes it.
    #[serde(rename = "crt")]
    pub certificate_id: uuid::Uuid,
    pub scope: String,
    /// Subject type: always `service_account` for agents.
    pub sub_type: String,
    pub iat: i64,
    pub exp: i64,
    /// Token id.
    pub jti: uuid::Uuid,
    /// The caller authenticated by its client certificate (these claims
    /// were made from the certificate's stored record, not read from a
    /// token), so a superseded credential is the certificate.
    #[serde(skip)]
    pub via_certificate: bool,
}

/// A signed token and what it is safe to record about it.
pub struct IssuedRuntimeToken {
    pub token: SecretString,
    pub key_id: String,
    pub expires_at: DateTime<Utc>,
    /// SHA-256 of the token: the only form that is stored or audited.
    pub sha256: String,
    pub jti: uuid::Uuid,
}

/// The runtime signing keys. An empty keyring means the secret is missing:
/// issuing and verifying both fail closed.
#[derive(Debug, Default)]
pub struct RuntimeKeyring {
    current: Option<String>,
    keys: BTreeMap<String, HashKey>,
}

/// A key id derived from the key itself, so operators need not invent one.
pub fn key_id_for(secret: &[u8]) -> String {
    format!("k{}", &sha256_hex(secret)[..12])
}

impl RuntimeKeyring {
    /// `current` signs; `previous` verify only.
    pub fn new(current: Option<Vec<u8>>, previous: Vec<Vec<u8>>) -> Result<Self, String> {
        let mut keys = BTreeMap::new();
        let mut current_id = None;
        for (i, secret) in current.into_iter().map(|c| (0, c)).chain(previous.into_iter().map(|p| (1, p))) {
            let id = key_id_for(&secret);
            keys.insert(id.clone(), HashKey::new(secret).map_err(|e| format!("runtime token secret: {e}"))?);
            if i == 0 {
                current_id = Some(id);
            }
        }
        Ok(Self { current: current_id, keys })
    }

    pub fn is_available(&self) -> bool {
        self.current.is_some()
    }

    pub fn current_key_id(&self) -> Option<&str> {
        self.current.as_deref()
    }

    pub fn issue(&self, claims: &RuntimeClaims) -> Option<IssuedRuntimeToken> {
        let kid = self.current.as_ref()?;
        let key = self.keys.get(kid)?;
        let body = serde_json::to_vec(claims).ok()?;
        let signed = format!("{RUNTIME_TOKEN_PREFIX}{kid}.{}", b64(&body));
        let mac = key.mac(&[signed.as_bytes()]);
        let token = format!("{signed}.{}", b64(&mac));
        Some(IssuedRuntimeToken {
            sha256: sha256_hex(token.as_bytes()),
            token: SecretString::from(token),
            key_id: kid.clone(),
            expires_at: DateTime::from_timestamp(claims.exp, 0)?,
            jti: claims.jti,
        })
    }

    /// Verifies format, key, signature and expiry. Scope, subject type and
    /// identity binding are checked by the caller.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<RuntimeClaims, RuntimeTokenFailure> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(RuntimeTokenFailure::Malformed);
        }
        let rest = token.strip_prefix(RUNTIME_TOKEN_PREFIX).ok_or(RuntimeTokenFailure::Malformed)?;
        let mut parts = rest.split('.');
        let (Some(kid), Some(body), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(RuntimeTokenFailure::Malformed);
        };
        let key = self.keys.get(kid).ok_or(RuntimeTokenFailure::UnknownKey)?;
        let signed = &token[..token.len() - mac.len() - 1];
        let mac = unb64(mac).ok_or(RuntimeTokenFailure::Malformed)?;
        if !constant_time_eq(&key.mac(&[signed.as_bytes()]), &mac) {
            return Err(RuntimeTokenFailure::BadSignature);
        }
        let claims: RuntimeClaims = unb64(body)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(RuntimeTokenFailure::Malformed)?;
        if now.timestamp() >= claims.exp {
            return Err(RuntimeTokenFailure::Expired);
        }
        Ok(claims)
    }
}

/// Builds the claims of a new token for an identity.
#[allow(clippy::too_many_arguments)]
pub fn claims_for(
    tenant_id: &str,
    agent_id: uuid::Uuid,
    collector_id: uuid::Uuid,
    asset_id: uuid::Uuid,
    certificate_id: uuid::Uuid,
    now: DateTime<Utc>,
    ttl: Duration,
) -> RuntimeClaims {
    RuntimeClaims {
        tenant_id: tenant_id.to_owned(),
        agent_id,
        collector_id,
        asset_id,
        certificate_id,
        scope: SCOPE_AGENT_HEARTBEAT.to_owned(),
        sub_type: SUBJECT_SERVICE_ACCOUNT.to_owned(),
        iat: now.timestamp(),
        exp: (now + ttl).timestamp(),
        jti: uuid::Uuid::new_v4(),
        via_certificate: false,
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).expect("fixture time")
    }

    fn claims() -> RuntimeClaims {
        let id = uuid::Uuid::from_u128;
        claims_for("tenant-a", id(1), id(2), id(3), id(4), now(), Duration::hours(1))
    }

    fn keyring() -> RuntimeKeyring {
        RuntimeKeyring::new(Some(vec![1u8; 32]), vec![]).expect("fixture keyring")
    }

    #[test]
    fn tokens_up_to_the_size_bound_are_judged_and_longer_ones_refused_unread() {
        let ring = keyring();
        let issued = ring.issue(&claims()).expect("issue");
        let token = issued.token.expose_secret();
        let (head, mac) = token.rsplit_once('.').expect("five parts");
        // Padding the signed part keeps the MAC valid base64 and wrong.
        let at_bound = format!("{head}{}.{mac}", "A".repeat(MAX_TOKEN_BYTES - token.len()));
        assert_eq!(at_bound.len(), MAX_TOKEN_BYTES);
        assert_eq!(
            ring.verify(&at_bound, now()),
            Err(RuntimeTokenFailure::BadSignature),
            "judged by its signature"
        );
        let past_bound = format!("{head}{}.{mac}", "A".repeat(MAX_TOKEN_BYTES + 1 - token.len()));
        assert_eq!(
            ring.verify(&past_bound, now()),
            Err(RuntimeTokenFailure::Malformed),
            "refused before any work"
        );
    }

    #[test]
    fn an_issued_token_verifies_until_it_expires() {
        let ring = keyring();
        let issued = ring.issue(&claims()).expect("issue");
        let token = issued.token.expose_secret();
        assert_eq!(ring.verify(token, now()), Ok(claims_with_jti(issued.jti)));
        assert_eq!(ring.verify(token, now() + Duration::hours(1)), Err(RuntimeTokenFailure::Expired));
        assert_eq!(issued.sha256, sha256_hex(token.as_bytes()));
    }

    fn claims_with_jti(jti: uuid::Uuid) -> RuntimeClaims {
        RuntimeClaims { jti, ..claims() }
    }

    #[test]
    fn tampered_payload_and_tampered_signature_fail() {
        let ring = keyring();
        let token = ring.issue(&claims()).expect("issue").token.expose_secret().to_owned();
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims();
        forged.tenant_id = "tenant-b".into();
        let forged_body = b64(&serde_json::to_vec(&forged).expect("json"));
        let tampered_payload = format!("{}.{}.{}.{}.{}", parts[0], parts[1], parts[2], forged_body, parts[4]);
        assert_eq!(ring.verify(&tampered_payload, now()), Err(RuntimeTokenFailure::BadSignature));
        let mut sig = unb64(parts[4]).expect("sig");
        sig[0] ^= 1;
        let tampered_sig = format!("{}.{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[3], b64(&sig));
        assert_eq!(ring.verify(&tampered_sig, now()), Err(RuntimeTokenFailure::BadSignature));
        // A forgery with changed claims and a truncated or empty MAC: a
        // comparison over the shorter length would accept it.
        let full = unb64(parts[4]).expect("sig");
        for mac in [b64(&full[..full.len() / 2]), b64(&full[..1]), String::new()] {
            let forged_token = format!("{}.{}.{}.{}.{}", parts[0], parts[1], parts[2], forged_body, mac);
            assert!(ring.verify(&forged_token, now()).is_err(), "a {}-character MAC is refused", mac.len());
            let same_claims = format!("{}.{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[3], mac);
            assert!(
                ring.verify(&same_claims, now()).is_err(),
                "a truncated MAC is refused even on genuine claims"
            );
        }
        assert_eq!(ring.verify("oprt.v1.only.three", now()), Err(RuntimeTokenFailure::Malformed));
        assert_eq!(ring.verify("eyJhbGciOiJub25lIn0.e30.", now()), Err(RuntimeTokenFailure::Malformed));
    }

    #[test]
    fn an_unknown_key_id_fails_and_a_previous_key_still_verifies() {
        let old = keyring();
        let token = old.issue(&claims()).expect("issue").token.expose_secret().to_owned();
        let other = RuntimeKeyring::new(Some(vec![2u8; 32]), vec![]).expect("keyring");
        assert_eq!(other.verify(&token, now()), Err(RuntimeTokenFailure::UnknownKey));
        let rotated = RuntimeKeyring::new(Some(vec![2u8; 32]), vec![vec![1u8; 32]]).expect("keyring");
        assert!(rotated.verify(&token, now()).is_ok(), "the previous key is accepted until removed");
        let fresh = rotated.issue(&claims()).expect("issue");
        assert_eq!(fresh.key_id, key_id_for(&[2u8; 32]), "the current key signs");
    }

    #[test]
    fn a_missing_secret_fails_closed() {
        let empty = RuntimeKeyring::new(None, vec![]).expect("keyring");
        assert!(!empty.is_available());
        assert!(empty.issue(&claims()).is_none());
        let token = keyring().issue(&claims()).expect("issue").token.expose_secret().to_owned();
        assert_eq!(empty.verify(&token, now()), Err(RuntimeTokenFailure::UnknownKey));
    }
}
