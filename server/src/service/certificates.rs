//! Certificates: the one place a certificate record is made for an agent's
//! verified key (exchange and rotation both call `certify`), the CA chain
//! and the certificate revocation list.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::Platform;
use crate::csr::VerifiedCsr;
use crate::error::Rejection;
use crate::model::*;
use crate::pki::{IssuedCertificate, VerifiedAgentCertificate, pem_of};

/// A signed CRL is reused for this long, so the public endpoint costs one
/// store query and one signature per interval however often it is
/// fetched. A revocation through this process clears it at once; through
/// another replica it reaches this one's CRL within the interval.
pub const CRL_REUSE: Duration = Duration::seconds(30);

/// Agent certificates this process verified and found bound to an
/// identity, by their DER. What a cached entry says cannot change: the
/// signature and profile of a certificate, and the identity its record
/// names. What can change is judged on every request all the same: the
/// validity by the clock, and revocation, staleness and the rotation grace
/// on the identity row the heartbeat or rotation commit locks. Bounded: a
/// full cache is emptied and refills from the next requests.
#[derive(Debug, Default)]
pub(super) struct VerifiedCertificates(
    std::sync::Mutex<HashMap<Vec<u8>, (VerifiedAgentCertificate, CertificateBinding)>>,
);

/// Entries of `VerifiedCertificates` (about 1 KiB each).
pub const VERIFIED_CERTIFICATES_MAX: usize = 65_536;

impl VerifiedCertificates {
    pub(super) fn get(&self, der: &[u8]) -> Option<(VerifiedAgentCertificate, CertificateBinding)> {
        self.0.lock().ok()?.get(der).cloned()
    }

    pub(super) fn insert(&self, der: &[u8], verified: VerifiedAgentCertificate, binding: CertificateBinding) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= VERIFIED_CERTIFICATES_MAX {
                map.clear();
            }
            map.insert(der.to_vec(), (verified, binding));
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct SignedCrl {
    signed_at: DateTime<Utc>,
    pem: String,
}

impl Platform {
    /// The certificate the platform CA issues for a verified CSR key, and
    /// the record the store keeps of it (serial and fingerprint, never the
    /// certificate).
    pub(super) fn certify(
        &self,
        csr: &VerifiedCsr,
        tenant_id: &str,
        agent_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(CertificateRecord, IssuedCertificate), Rejection> {
        let ca = self.ca.as_ref().ok_or(Rejection::CertificateAuthorityUnavailable)?;
        let issued =
            ca.issue(csr, tenant_id, agent_id, now, self.policy.certificate_validity).map_err(|e| {
                tracing::error!(error = %e, "the platform CA could not issue a certificate");
                Rejection::CertificateAuthorityUnavailable
            })?;
        let record = CertificateRecord {
            certificate_id: Uuid::new_v4(),
            tenant_id: tenant_id.to_owned(),
            agent_id,
            public_key_algorithm: csr.algorithm.as_str().to_owned(),
            public_key_sha256: csr.public_key_sha256.clone(),
            subject: issued.subject.clone(),
            serial_number: issued.serial_hex.clone(),
            certificate_sha256: Some(issued.sha256.clone()),
            not_before: issued.not_before,
            not_after: issued.not_after,
            status: CertificateStatus::Active,
        };
        Ok((record, issued))
    }

    /// The issuing CA certificate and intermediates, PEM.
    pub fn ca_chain_pem(&self) -> Result<String, Rejection> {
        self.ca.as_ref().map(|ca| ca.chain_pem().to_owned()).ok_or(Rejection::CertificateAuthorityUnavailable)
    }

    /// The CRL (PEM): every unexpired certificate of a revoked identity and
    /// every certificate superseded longer ago than the rotation grace.
    pub async fn certificate_revocation_list(&self) -> Result<String, Rejection> {
        let ca = self.ca.as_ref().ok_or(Rejection::CertificateAuthorityUnavailable)?;
        let now = self.clock.now();
        if let Some(cached) = self.crl_cache.lock().ok().and_then(|c| c.clone())
            && cached.signed_at <= now
            && now - cached.signed_at < CRL_REUSE
        {
            return Ok(cached.pem);
        }
        let revoked = self.store.revoked_certificates(now, now - self.policy.rotation_grace).await?;
        let der = ca.crl(&revoked, now).map_err(|e| {
            tracing::error!(error = %e, "the platform CA could not sign the CRL");
            Rejection::CertificateAuthorityUnavailable
        })?;
        let pem = pem_of("X509 CRL", &der);
        if let Ok(mut cache) = self.crl_cache.lock() {
            *cache = Some(SignedCrl { signed_at: now, pem: pem.clone() });
        }
        Ok(pem)
    }

    /// Forgets the signed CRL (a revocation was committed).
    pub(super) fn crl_changed(&self) {
        if let Ok(mut cache) = self.crl_cache.lock() {
            *cache = None;
        }
    }
}
