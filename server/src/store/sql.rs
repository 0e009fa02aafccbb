//! The statements both stores run, written once with PostgreSQL's `$N`
//! placeholders; each `Shared` also holds the SQLite text (`?N`, the same
//! numbering), made at compile time. A statement whose dialects differ
//! stays in its store.

/// One statement in both dialects.
#[derive(Debug, Clone, Copy)]
pub struct Shared {
    pub postgres: &'static str,
    pub sqlite: &'static str,
}

/// `text` with every `$` that starts a placeholder (`$` and a digit)
/// turned into `?`: the same length, the same numbering.
pub const fn sqlite_placeholders<const N: usize>(text: &str) -> [u8; N] {
    let src = text.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = if src[i] == b'$' && i + 1 < N && src[i + 1].is_ascii_digit() { b'?' } else { src[i] };
        i += 1;
    }
    out
}

macro_rules! shared {
    ($(#[$doc:meta])* $name:ident = $text:expr;) => {
        $(#[$doc])*
        pub const $name: Shared = {
            const BYTES: [u8; $text.len()] = sqlite_placeholders::<{ $text.len() }>($text);
            match std::str::from_utf8(&BYTES) {
                Ok(sqlite) => Shared { postgres: $text, sqlite },
                Err(_) => panic!("a shared statement is not UTF-8"),
            }
        };
    };
}

shared!(
    /// A heartbeat's first sight of an asset.
    INSERT_ASSET = "INSERT INTO assets (asset_id, tenant_id, agent_id, hostname, os_family, os_version, \
         first_seen_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT \
         (asset_id) DO NOTHING";
);

shared!(
    /// Whether one migration was applied.
    MIGRATION_APPLIED = "SELECT version FROM schema_migrations WHERE version = $1";
);

shared!(
    /// The newest migration applied (readiness).
    LATEST_MIGRATION = "SELECT MAX(version) FROM schema_migrations";
);

shared!(
    /// A new enrollment token (its keyed hash, never the token).
    INSERT_TOKEN = "INSERT INTO agent_enrollment_tokens (id, tenant_id, token_hash, label, site_id, \
         collector_id, max_uses, use_count, created_at, expires_at, created_by) VALUES ($1, $2, \
         $3, $4, $5, $6, $7, 0, $8, $9, $10)";
);

shared!(
    /// Revokes a token of the tenant that is not revoked yet.
    REVOKE_TOKEN = "UPDATE agent_enrollment_tokens SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND \
         revoked_at IS NULL";
);

shared!(
    /// The identity an accepted exchange creates.
    INSERT_IDENTITY = "INSERT INTO agent_identities (agent_id, tenant_id, collector_id, asset_id, site_id, \
         status, hostname, agent_version, os_family, enrollment_token_id, certificate_id, \
         fingerprint_hash, enrolled_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
         $12, $13)";
);

shared!(
    /// Redeems one use of a live token: conditional, so it cannot exceed `max_uses`, use an expired token or a revoked one.
    REDEEM_TOKEN_USE = "UPDATE agent_enrollment_tokens SET use_count = use_count + 1, last_used_at = $3 WHERE \
         tenant_id = $1 AND id = $2 AND revoked_at IS NULL AND expires_at > $3 AND use_count < \
         max_uses";
);

shared!(
    /// Revokes an identity that is not revoked yet.
    REVOKE_IDENTITY = "UPDATE agent_identities SET status = 'revoked', revoked_at = $3 WHERE tenant_id = $1 AND \
         agent_id = $2 AND status <> 'revoked'";
);

shared!(
    /// Revokes every certificate of a revoked identity not revoked yet (the
    /// active one and any superseded one still inside its validity).
    REVOKE_ACTIVE_CERTIFICATES = "UPDATE agent_device_certificates SET status = 'revoked', status_changed_at = $3 \
         WHERE tenant_id = $1 AND agent_id = $2 AND status <> 'revoked'";
);

shared!(
    /// The record of a revocation.
    INSERT_REVOCATION = "INSERT INTO agent_revocations (revocation_id, tenant_id, agent_id, revoked_by, reason, \
         revoked_at) VALUES ($1, $2, $3, $4, $5, $6)";
);

shared!(
    /// Marks an enrolled or active identity stale.
    MARK_IDENTITY_STALE = "UPDATE agent_identities SET status = 'stale' WHERE tenant_id = $1 AND agent_id = $2 AND \
         status IN ('enrolled', 'active')";
);

shared!(
    /// The certificate record a rotation replaced.
    SUPERSEDE_CERTIFICATE = "UPDATE agent_device_certificates SET status = 'superseded', status_changed_at = $3 \
         WHERE tenant_id = $1 AND certificate_id = $2";
);

shared!(
    /// Points an identity at its new certificate, keeping the previous one for the grace period.
    ROTATE_IDENTITY_CERTIFICATE = "UPDATE agent_identities SET certificate_id = $3, previous_certificate_id = $4, \
         rotated_at = $5 WHERE tenant_id = $1 AND agent_id = $2";
);

shared!(
    /// An audit record.
    INSERT_AUDIT = "INSERT INTO audit_events (audit_id, tenant_id, occurred_at, actor_type, actor_id, \
         action, target_type, target_id, outcome, reason_code, request_id, details) VALUES ($1, \
         $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
);

shared!(
    /// A certificate record.
    INSERT_CERTIFICATE = "INSERT INTO agent_device_certificates (certificate_id, tenant_id, agent_id, \
         public_key_algorithm, public_key_sha256, subject, serial_number, not_before, not_after, \
         status, certificate_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
);

shared!(
    /// A used nonce (its keyed hash); answers no row when it was used before.
    INSERT_NONCE = "INSERT INTO agent_enrollment_nonces (tenant_id, nonce_hash, used_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING";
);

shared!(
    /// The identity binding of a certificate, by its fingerprint.
    CERTIFICATE_BINDING = "SELECT c.certificate_id, c.agent_id, i.collector_id, i.asset_id FROM \
         agent_device_certificates c JOIN agent_identities i ON i.tenant_id = c.tenant_id AND i.agent_id = \
         c.agent_id WHERE c.tenant_id = $1 AND c.certificate_sha256 = $2";
);

/// The CRL's entries on SQLite (PostgreSQL runs the same predicate inside
/// `oneprotect_withdrawn_certificates`, which row-level security requires).
pub const WITHDRAWN_CERTIFICATES: &str = "SELECT serial_number, status, status_changed_at FROM \
     agent_device_certificates WHERE certificate_sha256 IS NOT NULL AND not_after > ?1 AND status_changed_at IS \
     NOT NULL AND (status = 'revoked' OR (status = 'superseded' AND status_changed_at <= ?2)) ORDER BY \
     status_changed_at, serial_number";

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Shared] = &[
        INSERT_ASSET,
        MIGRATION_APPLIED,
        LATEST_MIGRATION,
        INSERT_TOKEN,
        REVOKE_TOKEN,
        INSERT_IDENTITY,
        REDEEM_TOKEN_USE,
        REVOKE_IDENTITY,
        REVOKE_ACTIVE_CERTIFICATES,
        INSERT_REVOCATION,
        MARK_IDENTITY_STALE,
        SUPERSEDE_CERTIFICATE,
        ROTATE_IDENTITY_CERTIFICATE,
        INSERT_AUDIT,
        INSERT_CERTIFICATE,
        INSERT_NONCE,
        CERTIFICATE_BINDING,
    ];

    #[test]
    fn the_sqlite_text_differs_only_in_placeholders() {
        for s in ALL {
            assert_eq!(s.postgres.len(), s.sqlite.len());
            assert_eq!(s.postgres.replace('$', "?"), s.sqlite, "{}", s.postgres);
            assert!(!s.sqlite.contains('$'), "{}", s.sqlite);
        }
        assert_eq!(
            REVOKE_TOKEN.sqlite.split_whitespace().nth(5),
            Some("?3"),
            "numbering kept, not renumbered by position"
        );
    }
}
