-- Every heartbeat updates its identity and asset rows. Leaving a third of
-- each page free lets PostgreSQL keep those updates on the same page
-- (heap-only tuples): no new index entries per heartbeat, so index scans
-- do not wade through dead versions between vacuums.
ALTER TABLE agent_identities SET (fillfactor = 70);
ALTER TABLE assets SET (fillfactor = 70);
