-- OneProtect enrollment runtime, PostgreSQL.
--
-- Every tenant-scoped table has row-level security ENABLEd and FORCEd: rows
-- are visible and writable only when `oneprotect.tenant_id` (set per
-- transaction with set_config(..., true)) names their tenant. The
-- application connects as a role that is not superuser, not BYPASSRLS and
-- not the owner of these tables.

CREATE TABLE agent_enrollment_tokens (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id UUID PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    label TEXT,
    site_id TEXT,
    collector_id UUID,
    max_uses INTEGER NOT NULL CHECK (max_uses >= 1),
    use_count INTEGER NOT NULL DEFAULT 0 CHECK (use_count >= 0 AND use_count <= max_uses),
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    created_by TEXT NOT NULL
);
CREATE INDEX agent_enrollment_tokens_tenant ON agent_enrollment_tokens (tenant_id, seq);

CREATE TABLE agent_identities (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    agent_id UUID PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    collector_id UUID NOT NULL,
    asset_id UUID NOT NULL,
    site_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('enrolled', 'active', 'stale', 'revoked')),
    hostname TEXT,
    agent_version TEXT,
    os_family TEXT,
    enrollment_token_id UUID NOT NULL,
    certificate_id UUID NOT NULL,
    previous_certificate_id UUID,
    rotated_at TIMESTAMPTZ,
    fingerprint_hash TEXT,
    enrolled_at TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ,
    last_sequence BIGINT,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX agent_identities_tenant ON agent_identities (tenant_id, seq);

CREATE TABLE agent_device_certificates (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    certificate_id UUID PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    agent_id UUID NOT NULL,
    public_key_algorithm TEXT NOT NULL,
    public_key_sha256 TEXT NOT NULL,
    subject TEXT NOT NULL,
    serial_number TEXT NOT NULL,
    not_before TIMESTAMPTZ NOT NULL,
    not_after TIMESTAMPTZ NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'superseded', 'revoked'))
);
CREATE INDEX agent_device_certificates_agent ON agent_device_certificates (tenant_id, agent_id);

CREATE TABLE agent_revocations (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    revocation_id UUID PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    agent_id UUID NOT NULL,
    revoked_by TEXT NOT NULL,
    reason TEXT,
    revoked_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE agent_enrollment_nonces (
    tenant_id TEXT NOT NULL,
    nonce_hash TEXT NOT NULL,
    used_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, nonce_hash)
);

CREATE TABLE audit_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    audit_id UUID PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    actor_type TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    action TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('success', 'failure')),
    reason_code TEXT,
    request_id TEXT NOT NULL,
    details JSONB NOT NULL
);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, seq);

CREATE TABLE event_outbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    event_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    payload JSONB NOT NULL
);
CREATE INDEX event_outbox_tenant ON event_outbox (tenant_id, seq);

CREATE TABLE assets (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    asset_id UUID PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    agent_id UUID NOT NULL,
    hostname TEXT,
    os_family TEXT,
    os_version TEXT,
    first_seen_at TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL
);

DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['agent_enrollment_tokens', 'agent_identities', 'agent_device_certificates', 'agent_revocations',
                             'agent_enrollment_nonces', 'audit_events', 'event_outbox', 'assets'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_setting(''oneprotect.tenant_id'', true)) '
                       'WITH CHECK (tenant_id = current_setting(''oneprotect.tenant_id'', true))', t);
    END LOOP;
END $$;

-- The public exchange knows a token id but not its tenant. This function,
-- owned by the migrating role, maps one id to its tenant and nothing more.
-- The extra policy lets only the owner (inside this function) read only the
-- row whose id the function pinned for the current transaction.
CREATE POLICY token_tenant_resolution ON agent_enrollment_tokens FOR SELECT TO CURRENT_USER
    USING (id::text = current_setting('oneprotect.resolve_token_id', true));

CREATE FUNCTION oneprotect_enrollment_token_tenant(p_token_id UUID) RETURNS TEXT
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    found_tenant TEXT;
BEGIN
    PERFORM set_config('oneprotect.resolve_token_id', p_token_id::text, true);
    SELECT tenant_id INTO found_tenant FROM public.agent_enrollment_tokens WHERE id = p_token_id;
    PERFORM set_config('oneprotect.resolve_token_id', '', true);
    RETURN found_tenant;
END
$$;
REVOKE ALL ON FUNCTION oneprotect_enrollment_token_tenant(UUID) FROM PUBLIC;
