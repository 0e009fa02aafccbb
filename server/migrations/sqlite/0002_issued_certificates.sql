-- Certificates issued by the platform CA: the fingerprint of each, and when
-- it was revoked or superseded (the CRL's revocation time, microseconds).
ALTER TABLE agent_device_certificates ADD COLUMN certificate_sha256 TEXT;
ALTER TABLE agent_device_certificates ADD COLUMN status_changed_at INTEGER;
-- Mutual TLS finds the record of a presented certificate by its fingerprint.
CREATE UNIQUE INDEX agent_device_certificates_sha256 ON agent_device_certificates (tenant_id, certificate_sha256)
    WHERE certificate_sha256 IS NOT NULL;
CREATE INDEX agent_device_certificates_withdrawn ON agent_device_certificates (not_after)
    WHERE status <> 'active' AND certificate_sha256 IS NOT NULL;
