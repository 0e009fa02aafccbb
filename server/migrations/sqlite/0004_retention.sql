-- Retention (server/src/retention.rs): used nonces are pruned by age.
CREATE INDEX agent_enrollment_nonces_used ON agent_enrollment_nonces (used_at);
