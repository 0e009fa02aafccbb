-- The outbox keeps each CloudEvent exactly as the platform serialized and
-- schema-validated it. `json` stores that text after checking it is JSON;
-- `jsonb` parsed and re-encoded every event on insert (jsonb_in was about
-- 5% of the database's CPU in a heartbeat batch) for containment queries
-- that nothing runs.
ALTER TABLE event_outbox ALTER COLUMN payload TYPE json USING payload::json;
