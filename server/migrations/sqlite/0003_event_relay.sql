-- The relay (server/src/relay.rs) marks each outbox event once the broker
-- acknowledged it (microseconds since the epoch).
ALTER TABLE event_outbox ADD COLUMN published_at INTEGER;
CREATE INDEX event_outbox_unpublished ON event_outbox (seq) WHERE published_at IS NULL;
