-- OneProtect enrollment runtime, SQLite. Times are Unix microseconds (UTC).
-- Every tenant-scoped table carries tenant_id and every query filters on it.

CREATE TABLE agent_enrollment_tokens (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    label TEXT,
    site_id TEXT,
    collector_id TEXT,
    max_uses INTEGER NOT NULL CHECK (max_uses >= 1),
    use_count INTEGER NOT NULL DEFAULT 0 CHECK (use_count >= 0 AND use_count <= max_uses),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at INTEGER,
    created_by TEXT NOT NULL
);
CREATE INDEX agent_enrollment_tokens_tenant ON agent_enrollment_tokens (tenant_id, seq);

CREATE TABLE agent_identities (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    collector_id TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    site_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('enrolled', 'active', 'stale', 'revoked')),
    hostname TEXT,
    agent_version TEXT,
    os_family TEXT,
    enrollment_token_id TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    previous_certificate_id TEXT,
    rotated_at INTEGER,
    fingerprint_hash TEXT,
    enrolled_at INTEGER NOT NULL,
    last_seen_at INTEGER,
    last_sequence INTEGER,
    revoked_at INTEGER
);
CREATE INDEX agent_identities_tenant ON agent_identities (tenant_id, seq);

CREATE TABLE agent_device_certificates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    certificate_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    public_key_algorithm TEXT NOT NULL,
    public_key_sha256 TEXT NOT NULL,
    subject TEXT NOT NULL,
    serial_number TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'superseded', 'revoked'))
);
CREATE INDEX agent_device_certificates_agent ON agent_device_certificates (tenant_id, agent_id);

CREATE TABLE agent_revocations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    revocation_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    reason TEXT,
    revoked_at INTEGER NOT NULL
);

CREATE TABLE agent_enrollment_nonces (
    tenant_id TEXT NOT NULL,
    nonce_hash TEXT NOT NULL,
    used_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, nonce_hash)
);

CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    audit_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    actor_type TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    action TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('success', 'failure')),
    reason_code TEXT,
    request_id TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, seq);

CREATE TABLE event_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX event_outbox_tenant ON event_outbox (tenant_id, seq);

CREATE TABLE assets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    asset_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    hostname TEXT,
    os_family TEXT,
    os_version TEXT,
    first_seen_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);
