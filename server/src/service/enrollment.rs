//! Enrollment tokens and the token-for-identity exchange.

use std::collections::BTreeMap;

use chrono::Duration;
use oneprotect_contracts::events;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::{PageRequest, Platform, RequestMeta, data};
use crate::admin_auth::AdminPrincipal;
use crate::csr::{VerifiedCsr, verify_csr_pem};
use crate::error::{Rejection, TokenFailure};
use crate::model::*;
use crate::pki::IssuedCertificate;
use crate::ratelimit::exchange_keys;
use crate::runtime_token::{IssuedRuntimeToken, claims_for};
use crate::secrets;

pub struct IssueInput {
    pub ttl_seconds: u32,
    pub max_uses: u32,
    pub label: Option<String>,
    pub site_id: Option<String>,
    pub collector_id: Option<Uuid>,
}

pub struct IssuedToken {
    /// Shown once, in the issue response only.
    pub secret: SecretString,
    pub record: EnrollmentTokenRecord,
}

pub struct ExchangeInput {
    pub enrollment_token: SecretString,
    pub csr_pem: String,
    pub nonce: SecretString,
    pub hostname: String,
    pub agent_version: String,
    pub os_family: Option<String>,
    pub hardware_fingerprint_hash: Option<SecretString>,
}

pub struct ExchangeResult {
    pub identity: AgentIdentityRecord,
    pub certificate: CertificateRecord,
    /// The certificate itself (PEM for the response; never stored).
    pub issued: IssuedCertificate,
    pub runtime_token: IssuedRuntimeToken,
}

impl Platform {
    /// Issues a bounded enrollment token; its secret is returned once.
    pub async fn issue_enrollment_token(
        &self,
        admin: &AdminPrincipal,
        input: IssueInput,
        meta: &RequestMeta,
    ) -> Result<IssuedToken, Rejection> {
        let ttl = Duration::seconds(i64::from(input.ttl_seconds));
        let out_of_bounds = if ttl < Duration::minutes(1) || ttl > self.policy.max_enrollment_token_ttl {
            Some(format!(
                "ttl_seconds must be between 60 and {}",
                self.policy.max_enrollment_token_ttl.num_seconds()
            ))
        } else if input.max_uses == 0 || input.max_uses > self.policy.max_enrollment_token_uses {
            Some(format!("max_uses must be between 1 and {}", self.policy.max_enrollment_token_uses))
        } else {
            None
        };
        if let Some(detail) = out_of_bounds {
            let rejection = Rejection::RequestInvalid(detail);
            let record = self.audit(
                &admin.tenant_id,
                (ActorType::TenantAdmin, &admin.subject),
                AuditAction::EnrollmentTokenIssue,
                ("enrollment_token", None),
                Some(&rejection),
                meta,
                BTreeMap::new(),
            );
            self.audit_rejection(record, None).await;
            return Err(rejection);
        }
        let now = self.clock.now();
        let minted = secrets::mint_enrollment_token();
        let record = EnrollmentTokenRecord {
            id: minted.id,
            tenant_id: admin.tenant_id.clone(),
            token_hash: secrets::enrollment_token_hash(&self.hash_key, minted.secret.expose_secret()),
            label: input.label,
            site_id: input.site_id,
            collector_id: input.collector_id,
            max_uses: input.max_uses,
            use_count: 0,
            created_at: now,
            expires_at: now + ttl,
            last_used_at: None,
            revoked_at: None,
            created_by: admin.subject.clone(),
        };
        let mut details = BTreeMap::new();
        details.insert("max_uses".to_owned(), record.max_uses.to_string());
        details.insert("expires_at".to_owned(), record.expires_at.to_rfc3339());
        let audit = self.audit(
            &admin.tenant_id,
            (ActorType::TenantAdmin, &admin.subject),
            AuditAction::EnrollmentTokenIssue,
            ("enrollment_token", Some(record.id.to_string())),
            None,
            meta,
            details,
        );
        let payload: events::AgentEnrollmentTokenIssuedData = data(serde_json::json!({
            "enrollment_token_id": record.id,
            "issued_by": admin.subject,
            "label": record.label,
            "max_uses": record.max_uses,
            "expires_at": record.expires_at,
            "issued_at": now,
            "site_id": record.site_id,
            "collector_id": record.collector_id,
        }))?;
        let event = self.event(&admin.tenant_id, &record.id.to_string(), payload)?;
        self.store.insert_enrollment_token(&record, &audit, &event).await?;
        self.metrics.inc("oneprotect_enrollment_tokens_issued_total", "tenant", "all");
        Ok(IssuedToken { secret: minted.secret, record })
    }

    pub async fn list_enrollment_tokens(
        &self,
        admin: &AdminPrincipal,
        page: PageRequest,
    ) -> Result<Page<EnrollmentTokenRecord>, Rejection> {
        Ok(self.store.list_enrollment_tokens(&admin.tenant_id, page.after, page.limit).await?)
    }

    /// Idempotent; a token of another tenant is `NotFound`.
    pub async fn revoke_enrollment_token(
        &self,
        admin: &AdminPrincipal,
        id: Uuid,
        reason: Option<String>,
        meta: &RequestMeta,
    ) -> Result<EnrollmentTokenRecord, Rejection> {
        let now = self.clock.now();
        let actor = (ActorType::TenantAdmin, admin.subject.as_str());
        let target = ("enrollment_token", Some(id.to_string()));
        let mut details = BTreeMap::new();
        if let Some(r) = &reason {
            details.insert("reason".to_owned(), r.clone());
        }
        let audit = self.audit(
            &admin.tenant_id,
            actor,
            AuditAction::EnrollmentTokenRevoke,
            target.clone(),
            None,
            meta,
            details,
        );
        let payload: events::AgentEnrollmentTokenRevokedData = data(
            serde_json::json!({ "enrollment_token_id": id, "revoked_by": admin.subject, "reason": reason, "revoked_at": now }),
        )?;
        let event = self.event(&admin.tenant_id, &id.to_string(), payload)?;
        match self.store.revoke_enrollment_token(&admin.tenant_id, id, &audit, &event).await? {
            RevokeOutcome::Revoked(r) | RevokeOutcome::AlreadyRevoked(r) => Ok(r),
            RevokeOutcome::NotFound => {
                let rejection = Rejection::NotFound;
                let record = self.audit(
                    &admin.tenant_id,
                    actor,
                    AuditAction::EnrollmentTokenRevoke,
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

    /// Exchanges an enrollment token, CSR and nonce for an identity. Every
    /// check that needs no state runs before a use of the token is consumed.
    pub async fn exchange(
        &self,
        input: ExchangeInput,
        meta: &RequestMeta,
    ) -> Result<ExchangeResult, Rejection> {
        let now = self.clock.now();
        let token_id = secrets::parse_enrollment_token(input.enrollment_token.expose_secret());
        // The slot is taken before the work: parallel failures cannot run past the limit.
        let permit = match self.limiter.acquire(&exchange_keys(meta.source, token_id), now).await? {
            Ok(p) => p,
            Err(retry_after_seconds) => {
                self.metrics.inc("oneprotect_exchanges_total", "outcome", "rate_limited");
                return Err(Rejection::RateLimited { retry_after_seconds });
            }
        };
        let outcome = self.exchange_checked(input, token_id, meta).await;
        let failed = match &outcome {
            Ok(_) => {
                self.metrics.inc("oneprotect_exchanges_total", "outcome", "enrolled");
                false
            }
            Err(r) => {
                self.metrics.inc("oneprotect_exchanges_total", "outcome", r.code().as_str());
                // The platform's own failures are not the caller's.
                !matches!(
                    r,
                    Rejection::RuntimeSecretUnavailable
                        | Rejection::CertificateAuthorityUnavailable
                        | Rejection::StoreUnavailable
                        | Rejection::Internal
                )
            }
        };
        self.limiter.settle(permit, failed).await;
        outcome
    }

    /// The rules that need no state, in order; a refusal is audited (under
    /// no tenant: no token has been verified yet) and consumes nothing.
    async fn exchange_stateless(
        &self,
        input: &ExchangeInput,
        token_id: Option<Uuid>,
        meta: &RequestMeta,
    ) -> Result<VerifiedCsr, Rejection> {
        let judged = (|| {
            if !self.runtime_keys.is_available() {
                tracing::error!("exchange refused: ONEPROTECT_AGENT_RUNTIME_TOKEN_SECRET is not configured");
                return Err(Rejection::RuntimeSecretUnavailable);
            }
            if self.ca.is_none() {
                tracing::error!(
                    "exchange refused: no certificate authority is configured (ONEPROTECT_CA_CERT_FILE, ONEPROTECT_CA_KEY_FILE)"
                );
                return Err(Rejection::CertificateAuthorityUnavailable);
            }
            if !secrets::nonce_is_well_formed(input.nonce.expose_secret()) {
                return Err(Rejection::NonceInvalid);
            }
            let csr: VerifiedCsr = verify_csr_pem(&input.csr_pem).map_err(Rejection::CsrInvalid)?;
            if let Some(fp) = &input.hardware_fingerprint_hash {
                let fp = fp.expose_secret();
                if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                    return Err(Rejection::RequestInvalid(
                        "hardware_fingerprint_hash must be 64 lowercase hex characters".into(),
                    ));
                }
            }
            Ok(csr)
        })();
        if let Err(rejection) = &judged {
            let record = self.audit(
                UNATTRIBUTED_TENANT,
                (ActorType::Anonymous, "enrollment_token"),
                AuditAction::AgentExchange,
                ("enrollment_token", token_id.map(|t| t.to_string())),
                Some(rejection),
                meta,
                BTreeMap::new(),
            );
            self.audit_rejection(record, None).await;
        }
        judged
    }

    async fn exchange_checked(
        &self,
        input: ExchangeInput,
        token_id: Option<Uuid>,
        meta: &RequestMeta,
    ) -> Result<ExchangeResult, Rejection> {
        let csr = self.exchange_stateless(&input, token_id, meta).await?;

        let Some(token_id) = token_id else {
            return Err(self
                .enrollment_failed(UNATTRIBUTED_TENANT, None, TokenFailure::Malformed, meta)
                .await);
        };
        let stored = self.store.find_enrollment_token(token_id).await?;
        let token = match stored {
            Some(t)
                if secrets::enrollment_token_matches(
                    &self.hash_key,
                    input.enrollment_token.expose_secret(),
                    &t.token_hash,
                ) =>
            {
                t
            }
            Some(t) => {
                return Err(self
                    .enrollment_failed(&t.tenant_id, Some(token_id), TokenFailure::Unknown, meta)
                    .await);
            }
            None => {
                return Err(self
                    .enrollment_failed(UNATTRIBUTED_TENANT, Some(token_id), TokenFailure::Unknown, meta)
                    .await);
            }
        };
        let now = self.clock.now();
        if let Some(failure) = token.failure_at(now) {
            return Err(self.enrollment_failed(&token.tenant_id, Some(token_id), failure, meta).await);
        }

        let tenant = token.tenant_id.clone();
        let agent_id = Uuid::new_v4();
        let (certificate, issued) = self.certify(&csr, &tenant, agent_id, now)?;
        let identity = AgentIdentityRecord {
            agent_id,
            tenant_id: tenant.clone(),
            collector_id: token.collector_id.unwrap_or_else(Uuid::new_v4),
            asset_id: Uuid::new_v4(),
            site_id: token.site_id.clone(),
            status: AgentStatus::Enrolled,
            hostname: Some(input.hostname.clone()),
            agent_version: Some(input.agent_version.clone()),
            os_family: input.os_family.clone(),
            enrollment_token_id: token_id,
            certificate_id: certificate.certificate_id,
            previous_certificate_id: None,
            rotated_at: None,
            fingerprint_hash: input
                .hardware_fingerprint_hash
                .as_ref()
                .map(|fp| secrets::fingerprint_hash(&self.hash_key, &tenant, fp.expose_secret())),
            enrolled_at: now,
            last_seen_at: None,
            last_sequence: None,
            revoked_at: None,
        };
        let claims = claims_for(
            &tenant,
            agent_id,
            identity.collector_id,
            identity.asset_id,
            certificate.certificate_id,
            now,
            self.policy.runtime_token_ttl,
        );
        let runtime_token = self.runtime_keys.issue(&claims).ok_or(Rejection::RuntimeSecretUnavailable)?;

        let mut details = BTreeMap::new();
        details.insert("enrollment_token_id".to_owned(), token_id.to_string());
        details.insert("certificate_id".to_owned(), certificate.certificate_id.to_string());
        details.insert("public_key_sha256".to_owned(), certificate.public_key_sha256.clone());
        details.insert("certificate_serial".to_owned(), issued.serial_hex.clone());
        details.insert("certificate_sha256".to_owned(), issued.sha256.clone());
        details.insert("runtime_token_sha256".to_owned(), runtime_token.sha256.clone());
        details.insert("runtime_token_key_id".to_owned(), runtime_token.key_id.clone());
        details.insert("runtime_token_expires_at".to_owned(), runtime_token.expires_at.to_rfc3339());
        let audit = self.audit(
            &tenant,
            (ActorType::Anonymous, "enrollment_token"),
            AuditAction::AgentExchange,
            ("agent", Some(agent_id.to_string())),
            None,
            meta,
            details,
        );
        let payload: events::AgentEnrolledData = data(serde_json::json!({
            "agent_id": agent_id,
            "collector_id": identity.collector_id,
            "asset_id": identity.asset_id,
            "site_id": identity.site_id,
            "enrollment_token_id": token_id,
            "certificate_id": certificate.certificate_id,
            "public_key_sha256": certificate.public_key_sha256,
            "certificate_serial": issued.serial_hex,
            "certificate_sha256": issued.sha256,
            "hostname": identity.hostname,
            "agent_version": identity.agent_version,
            "enrolled_at": now,
        }))?;
        let event = self.event(&tenant, &agent_id.to_string(), payload)?;
        let commit = EnrollmentCommit {
            token_id,
            now,
            nonce_hash: secrets::nonce_hash(&self.hash_key, &tenant, input.nonce.expose_secret()),
            identity: identity.clone(),
            certificate: certificate.clone(),
            audit,
            event,
        };
        match self.store.commit_enrollment(&commit).await? {
            EnrollmentOutcome::Enrolled => {
                Ok(ExchangeResult { identity, certificate, issued, runtime_token })
            }
            EnrollmentOutcome::TokenRejected(failure) => {
                Err(self.enrollment_failed(&tenant, Some(token_id), failure, meta).await)
            }
            EnrollmentOutcome::NonceReplayed => {
                let rejection = Rejection::NonceReplayed;
                let record = self.audit(
                    &tenant,
                    (ActorType::Anonymous, "enrollment_token"),
                    AuditAction::AgentExchange,
                    ("enrollment_token", Some(token_id.to_string())),
                    Some(&rejection),
                    meta,
                    BTreeMap::new(),
                );
                let event = self.failed_event(&tenant, Some(token_id), "nonce_replayed")?;
                self.audit_rejection(record, Some(event)).await;
                Err(rejection)
            }
        }
    }

    fn failed_event(
        &self,
        tenant: &str,
        token_id: Option<Uuid>,
        reason: &str,
    ) -> Result<OutboxEvent, Rejection> {
        let payload: events::AgentEnrollmentFailedData = data(
            serde_json::json!({ "enrollment_token_id": token_id, "reason": reason, "failed_at": self.clock.now() }),
        )?;
        let subject = token_id.map(|t| t.to_string()).unwrap_or_else(|| "unknown".to_owned());
        self.event(tenant, &subject, payload)
    }

    /// Audits a refused token with its precise reason, emits
    /// `agent.enrollment.failed`, and returns the uniform public answer.
    async fn enrollment_failed(
        &self,
        tenant: &str,
        token_id: Option<Uuid>,
        failure: TokenFailure,
        meta: &RequestMeta,
    ) -> Rejection {
        let rejection = Rejection::EnrollmentTokenInvalid(failure);
        let record = self.audit(
            tenant,
            (ActorType::Anonymous, "enrollment_token"),
            AuditAction::AgentExchange,
            ("enrollment_token", token_id.map(|t| t.to_string())),
            Some(&rejection),
            meta,
            BTreeMap::new(),
        );
        let event = self.failed_event(tenant, token_id, failure.reason()).ok();
        self.audit_rejection(record, event).await;
        rejection
    }
}
