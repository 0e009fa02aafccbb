//! Agent identities: identity-bound heartbeat, certificate rotation and the
//! admin view (list, get, revoke).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use oneprotect_contracts::events;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use oneprotect_contracts::contract::OperationId;

use super::{PageRequest, Platform, RequestMeta, bounded, data};
use crate::admin_auth::AdminPrincipal;
use crate::csr::verify_csr_pem;
use crate::error::{Rejection, RuntimeTokenFailure};
use crate::model::*;
use crate::runtime_token::{
    IssuedRuntimeToken, RUNTIME_TOKEN_PREFIX, RuntimeClaims, SCOPE_AGENT_HEARTBEAT, SUBJECT_SERVICE_ACCOUNT,
    claims_for,
};
use crate::secrets;

/// An agent whose runtime token and stored identity agree.
#[derive(Debug, Clone)]
pub struct AgentCaller {
    pub claims: RuntimeClaims,
    pub identity: AgentIdentityRecord,
}

pub struct HeartbeatInput {
    pub sequence: u64,
    pub collected_at: DateTime<Utc>,
    pub hostname: String,
    pub agent_version: String,
    pub os_family: Option<String>,
    pub os_version: Option<String>,
    pub uptime_seconds: Option<u64>,
    pub cpu_count: Option<u32>,
    pub cpu_usage_percent: Option<f64>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub process_count: Option<u32>,
}

pub struct HeartbeatResult {
    pub agent_id: Uuid,
    pub status: AgentStatus,
    pub accepted_at: DateTime<Utc>,
    pub duplicate: bool,
}

pub struct RotationResult {
    pub certificate: CertificateRecord,
    /// The certificate itself (PEM for the response; never stored).
    pub issued: crate::pki::IssuedCertificate,
    pub runtime_token: IssuedRuntimeToken,
}

type AgentFailure = (Rejection, Option<String>, Option<String>);

/// The answer to a credential a rotation replaced: the token, or the
/// certificate when the caller authenticated by it.
fn superseded(claims: &RuntimeClaims) -> Rejection {
    if claims.via_certificate {
        Rejection::ClientCertificateInvalid
    } else {
        Rejection::RuntimeTokenInvalid(RuntimeTokenFailure::Superseded)
    }
}

impl Platform {
    /// The credential of an agent operation, judged before anything else of
    /// the request: a signed, unexpired runtime token of a service account
    /// with the heartbeat scope, for the agent the path names. Every failure
    /// is audited under the operation's action.
    pub async fn authenticate_runtime(
        &self,
        bearer: &str,
        path_agent_id: &str,
        op: OperationId,
        meta: &RequestMeta,
    ) -> Result<RuntimeClaims, Rejection> {
        match self.verify_agent_token(bearer, path_agent_id) {
            Ok(claims) => Ok(claims),
            Err((rejection, tenant, actor)) => {
                let target = Uuid::parse_str(path_agent_id).ok();
                self.audit_agent_failure(&rejection, tenant.as_deref(), actor.as_deref(), target, op, meta)
                    .await;
                Err(rejection)
            }
        }
    }

    /// The credentials of an agent operation under the platform's
    /// `AgentAuth` policy, judged before anything else of the request:
    /// the verified client certificate (`mtls`), the runtime token
    /// (`bearer`), or both bound to the same certificate (`mtls+bearer`).
    /// A credential the policy does not ask for is ignored. Every failure
    /// is audited under the operation's action.
    pub async fn authenticate_agent(
        &self,
        bearer: Option<&str>,
        certificate: Option<&[u8]>,
        path_agent_id: &str,
        op: OperationId,
        meta: &RequestMeta,
    ) -> Result<RuntimeClaims, Rejection> {
        let policy = self.policy.agent_auth;
        let judged = async {
            let by_certificate = if policy.needs_certificate() {
                let Some(der) = certificate else {
                    return Err((
                        Rejection::Unauthenticated(
                            "this platform authenticates agents by their client certificate (mutual TLS)",
                        ),
                        None,
                        None,
                    ));
                };
                Some(self.verify_agent_certificate(der, path_agent_id).await?)
            } else {
                None
            };
            let by_token = if policy.needs_bearer() {
                let Some(bearer) = bearer else {
                    return Err((
                        Rejection::Unauthenticated(
                            "this operation requires the agent's runtime bearer token",
                        ),
                        None,
                        None,
                    ));
                };
                Some(self.verify_agent_token(bearer, path_agent_id)?)
            } else {
                None
            };
            match (by_certificate, by_token) {
                (Some(cert), Some(token)) if cert.certificate_id != token.certificate_id => Err((
                    Rejection::ClientCertificateInvalid,
                    Some(cert.tenant_id.clone()),
                    Some(cert.agent_id.to_string()),
                )),
                (_, Some(claims)) | (Some(claims), None) => Ok(claims),
                (None, None) => Err((Rejection::Internal, None, None)),
            }
        }
        .await;
        match judged {
            Ok(claims) => Ok(claims),
            Err((rejection, tenant, actor)) => {
                let target = Uuid::parse_str(path_agent_id).ok();
                self.audit_agent_failure(&rejection, tenant.as_deref(), actor.as_deref(), target, op, meta)
                    .await;
                Err(rejection)
            }
        }
    }

    /// The rules of a client certificate, in order: the platform CA issued
    /// it for an agent and it is valid now (`PlatformCa::verify_agent_certificate`);
    /// it names the agent in the path; the store knows it as one of that
    /// agent's certificates. What the identity's status and the rotation
    /// grace then allow is judged exactly as for a runtime token, on the
    /// claims this returns.
    async fn verify_agent_certificate(
        &self,
        der: &[u8],
        path_agent_id: &str,
    ) -> Result<RuntimeClaims, AgentFailure> {
        let ca = self.ca.as_ref().ok_or((Rejection::CertificateAuthorityUnavailable, None, None))?;
        let now = self.clock.now();
        let cached = self.certificates.get(der);
        let verified = match &cached {
            // Signature, profile and binding never change for one certificate; its validity is judged now.
            Some((verified, _)) if verified.valid_at(now) => verified.clone(),
            Some(_) => return Err((Rejection::ClientCertificateInvalid, None, None)),
            None => ca.verify_agent_certificate(der, now).map_err(|reason| {
                tracing::info!(reason, "client certificate refused");
                (Rejection::ClientCertificateInvalid, None, None)
            })?,
        };
        let fail =
            |r: Rejection| Err((r, Some(verified.tenant_id.clone()), Some(verified.agent_id.to_string())));
        let Ok(path_agent_id) = Uuid::parse_str(path_agent_id) else {
            return fail(Rejection::ParameterInvalid("path parameter `agent_id` must be a UUID".into()));
        };
        if verified.agent_id != path_agent_id {
            return fail(Rejection::ActorMismatch);
        }
        let binding = match cached {
            Some((_, binding)) => binding,
            None => match self.store.certificate_binding(&verified.tenant_id, &verified.sha256).await {
                Ok(Some(b)) if b.agent_id == verified.agent_id => {
                    self.certificates.insert(der, verified.clone(), b);
                    b
                }
                Ok(_) => return fail(Rejection::ClientCertificateInvalid),
                Err(e) => return fail(e.into()),
            },
        };
        let mut claims = claims_for(
            &verified.tenant_id,
            binding.agent_id,
            binding.collector_id,
            binding.asset_id,
            binding.certificate_id,
            now,
            self.policy.runtime_token_ttl,
        );
        claims.via_certificate = true;
        Ok(claims)
    }

    /// Every rule that binds verified token claims to the stored identity,
    /// in order; the first that fails decides the answer, and every failure
    /// is audited.
    async fn bind_agent(
        &self,
        claims: RuntimeClaims,
        op: OperationId,
        meta: &RequestMeta,
    ) -> Result<AgentCaller, Rejection> {
        let outcome = match self.store.get_identity(&claims.tenant_id, claims.agent_id).await {
            Err(e) => Err(e.into()),
            Ok(identity) => match admit(identity.as_ref(), &self.binding(&claims, op), self.clock.now()) {
                Ok(identity) => return Ok(AgentCaller { identity: identity.clone(), claims }),
                Err(refusal) => Err(self.refusal(refusal, &claims, meta).await),
            },
        };
        if let Err(rejection) = &outcome {
            self.audit_agent_failure(
                rejection,
                Some(&claims.tenant_id),
                Some(&claims.agent_id.to_string()),
                Some(claims.agent_id),
                op,
                meta,
            )
            .await;
        }
        outcome
    }

    async fn audit_agent_failure(
        &self,
        rejection: &Rejection,
        tenant: Option<&str>,
        actor: Option<&str>,
        agent_id: Option<Uuid>,
        op: OperationId,
        meta: &RequestMeta,
    ) {
        let record = self.audit(
            tenant.unwrap_or(UNATTRIBUTED_TENANT),
            (ActorType::Agent, actor.unwrap_or("unknown")),
            super::access(op).action,
            ("agent", agent_id.map(|a| a.to_string())),
            Some(rejection),
            meta,
            BTreeMap::new(),
        );
        self.audit_rejection(record, None).await;
    }

    /// The stateless rules: a signed, unexpired runtime token of a service
    /// account, with the heartbeat scope, for the agent in the path.
    fn verify_agent_token(&self, bearer: &str, path_agent_id: &str) -> Result<RuntimeClaims, AgentFailure> {
        let now = self.clock.now();
        if !self.runtime_keys.is_available() {
            return Err((Rejection::RuntimeSecretUnavailable, None, None));
        }
        if !bearer.starts_with(RUNTIME_TOKEN_PREFIX) {
            if let Ok(admin) = self.admin.verify(bearer, now) {
                return Err((Rejection::NotServiceAccount, Some(admin.tenant_id), Some(admin.subject)));
            }
            return Err((Rejection::RuntimeTokenInvalid(RuntimeTokenFailure::Malformed), None, None));
        }
        let claims = self
            .runtime_keys
            .verify(bearer, now)
            .map_err(|f| (Rejection::RuntimeTokenInvalid(f), None, None))?;
        let fail = |r: Rejection| Err((r, Some(claims.tenant_id.clone()), Some(claims.agent_id.to_string())));
        if claims.sub_type != SUBJECT_SERVICE_ACCOUNT {
            return fail(Rejection::NotServiceAccount);
        }
        if claims.scope != SCOPE_AGENT_HEARTBEAT {
            return fail(Rejection::ScopeForbidden);
        }
        let Ok(path_agent_id) = Uuid::parse_str(path_agent_id) else {
            return fail(Rejection::ParameterInvalid("path parameter `agent_id` must be a UUID".into()));
        };
        if claims.agent_id != path_agent_id {
            return fail(Rejection::ActorMismatch);
        }
        Ok(claims)
    }

    /// What the token claims, judged against the stored identity by
    /// `model::admit`. Only heartbeats may use a token from before a
    /// rotation, and only during the grace period.
    fn binding(&self, claims: &RuntimeClaims, op: OperationId) -> AgentBinding {
        AgentBinding {
            collector_id: claims.collector_id,
            asset_id: claims.asset_id,
            certificate_id: claims.certificate_id,
            stale_after: self.policy.stale_after,
            rotation_grace: (op == OperationId::PostAgentHeartbeat).then_some(self.policy.rotation_grace),
        }
    }

    /// The answer to a refusal; an identity found silent past the staleness
    /// limit is recorded as stale (once, audited) before it is refused.
    async fn refusal(
        &self,
        refusal: IdentityRefusal,
        claims: &RuntimeClaims,
        meta: &RequestMeta,
    ) -> Rejection {
        match refusal {
            IdentityRefusal::Unknown => Rejection::IdentityUnknown,
            IdentityRefusal::CollectorMismatch => Rejection::CollectorMismatch,
            IdentityRefusal::Revoked => Rejection::IdentityRevoked,
            IdentityRefusal::Superseded => superseded(claims),
            IdentityRefusal::Stale { marked } => {
                if !marked {
                    let record = self.audit(
                        &claims.tenant_id,
                        (ActorType::System, "staleness"),
                        AuditAction::AgentMarkStale,
                        ("agent", Some(claims.agent_id.to_string())),
                        None,
                        meta,
                        BTreeMap::new(),
                    );
                    if let Err(e) =
                        self.store.mark_identity_stale(&claims.tenant_id, claims.agent_id, &record).await
                    {
                        tracing::error!(error = %e, "could not persist a stale identity");
                    }
                }
                Rejection::IdentityStale
            }
        }
    }

    /// Accepts telemetry from an authenticated agent. Identity comes from
    /// the stored record, never from the body. The token is checked here;
    /// the identity rules (`model::judge_heartbeat`) are applied by the
    /// store inside the write transaction, on the locked row, so no
    /// separate read precedes the write and a revocation committed before
    /// it is seen. An identity's first heartbeat takes a second commit: the
    /// store asks for the first-contact records (asset discovery,
    /// activation audit) instead of every heartbeat building them.
    pub async fn heartbeat(
        &self,
        claims: RuntimeClaims,
        input: HeartbeatInput,
        meta: &RequestMeta,
    ) -> Result<HeartbeatResult, Rejection> {
        let now = self.clock.now();
        let sequence = i64::try_from(input.sequence)
            .map_err(|_| Rejection::RequestInvalid("sequence is too large".into()))?;
        let mut outcome =
            self.store.commit_heartbeat(self.heartbeat_commit(&claims, &input, now, sequence, None)?).await?;
        if outcome == HeartbeatOutcome::FirstContactRequired {
            let first_contact = self.first_contact(&claims, &input, now, meta)?;
            outcome = self
                .store
                .commit_heartbeat(self.heartbeat_commit(
                    &claims,
                    &input,
                    now,
                    sequence,
                    Some(first_contact),
                )?)
                .await?;
        }
        let duplicate = match outcome {
            HeartbeatOutcome::Accepted => false,
            HeartbeatOutcome::Duplicate => true,
            HeartbeatOutcome::Refused(refusal) => {
                let rejection = self.refusal(refusal, &claims, meta).await;
                self.audit_agent_failure(
                    &rejection,
                    Some(&claims.tenant_id),
                    Some(&claims.agent_id.to_string()),
                    Some(claims.agent_id),
                    OperationId::PostAgentHeartbeat,
                    meta,
                )
                .await;
                return Err(rejection);
            }
            HeartbeatOutcome::FirstContactRequired => {
                tracing::error!("the store asked again for first-contact records it was given");
                return Err(Rejection::Internal);
            }
        };
        self.metrics.inc(
            "oneprotect_heartbeats_total",
            "outcome",
            if duplicate { "duplicate" } else { "accepted" },
        );
        Ok(HeartbeatResult {
            agent_id: claims.agent_id,
            status: AgentStatus::Active,
            accepted_at: now,
            duplicate,
        })
    }

    /// What one heartbeat asks the store to write.
    fn heartbeat_commit(
        &self,
        claims: &RuntimeClaims,
        input: &HeartbeatInput,
        now: DateTime<Utc>,
        sequence: i64,
        first_contact: Option<FirstContact>,
    ) -> Result<HeartbeatCommit, Rejection> {
        Ok(HeartbeatCommit {
            tenant_id: claims.tenant_id.clone(),
            agent_id: claims.agent_id,
            binding: self.binding(claims, OperationId::PostAgentHeartbeat),
            now,
            sequence,
            hostname: input.hostname.clone(),
            agent_version: input.agent_version.clone(),
            os_family: input.os_family.clone(),
            os_version: input.os_version.clone(),
            telemetry_event: self.telemetry_event(claims, input, now)?,
            first_contact,
        })
    }

    /// The `asset.telemetry.received` event of one heartbeat.
    fn telemetry_event(
        &self,
        claims: &RuntimeClaims,
        input: &HeartbeatInput,
        now: DateTime<Utc>,
    ) -> Result<OutboxEvent, Rejection> {
        let data = events::AssetTelemetryReceivedData {
            agent_id: claims.agent_id,
            asset_id: claims.asset_id,
            sequence: input.sequence,
            received_at: now,
            hostname: Some(bounded(&input.hostname)?),
            uptime_seconds: input.uptime_seconds,
            cpu_count: input.cpu_count,
            cpu_usage_percent: input.cpu_usage_percent,
            memory_total_bytes: input.memory_total_bytes,
            memory_used_bytes: input.memory_used_bytes,
            process_count: input.process_count,
        };
        self.event(&claims.tenant_id, &claims.asset_id.to_string(), data)
    }

    /// What an identity's first heartbeat writes besides its telemetry.
    fn first_contact(
        &self,
        claims: &RuntimeClaims,
        input: &HeartbeatInput,
        now: DateTime<Utc>,
        meta: &RequestMeta,
    ) -> Result<FirstContact, Rejection> {
        let data = events::AssetDiscoveredData {
            asset_id: claims.asset_id,
            agent_id: claims.agent_id,
            collector_id: claims.collector_id,
            hostname: bounded(&input.hostname)?,
            os_family: input.os_family.as_deref().map(bounded).transpose()?,
            os_version: input.os_version.as_deref().map(bounded).transpose()?,
            discovered_at: now,
        };
        let actor = claims.agent_id.to_string();
        Ok(FirstContact {
            discovered_event: self.event(&claims.tenant_id, &claims.asset_id.to_string(), data)?,
            activation_audit: self.audit(
                &claims.tenant_id,
                (ActorType::Agent, &actor),
                AuditAction::AgentActivate,
                ("agent", Some(actor.clone())),
                None,
                meta,
                BTreeMap::new(),
            ),
        })
    }

    /// New CSR in; new certificate record and runtime token out. Tokens
    /// issued with the previous certificate keep working for heartbeats
    /// during the rotation grace period only.
    pub async fn rotate_certificate(
        &self,
        claims: RuntimeClaims,
        csr_pem: &str,
        nonce: &SecretString,
        meta: &RequestMeta,
    ) -> Result<RotationResult, Rejection> {
        let caller = self.bind_agent(claims, OperationId::RotateAgentCertificate, meta).await?;
        let (tenant, identity) = (caller.claims.tenant_id.clone(), caller.identity);
        let actor = identity.agent_id.to_string();
        let reject = |r: Rejection| async {
            let record = self.audit(
                &tenant,
                (ActorType::Agent, &actor),
                AuditAction::AgentRotate,
                ("agent", Some(actor.clone())),
                Some(&r),
                meta,
                BTreeMap::new(),
            );
            self.audit_rejection(record, None).await;
            r
        };
        if !secrets::nonce_is_well_formed(nonce.expose_secret()) {
            return Err(reject(Rejection::NonceInvalid).await);
        }
        let csr = match verify_csr_pem(csr_pem) {
            Ok(c) => c,
            Err(detail) => return Err(reject(Rejection::CsrInvalid(detail)).await),
        };
        let now = self.clock.now();
        let (certificate, issued) = match self.certify(&csr, &tenant, identity.agent_id, now) {
            Ok(c) => c,
            Err(r) => return Err(reject(r).await),
        };
        let claims = claims_for(
            &tenant,
            identity.agent_id,
            identity.collector_id,
            identity.asset_id,
            certificate.certificate_id,
            now,
            self.policy.runtime_token_ttl,
        );
        let runtime_token = self.runtime_keys.issue(&claims).ok_or(Rejection::RuntimeSecretUnavailable)?;
        let mut details = BTreeMap::new();
        details.insert("previous_certificate_id".to_owned(), identity.certificate_id.to_string());
        details.insert("certificate_id".to_owned(), certificate.certificate_id.to_string());
        details.insert("certificate_serial".to_owned(), issued.serial_hex.clone());
        details.insert("certificate_sha256".to_owned(), issued.sha256.clone());
        details.insert("runtime_token_sha256".to_owned(), runtime_token.sha256.clone());
        details.insert("runtime_token_key_id".to_owned(), runtime_token.key_id.clone());
        let audit = self.audit(
            &tenant,
            (ActorType::Agent, &actor),
            AuditAction::AgentRotate,
            ("agent", Some(actor.clone())),
            None,
            meta,
            details,
        );
        let payload: events::AgentCertificateRotatedData = data(serde_json::json!({
            "agent_id": identity.agent_id,
            "previous_certificate_id": identity.certificate_id,
            "certificate_id": certificate.certificate_id,
            "public_key_sha256": certificate.public_key_sha256,
            "certificate_serial": issued.serial_hex,
            "certificate_sha256": issued.sha256,
            "not_after": certificate.not_after,
            "rotated_at": now,
        }))?;
        let event = self.event(&tenant, &actor, payload)?;
        let commit = RotationCommit {
            tenant_id: tenant.clone(),
            agent_id: identity.agent_id,
            now,
            nonce_hash: secrets::nonce_hash(&self.hash_key, &tenant, nonce.expose_secret()),
            presented_certificate_id: caller.claims.certificate_id,
            certificate: certificate.clone(),
            audit,
            event,
        };
        match self.store.commit_rotation(&commit).await? {
            RotationOutcome::Rotated => Ok(RotationResult { certificate, issued, runtime_token }),
            RotationOutcome::NonceReplayed => Err(reject(Rejection::NonceReplayed).await),
            RotationOutcome::Superseded => Err(reject(superseded(&caller.claims)).await),
            RotationOutcome::NotAllowed(None) => Err(reject(Rejection::IdentityUnknown).await),
            RotationOutcome::NotAllowed(Some(AgentStatus::Stale)) => {
                Err(reject(Rejection::IdentityStale).await)
            }
            RotationOutcome::NotAllowed(Some(_)) => Err(reject(Rejection::IdentityRevoked).await),
        }
    }

    /// The identity as the admin API shows it (staleness applied).
    pub fn present(&self, mut identity: AgentIdentityRecord) -> AgentIdentityRecord {
        identity.status = identity.effective_status(self.clock.now(), self.policy.stale_after);
        identity
    }

    pub async fn list_agents(
        &self,
        admin: &AdminPrincipal,
        page: PageRequest,
    ) -> Result<Page<AgentIdentityRecord>, Rejection> {
        let mut page = self.store.list_identities(&admin.tenant_id, page.after, page.limit).await?;
        page.items = page.items.into_iter().map(|i| self.present(i)).collect();
        Ok(page)
    }

    /// Another tenant's identity is `NotFound`, never forbidden.
    pub async fn get_agent(
        &self,
        admin: &AdminPrincipal,
        agent_id: Uuid,
    ) -> Result<AgentIdentityRecord, Rejection> {
        self.store
            .get_identity(&admin.tenant_id, agent_id)
            .await?
            .map(|i| self.present(i))
            .ok_or(Rejection::NotFound)
    }

    /// Idempotent. Every runtime token of the identity stops working at once
    /// because heartbeat and rotation read the stored status.
    pub async fn revoke_agent(
        &self,
        admin: &AdminPrincipal,
        agent_id: Uuid,
        reason: Option<String>,
        meta: &RequestMeta,
    ) -> Result<AgentIdentityRecord, Rejection> {
        let now = self.clock.now();
        let actor = (ActorType::TenantAdmin, admin.subject.as_str());
        let target = ("agent", Some(agent_id.to_string()));
        let mut details = BTreeMap::new();
        if let Some(r) = &reason {
            details.insert("reason".to_owned(), r.clone());
        }
        let audit = self.audit(
            &admin.tenant_id,
            actor,
            AuditAction::AgentRevoke,
            target.clone(),
            None,
            meta,
            details,
        );
        let payload: events::AgentRevokedData = data(
            serde_json::json!({ "agent_id": agent_id, "revoked_by": admin.subject, "reason": reason, "revoked_at": now }),
        )?;
        let event = self.event(&admin.tenant_id, &agent_id.to_string(), payload)?;
        match self
            .store
            .revoke_identity(&admin.tenant_id, agent_id, &admin.subject, reason.as_deref(), &audit, &event)
            .await?
        {
            RevokeOutcome::Revoked(mut i) => {
                self.crl_changed();
                i.status = AgentStatus::Revoked;
                i.revoked_at = Some(now);
                Ok(i)
            }
            RevokeOutcome::AlreadyRevoked(i) => Ok(i),
            RevokeOutcome::NotFound => {
                let rejection = Rejection::NotFound;
                let record = self.audit(
                    &admin.tenant_id,
                    actor,
                    AuditAction::AgentRevoke,
                    target,
                    Some(&rejection),
                    meta,
                    BTreeMap::new(),
                );
                self.audit_rejection(record, None).await;
                Err(rejection)
            }
        }
    }
}
