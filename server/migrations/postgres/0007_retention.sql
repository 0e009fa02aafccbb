-- Retention (server/src/retention.rs). The pruner deletes across tenants;
-- the tables are tenant-scoped under row-level security. This function,
-- owned by the migrating role, deletes one bounded batch per table of rows
-- past their window and nothing else; the extra policies let only the
-- owner, inside it, see and delete the rows. One replica prunes at a time.
CREATE INDEX agent_enrollment_nonces_used ON agent_enrollment_nonces (used_at);

DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['event_outbox', 'audit_events', 'agent_enrollment_nonces', 'agent_enrollment_tokens'] LOOP
        EXECUTE format('CREATE POLICY retention ON %I FOR ALL TO CURRENT_USER '
                       'USING (current_setting(''oneprotect.retention'', true) = ''on'')', t);
    END LOOP;
END $$;

CREATE FUNCTION oneprotect_prune(
    p_limit INTEGER,
    p_events_before TIMESTAMPTZ,
    p_events_published_only BOOLEAN,
    p_audit_before TIMESTAMPTZ,
    p_nonces_before TIMESTAMPTZ,
    p_tokens_before TIMESTAMPTZ
)
    RETURNS TABLE (events BIGINT, audit BIGINT, nonces BIGINT, tokens BIGINT)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
BEGIN
    events := 0; audit := 0; nonces := 0; tokens := 0;
    IF NOT pg_try_advisory_xact_lock(182059278) THEN
        RETURN NEXT;
        RETURN;
    END IF;
    PERFORM set_config('oneprotect.retention', 'on', true);
    -- The oldest events by commit order; of those, the ones past the window
    -- (and published, when the relay is on).
    DELETE FROM public.event_outbox WHERE seq IN (
        SELECT o.seq FROM (SELECT seq, occurred_at, published_at FROM public.event_outbox ORDER BY seq LIMIT p_limit) o
        WHERE o.occurred_at < p_events_before AND (o.published_at IS NOT NULL OR NOT p_events_published_only));
    GET DIAGNOSTICS events = ROW_COUNT;
    DELETE FROM public.audit_events WHERE seq IN (
        SELECT o.seq FROM (SELECT seq, occurred_at FROM public.audit_events ORDER BY seq LIMIT p_limit) o
        WHERE o.occurred_at < p_audit_before);
    GET DIAGNOSTICS audit = ROW_COUNT;
    DELETE FROM public.agent_enrollment_nonces WHERE (tenant_id, nonce_hash) IN (
        SELECT n.tenant_id, n.nonce_hash FROM public.agent_enrollment_nonces n WHERE n.used_at < p_nonces_before LIMIT p_limit);
    GET DIAGNOSTICS nonces = ROW_COUNT;
    DELETE FROM public.agent_enrollment_tokens WHERE id IN (
        SELECT t.id FROM public.agent_enrollment_tokens t
        WHERE t.expires_at < p_tokens_before OR t.revoked_at < p_tokens_before
           OR (t.use_count >= t.max_uses AND t.last_used_at < p_tokens_before)
        LIMIT p_limit);
    GET DIAGNOSTICS tokens = ROW_COUNT;
    PERFORM set_config('oneprotect.retention', '', true);
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION oneprotect_prune(INTEGER, TIMESTAMPTZ, BOOLEAN, TIMESTAMPTZ, TIMESTAMPTZ, TIMESTAMPTZ) FROM PUBLIC;
