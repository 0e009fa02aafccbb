-- Failed-exchange counters every replica shares (server/src/ratelimit.rs).
-- A key is a source address, or a token id at a source address: the
-- platform's, not a tenant's (the exchange counts before any token is
-- verified, so no tenant is known), hence no row-level security. No secret
-- is kept: a token id is not its secret.
CREATE TABLE exchange_failure_windows (
    key TEXT PRIMARY KEY,
    window_start TIMESTAMPTZ NOT NULL,
    failures INTEGER NOT NULL CHECK (failures >= 0),
    in_flight INTEGER NOT NULL CHECK (in_flight >= 0)
);
CREATE INDEX exchange_failure_windows_start ON exchange_failure_windows (window_start);
