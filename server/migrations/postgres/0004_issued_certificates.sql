-- Certificates issued by the platform CA: the fingerprint of each, and when
-- it was revoked or superseded (the CRL's revocation time).
ALTER TABLE agent_device_certificates ADD COLUMN certificate_sha256 TEXT;
ALTER TABLE agent_device_certificates ADD COLUMN status_changed_at TIMESTAMPTZ;
-- Mutual TLS finds the record of a presented certificate by its fingerprint.
CREATE UNIQUE INDEX agent_device_certificates_sha256 ON agent_device_certificates (tenant_id, certificate_sha256)
    WHERE certificate_sha256 IS NOT NULL;
CREATE INDEX agent_device_certificates_withdrawn ON agent_device_certificates (not_after)
    WHERE status <> 'active' AND certificate_sha256 IS NOT NULL;

-- The CRL is the platform's, not a tenant's: it lists the serials of every
-- tenant's withdrawn certificates. This function, owned by the migrating
-- role, returns serials and times only (no tenant, agent or fingerprint);
-- the extra policy lets only the owner, inside this function, read the rows.
CREATE POLICY crl_listing ON agent_device_certificates FOR SELECT TO CURRENT_USER
    USING (current_setting('oneprotect.crl_listing', true) = 'on');

CREATE FUNCTION oneprotect_withdrawn_certificates(p_now TIMESTAMPTZ, p_superseded_before TIMESTAMPTZ)
    RETURNS TABLE (serial_number TEXT, status TEXT, status_changed_at TIMESTAMPTZ)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
BEGIN
    PERFORM set_config('oneprotect.crl_listing', 'on', true);
    RETURN QUERY
        SELECT c.serial_number, c.status, c.status_changed_at FROM public.agent_device_certificates c
        WHERE c.certificate_sha256 IS NOT NULL AND c.not_after > p_now AND c.status_changed_at IS NOT NULL
          AND (c.status = 'revoked' OR (c.status = 'superseded' AND c.status_changed_at <= p_superseded_before))
        ORDER BY c.status_changed_at, c.serial_number;
    PERFORM set_config('oneprotect.crl_listing', '', true);
END
$$;
REVOKE ALL ON FUNCTION oneprotect_withdrawn_certificates(TIMESTAMPTZ, TIMESTAMPTZ) FROM PUBLIC;
