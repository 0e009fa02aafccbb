-- The relay (server/src/relay.rs) publishes every committed outbox event to
-- the broker and then marks it. The outbox is tenant-scoped, the relay is
-- the platform's: these functions, owned by the migrating role, claim and
-- mark events across tenants; the extra policy lets only the owner, inside
-- them, see and update the rows.
ALTER TABLE event_outbox ADD COLUMN published_at TIMESTAMPTZ;
CREATE INDEX event_outbox_unpublished ON event_outbox (seq) WHERE published_at IS NULL;

CREATE POLICY event_relay ON event_outbox FOR ALL TO CURRENT_USER
    USING (current_setting('oneprotect.event_relay', true) = 'on')
    WITH CHECK (current_setting('oneprotect.event_relay', true) = 'on');

-- The oldest unpublished events, locked until the caller's transaction ends.
CREATE FUNCTION oneprotect_unpublished_events(p_limit INTEGER)
    RETURNS TABLE (seq BIGINT, event_id TEXT, tenant_id TEXT, event_type TEXT, occurred_at TIMESTAMPTZ, payload TEXT)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
BEGIN
    PERFORM set_config('oneprotect.event_relay', 'on', true);
    RETURN QUERY
        SELECT e.seq, e.event_id, e.tenant_id, e.event_type, e.occurred_at, e.payload::text FROM public.event_outbox e
        WHERE e.published_at IS NULL ORDER BY e.seq LIMIT p_limit FOR UPDATE SKIP LOCKED;
    PERFORM set_config('oneprotect.event_relay', '', true);
END
$$;
REVOKE ALL ON FUNCTION oneprotect_unpublished_events(INTEGER) FROM PUBLIC;

CREATE FUNCTION oneprotect_mark_events_published(p_seqs BIGINT[], p_at TIMESTAMPTZ) RETURNS BIGINT
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    marked BIGINT;
BEGIN
    PERFORM set_config('oneprotect.event_relay', 'on', true);
    UPDATE public.event_outbox SET published_at = p_at WHERE seq = ANY(p_seqs) AND published_at IS NULL;
    GET DIAGNOSTICS marked = ROW_COUNT;
    PERFORM set_config('oneprotect.event_relay', '', true);
    RETURN marked;
END
$$;
REVOKE ALL ON FUNCTION oneprotect_mark_events_published(BIGINT[], TIMESTAMPTZ) FROM PUBLIC;
