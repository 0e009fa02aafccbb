//! The faulty store: the real store wrapped, one rule broken per fault,
//! with what the harness observed passing through it.

use super::*;

/// The real store with one fault.
pub struct FaultyStore {
    pub inner: Arc<dyn Store>,
    pub fault: Fault,
    pub tenants: Vec<String>,
    pub seen: Shared,
}

impl FaultyStore {
    fn other_tenant(&self, tenant: &str) -> Option<&String> {
        self.tenants.iter().find(|t| t.as_str() != tenant)
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn write_queue(&self) -> oneprotect_server::store::batch::WriteQueueSnapshot {
        self.inner.write_queue()
    }
    async fn ready(&self) -> StoreResult<()> {
        self.inner.ready().await
    }
    async fn insert_enrollment_token(
        &self,
        t: &EnrollmentTokenRecord,
        a: &AuditRecord,
        e: &OutboxEvent,
    ) -> StoreResult<()> {
        let mut t = t.clone();
        match self.fault {
            Fault::IssueOneUseTooMany => t.max_uses += 1,
            Fault::TokenTtlIgnored => t.expires_at += chrono::Duration::days(1),
            Fault::TokenExpiryInclusive => t.expires_at += chrono::Duration::microseconds(1),
            _ => {}
        }
        self.inner.insert_enrollment_token(&t, a, e).await
    }
    async fn list_enrollment_tokens(
        &self,
        tenant: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<EnrollmentTokenRecord>> {
        self.inner.list_enrollment_tokens(tenant, after, limit).await
    }
    async fn revoke_enrollment_token(
        &self,
        tenant: &str,
        id: Uuid,
        a: &AuditRecord,
        e: &OutboxEvent,
    ) -> StoreResult<RevokeOutcome<EnrollmentTokenRecord>> {
        match self.fault {
            Fault::RevokeTokenNotWritten => {
                return Ok(match self.inner.find_enrollment_token(id).await? {
                    Some(mut t) if t.tenant_id == tenant => {
                        t.revoked_at = Some(a.occurred_at);
                        RevokeOutcome::Revoked(t)
                    }
                    _ => RevokeOutcome::NotFound,
                });
            }
            Fault::RevokeAcrossTenants => {
                let outcome = self.inner.revoke_enrollment_token(tenant, id, a, e).await?;
                if matches!(outcome, RevokeOutcome::NotFound)
                    && let Some(other) = self.other_tenant(tenant)
                {
                    return self.inner.revoke_enrollment_token(other, id, a, e).await;
                }
                Ok(outcome)
            }
            _ => self.inner.revoke_enrollment_token(tenant, id, a, e).await,
        }
    }
    async fn find_enrollment_token(&self, id: Uuid) -> StoreResult<Option<EnrollmentTokenRecord>> {
        self.inner.find_enrollment_token(id).await
    }
    async fn commit_enrollment(&self, c: &EnrollmentCommit) -> StoreResult<EnrollmentOutcome> {
        let mut c = c.clone();
        let (nonce, fingerprint) = {
            let seen = observed(&self.seen);
            (seen.nonce.clone().unwrap_or_default(), seen.fingerprint.clone())
        };
        match self.fault {
            Fault::SkipNonceCheck => c.nonce_hash = KeyedHash::from_stored(Uuid::new_v4().to_string()),
            Fault::NonceScopedPerToken => {
                c.nonce_hash = KeyedHash::from_stored(format!("{}:{}", c.token_id, c.nonce_hash.as_str()))
            }
            Fault::RawNonceStored => c.nonce_hash = KeyedHash::from_stored(nonce),
            Fault::NonceInAuditDetails => {
                c.audit.details.insert("nonce".into(), nonce);
            }
            Fault::RawFingerprintStored => {
                c.identity.fingerprint_hash = fingerprint.map(KeyedHash::from_stored)
            }
            _ => {}
        }
        self.inner.commit_enrollment(&c).await
    }
    async fn get_identity(&self, tenant: &str, agent_id: Uuid) -> StoreResult<Option<AgentIdentityRecord>> {
        if self.fault == Fault::SkipTenantPredicate {
            for t in &self.tenants {
                if let Some(i) = self.inner.get_identity(t, agent_id).await? {
                    return Ok(Some(i));
                }
            }
        }
        self.inner.get_identity(tenant, agent_id).await
    }
    async fn list_identities(
        &self,
        tenant: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<AgentIdentityRecord>> {
        self.inner.list_identities(tenant, after, limit).await
    }
    async fn revoke_identity(
        &self,
        tenant: &str,
        agent_id: Uuid,
        by: &str,
        reason: Option<&str>,
        a: &AuditRecord,
        e: &OutboxEvent,
    ) -> StoreResult<RevokeOutcome<AgentIdentityRecord>> {
        match self.fault {
            Fault::RevokeIdentityNotWritten => Ok(match self.inner.get_identity(tenant, agent_id).await? {
                Some(mut i) => {
                    i.status = AgentStatus::Revoked;
                    i.revoked_at = Some(a.occurred_at);
                    RevokeOutcome::Revoked(i)
                }
                None => RevokeOutcome::NotFound,
            }),
            Fault::RevokeAcrossTenants => {
                let outcome = self.inner.revoke_identity(tenant, agent_id, by, reason, a, e).await?;
                if matches!(outcome, RevokeOutcome::NotFound)
                    && let Some(other) = self.other_tenant(tenant)
                {
                    return self.inner.revoke_identity(other, agent_id, by, reason, a, e).await;
                }
                Ok(outcome)
            }
            _ => self.inner.revoke_identity(tenant, agent_id, by, reason, a, e).await,
        }
    }
    async fn mark_identity_stale(&self, tenant: &str, agent_id: Uuid, a: &AuditRecord) -> StoreResult<()> {
        self.inner.mark_identity_stale(tenant, agent_id, a).await
    }
    async fn commit_heartbeat(&self, c: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        match self.fault {
            Fault::EqualSequenceAccepted => {
                let retry = c.clone();
                match self.inner.commit_heartbeat(c).await? {
                    HeartbeatOutcome::Duplicate => {
                        self.inner
                            .commit_heartbeat(HeartbeatCommit { sequence: retry.sequence + 1, ..retry })
                            .await
                    }
                    other => Ok(other),
                }
            }
            Fault::CollectorCheckRemoved => {
                let mut c = c;
                if let Some(stored) = self.inner.get_identity(&c.tenant_id, c.agent_id).await? {
                    c.binding.collector_id = stored.collector_id;
                    c.binding.asset_id = stored.asset_id;
                }
                self.inner.commit_heartbeat(c).await
            }
            _ => self.inner.commit_heartbeat(c).await,
        }
    }
    async fn commit_heartbeat_unbatched(&self, c: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        self.inner.commit_heartbeat_unbatched(c).await
    }
    async fn get_asset(&self, tenant: &str, asset_id: Uuid) -> StoreResult<Option<AssetRecord>> {
        self.inner.get_asset(tenant, asset_id).await
    }
    async fn commit_rotation(&self, c: &RotationCommit) -> StoreResult<RotationOutcome> {
        if self.fault == Fault::SkipRotationNonce {
            let mut c = c.clone();
            c.nonce_hash = KeyedHash::from_stored(Uuid::new_v4().to_string());
            return self.inner.commit_rotation(&c).await;
        }
        self.inner.commit_rotation(c).await
    }
    async fn get_certificate(&self, tenant: &str, id: Uuid) -> StoreResult<Option<CertificateRecord>> {
        self.inner.get_certificate(tenant, id).await
    }
    async fn certificate_binding(
        &self,
        tenant: &str,
        sha256: &str,
    ) -> StoreResult<Option<CertificateBinding>> {
        self.inner.certificate_binding(tenant, sha256).await
    }
    async fn revoked_certificates(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        superseded_before: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<oneprotect_server::pki::RevokedSerial>> {
        if self.fault == Fault::CrlOmitsRevoked {
            return Ok(Vec::new());
        }
        self.inner.revoked_certificates(now, superseded_before).await
    }
    async fn stored_bytes(&self) -> StoreResult<u64> {
        self.inner.stored_bytes().await
    }
    async fn prune(
        &self,
        cutoffs: &oneprotect_server::store::RetentionCutoffs,
        limit: u32,
    ) -> StoreResult<oneprotect_server::store::Pruned> {
        self.inner.prune(cutoffs, limit).await
    }
    fn shares_failure_counters(&self) -> bool {
        self.inner.shares_failure_counters()
    }
    async fn take_failure_slots(
        &self,
        keys: &[String],
        limit: u32,
        window: chrono::Duration,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Result<Vec<chrono::DateTime<chrono::Utc>>, u32>> {
        self.inner.take_failure_slots(keys, limit, window, now).await
    }
    async fn settle_failure_slots(
        &self,
        slots: &[(String, chrono::DateTime<chrono::Utc>)],
        failed: bool,
    ) -> StoreResult<()> {
        self.inner.settle_failure_slots(slots, failed).await
    }
    async fn claim_unpublished_events(
        &self,
        limit: u32,
    ) -> StoreResult<Box<dyn oneprotect_server::store::EventClaim>> {
        let claim = self.inner.claim_unpublished_events(limit).await?;
        if self.fault != Fault::RelayMarksUnsent {
            return Ok(claim);
        }
        let sent = claim
            .events()
            .iter()
            .filter(|e| e.event.event_type != "asset.telemetry.received")
            .cloned()
            .collect();
        Ok(Box::new(MarksUnsent { inner: claim, sent }))
    }
    async fn append_audit(&self, a: &AuditRecord, e: Option<&OutboxEvent>) -> StoreResult<()> {
        if self.fault == Fault::RefusalAuditedUnderOtherTenant
            && a.outcome == oneprotect_server::model::AuditOutcome::Failure
            && a.actor_type == oneprotect_server::model::ActorType::TenantAdmin
            && let Some(other) = self.other_tenant(&a.tenant_id)
        {
            let mut moved = a.clone();
            moved.tenant_id = other.clone();
            return self.inner.append_audit(&moved, e).await;
        }
        self.inner.append_audit(a, e).await
    }
    async fn list_audit(
        &self,
        tenant: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<AuditRecord>> {
        self.inner.list_audit(tenant, after, limit).await
    }
    async fn list_events(
        &self,
        tenant: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<OutboxEvent>> {
        if self.fault == Fault::ListEventsAcrossTenants {
            let mut items = Vec::new();
            for t in &self.tenants {
                items.extend(self.inner.list_events(t, None, 200).await?.items);
            }
            return Ok(Page { items, next_after: None });
        }
        self.inner.list_events(tenant, after, limit).await
    }
    async fn dump_all_rows(&self) -> StoreResult<Vec<String>> {
        self.inner.dump_all_rows().await
    }
}

/// A claim that hands the relay only some of its events and marks them all.
struct MarksUnsent {
    inner: Box<dyn oneprotect_server::store::EventClaim>,
    sent: Vec<oneprotect_server::store::RelayEvent>,
}

#[async_trait]
impl oneprotect_server::store::EventClaim for MarksUnsent {
    fn events(&self) -> &[oneprotect_server::store::RelayEvent] {
        &self.sent
    }

    async fn mark_published(
        self: Box<Self>,
        _n: usize,
        at: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        let all = self.inner.events().len();
        self.inner.mark_published(all, at).await
    }
}
