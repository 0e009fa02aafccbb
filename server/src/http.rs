//! The generated `Api` trait, implemented by translating to and from the
//! service layer. No rule lives here.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use oneprotect_contracts::contract::OperationSpec;
use oneprotect_contracts::server::{self as stubs, *};
use oneprotect_contracts::types;
use secrecy::{ExposeSecret, SecretString};

use crate::admin_auth::AdminPrincipal;
use crate::error::Rejection;
use crate::model::*;
use crate::runtime_token::RuntimeClaims;
use crate::service::{
    ExchangeInput, HeartbeatInput, IssueInput, PageRequest, Platform, RequestMeta, encode_cursor,
};

#[derive(Debug, Clone)]
pub struct HttpApi {
    platform: Arc<Platform>,
}

impl HttpApi {
    pub fn new(platform: Arc<Platform>) -> Self {
        Self { platform }
    }
}

impl HttpApi {
    fn meta(&self, ctx: &RequestContext) -> RequestMeta {
        let source = self.platform.source_of(ctx.remote_addr, ctx.forwarded_for.as_deref());
        RequestMeta {
            request_id: ctx.request_id.clone(),
            request_id_from_caller: ctx.request_id_from_caller,
            remote_addr: ctx.remote_addr,
            source,
        }
    }
}

/// The `Problem` for a rejection; the stubs map it to the documented variant.
fn problem(r: &Rejection, ctx: &RequestContext) -> types::Problem {
    stubs::problem(
        StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        r.code(),
        r.title(),
        r.detail(),
        &ctx.request_id,
    )
}

fn token_status(
    r: &EnrollmentTokenRecord,
    now: chrono::DateTime<chrono::Utc>,
) -> types::EnrollmentTokenStatus {
    match r.status_at(now) {
        TokenStatus::Active => types::EnrollmentTokenStatus::Active,
        TokenStatus::Revoked => types::EnrollmentTokenStatus::Revoked,
        TokenStatus::Expired => types::EnrollmentTokenStatus::Expired,
        TokenStatus::Exhausted => types::EnrollmentTokenStatus::Exhausted,
    }
}

fn token_metadata(
    r: &EnrollmentTokenRecord,
    now: chrono::DateTime<chrono::Utc>,
) -> types::EnrollmentTokenMetadata {
    types::EnrollmentTokenMetadata {
        collector_id: r.collector_id,
        created_at: r.created_at,
        created_by: r.created_by.clone(),
        enrollment_token_id: r.id,
        expires_at: r.expires_at,
        label: r.label.clone(),
        last_used_at: r.last_used_at,
        max_uses: r.max_uses,
        revoked_at: r.revoked_at,
        site_id: r.site_id.clone(),
        status: token_status(r, now),
        tenant_id: r.tenant_id.clone(),
        use_count: r.use_count,
    }
}

fn agent_status(s: AgentStatus) -> types::AgentStatus {
    match s {
        AgentStatus::Enrolled => types::AgentStatus::Enrolled,
        AgentStatus::Active => types::AgentStatus::Active,
        AgentStatus::Stale => types::AgentStatus::Stale,
        AgentStatus::Revoked => types::AgentStatus::Revoked,
    }
}

fn agent_identity(i: &AgentIdentityRecord) -> types::AgentIdentity {
    types::AgentIdentity {
        agent_id: i.agent_id,
        agent_version: i.agent_version.clone(),
        asset_id: i.asset_id,
        certificate_id: i.certificate_id,
        collector_id: i.collector_id,
        enrolled_at: i.enrolled_at,
        enrollment_token_id: i.enrollment_token_id,
        hostname: i.hostname.clone(),
        last_seen_at: i.last_seen_at,
        os_family: i.os_family.clone(),
        revoked_at: i.revoked_at,
        site_id: i.site_id.clone(),
        status: agent_status(i.status),
        tenant_id: i.tenant_id.clone(),
    }
}

fn certificate(c: &CertificateRecord) -> Result<types::DeviceCertificate, Rejection> {
    use types::DeviceCertificatePublicKeyAlgorithm as Alg;
    let algorithm = match c.public_key_algorithm.as_str() {
        "ecdsa-p256" => Alg::EcdsaP256,
        "ecdsa-p384" => Alg::EcdsaP384,
        "ed25519" => Alg::Ed25519,
        "rsa" => Alg::Rsa,
        _ => return Err(Rejection::Internal),
    };
    let status = match c.status {
        CertificateStatus::Active => types::DeviceCertificateStatus::Active,
        CertificateStatus::Superseded => types::DeviceCertificateStatus::Superseded,
        CertificateStatus::Revoked => types::DeviceCertificateStatus::Revoked,
    };
    Ok(types::DeviceCertificate {
        agent_id: c.agent_id,
        certificate_id: c.certificate_id,
        not_after: c.not_after,
        not_before: c.not_before,
        public_key_algorithm: algorithm,
        public_key_sha256: c.public_key_sha256.clone(),
        serial_number: Some(c.serial_number.as_str().try_into().map_err(|_| Rejection::Internal)?),
        certificate_sha256: c
            .certificate_sha256
            .as_deref()
            .map(|f| f.try_into().map_err(|_| Rejection::Internal))
            .transpose()?,
        status,
        subject: c.subject.clone(),
    })
}

fn runtime_token(t: &crate::runtime_token::IssuedRuntimeToken) -> types::RuntimeToken {
    types::RuntimeToken {
        expires_at: t.expires_at,
        key_id: t.key_id.clone(),
        scope: types::RuntimeTokenScope::AgentHeartbeat,
        token: t.token.expose_secret().to_owned(),
        token_type: types::RuntimeTokenTokenType::Bearer,
    }
}

fn audit_event(a: &AuditRecord) -> Result<types::AuditEvent, Rejection> {
    use types::{AuditEventActorType as Actor, AuditEventOutcome as Outcome};
    let actor_type = match a.actor_type {
        ActorType::TenantAdmin => Actor::TenantAdmin,
        ActorType::Agent => Actor::Agent,
        ActorType::Anonymous => Actor::Anonymous,
        ActorType::System => Actor::System,
    };
    Ok(types::AuditEvent {
        action: a.action.as_str().to_owned(),
        actor_id: a.actor_id.clone(),
        actor_type,
        audit_id: a.audit_id,
        details: a.details.clone(),
        occurred_at: a.occurred_at,
        outcome: match a.outcome {
            AuditOutcome::Success => Outcome::Success,
            AuditOutcome::Failure => Outcome::Failure,
        },
        reason_code: a.reason_code.clone(),
        request_id: a.request_id.clone(),
        target_id: a.target_id.clone(),
        target_type: a.target_type.clone(),
        tenant_id: a.tenant_id.clone(),
    })
}

fn cursor(next: Option<i64>) -> Option<String> {
    next.map(encode_cursor)
}

/// Runs a fallible handler body and maps a rejection to the documented
/// variant of the operation's response enum.
macro_rules! respond {
    ($resp:ty, $ctx:expr, $body:expr) => {{
        let result: Result<$resp, Rejection> = async { $body }.await;
        match result {
            Ok(r) => r,
            Err(rejection) => {
                if rejection == Rejection::Internal {
                    tracing::error!(request_id = %$ctx.request_id, "request failed with an internal error");
                }
                match rejection {
                    Rejection::RateLimited { retry_after_seconds } => <$resp>::from_problem_with_retry(problem(&rejection, &$ctx), retry_after_seconds),
                    _ => <$resp>::from_problem(problem(&rejection, &$ctx)),
                }
            }
        }
    }};
}

/// Responses that can carry a `Retry-After`.
trait RetryAfter: Sized {
    fn from_problem_with_retry(p: types::Problem, retry_after: u32) -> Self;
}

macro_rules! retry_after_default {
    ($($t:ty),*) => {$(
        impl RetryAfter for $t {
            fn from_problem_with_retry(p: types::Problem, _retry_after: u32) -> Self {
                Self::from_problem(p)
            }
        }
    )*};
}

retry_after_default!(
    IssueEnrollmentTokenResponse,
    ListEnrollmentTokensResponse,
    RevokeEnrollmentTokenResponse,
    ListAgentsResponse,
    GetAgentResponse,
    RevokeAgentResponse,
    ListAuditEventsResponse,
    ListEventsResponse
);

impl RetryAfter for ExchangeEnrollmentTokenResponse {
    fn from_problem_with_retry(p: types::Problem, retry_after: u32) -> Self {
        Self::TooManyRequests { body: p, retry_after }
    }
}

impl RetryAfter for PostAgentHeartbeatResponse {
    fn from_problem_with_retry(p: types::Problem, retry_after: u32) -> Self {
        Self::TooManyRequests { body: p, retry_after }
    }
}

impl RetryAfter for RotateAgentCertificateResponse {
    fn from_problem_with_retry(p: types::Problem, retry_after: u32) -> Self {
        Self::TooManyRequests { body: p, retry_after }
    }
}

impl Api for HttpApi {
    type TenantAdminBearer = AdminPrincipal;
    type AgentRuntimeBearer = RuntimeClaims;

    async fn authenticate_tenant_admin_bearer(
        &self,
        ctx: &RequestContext,
        op: &'static OperationSpec,
        _path: &HashMap<String, String>,
        token: BearerToken,
    ) -> Result<AdminPrincipal, types::Problem> {
        self.platform
            .authenticate_admin(token.expose_secret(), op.id, &self.meta(ctx))
            .await
            .map_err(|r| problem(&r, ctx))
    }

    async fn authenticate_agent_runtime_bearer(
        &self,
        ctx: &RequestContext,
        op: &'static OperationSpec,
        path: &HashMap<String, String>,
        token: BearerToken,
    ) -> Result<RuntimeClaims, types::Problem> {
        let agent_id = path.get("agent_id").map(String::as_str).unwrap_or_default();
        self.platform
            .authenticate_runtime(token.expose_secret(), agent_id, op.id, &self.meta(ctx))
            .await
            .map_err(|r| problem(&r, ctx))
    }

    async fn authenticate_agent_runtime_bearer_or_client_certificate(
        &self,
        ctx: &RequestContext,
        op: &'static OperationSpec,
        path: &HashMap<String, String>,
        token: Option<BearerToken>,
        certificate: Option<ClientCertificate>,
    ) -> Result<RuntimeClaims, types::Problem> {
        let agent_id = path.get("agent_id").map(String::as_str).unwrap_or_default();
        self.platform
            .authenticate_agent(
                token.as_ref().map(|t| t.expose_secret()),
                certificate.as_ref().map(|c| &*c.0),
                agent_id,
                op.id,
                &self.meta(ctx),
            )
            .await
            .map_err(|r| problem(&r, ctx))
    }

    async fn exchange_enrollment_token(
        &self,
        ctx: RequestContext,
        body: types::EnrollmentExchangeRequest,
    ) -> ExchangeEnrollmentTokenResponse {
        respond!(ExchangeEnrollmentTokenResponse, ctx, {
            let input = ExchangeInput {
                enrollment_token: SecretString::from(body.enrollment_token.to_string()),
                csr_pem: body.csr_pem.to_string(),
                nonce: SecretString::from(body.nonce.to_string()),
                hostname: body.hostname.to_string(),
                agent_version: body.agent_version.to_string(),
                os_family: body.os_family.map(|o| o.to_string()),
                hardware_fingerprint_hash: body
                    .hardware_fingerprint_hash
                    .map(|f| SecretString::from(f.to_string())),
            };
            let r = self.platform.exchange(input, &self.meta(&ctx)).await?;
            Ok(ExchangeEnrollmentTokenResponse::Created(types::EnrollmentExchangeResponse {
                agent: agent_identity(&r.identity),
                certificate: certificate(&r.certificate)?,
                certificate_pem: r.issued.pem.as_str().try_into().map_err(|_| Rejection::Internal)?,
                ca_chain_pem: self.platform.ca_chain_pem()?.try_into().map_err(|_| Rejection::Internal)?,
                runtime_token: runtime_token(&r.runtime_token),
            }))
        })
    }

    async fn list_enrollment_tokens(
        &self,
        ctx: RequestContext,
        admin: AdminPrincipal,
        query: ListEnrollmentTokensQuery,
    ) -> ListEnrollmentTokensResponse {
        respond!(ListEnrollmentTokensResponse, ctx, {
            let page = self
                .platform
                .list_enrollment_tokens(
                    &admin,
                    PageRequest::parse(query.cursor.as_ref().map(|c| c.as_str()), query.limit)?,
                )
                .await?;
            let now = self.platform.now();
            Ok(ListEnrollmentTokensResponse::Ok(types::EnrollmentTokenList {
                items: page.items.iter().map(|t| token_metadata(t, now)).collect(),
                next_cursor: cursor(page.next_after),
            }))
        })
    }

    async fn issue_enrollment_token(
        &self,
        ctx: RequestContext,
        admin: AdminPrincipal,
        body: types::EnrollmentTokenIssueRequest,
    ) -> IssueEnrollmentTokenResponse {
        respond!(IssueEnrollmentTokenResponse, ctx, {
            let m = self.meta(&ctx);
            let input = IssueInput {
                ttl_seconds: body.ttl_seconds,
                max_uses: body.max_uses.get(),
                label: body.label.map(|l| l.to_string()),
                site_id: body.site_id.map(|s| s.to_string()),
                collector_id: body.collector_id,
            };
            let issued = self.platform.issue_enrollment_token(&admin, input, &m).await?;
            Ok(IssueEnrollmentTokenResponse::Created(types::EnrollmentTokenIssued {
                enrollment_token: issued.secret.expose_secret().to_owned(),
                token: token_metadata(&issued.record, self.platform.now()),
            }))
        })
    }

    async fn revoke_enrollment_token(
        &self,
        ctx: RequestContext,
        admin: AdminPrincipal,
        enrollment_token_id: uuid::Uuid,
        body: types::RevokeRequest,
    ) -> RevokeEnrollmentTokenResponse {
        respond!(RevokeEnrollmentTokenResponse, ctx, {
            let m = self.meta(&ctx);
            let record = self
                .platform
                .revoke_enrollment_token(&admin, enrollment_token_id, body.reason.map(|r| r.to_string()), &m)
                .await?;
            Ok(RevokeEnrollmentTokenResponse::Ok(token_metadata(&record, self.platform.now())))
        })
    }

    async fn list_agents(
        &self,
        ctx: RequestContext,
        admin: AdminPrincipal,
        query: ListAgentsQuery,
    ) -> ListAgentsResponse {
        respond!(ListAgentsResponse, ctx, {
            let page = self
                .platform
                .list_agents(
                    &admin,
                    PageRequest::parse(query.cursor.as_ref().map(|c| c.as_str()), query.limit)?,
                )
                .await?;
            Ok(ListAgentsResponse::Ok(types::AgentList {
                items: page.items.iter().map(agent_identity).collect(),
                next_cursor: cursor(page.next_after),
            }))
        })
    }

    async fn get_agent(
        &self,
        ctx: RequestContext,
        admin: AdminPrincipal,
        agent_id: uuid::Uuid,
    ) -> GetAgentResponse {
        respond!(
            GetAgentResponse,
            ctx,
            Ok(GetAgentResponse::Ok(agent_identity(&self.platform.get_agent(&admin, agent_id).await?)))
        )
    }

    async fn rotate_agent_certificate(
        &self,
        ctx: RequestContext,
        auth: RuntimeClaims,
        agent_id: uuid::Uuid,
        body: types::CertificateRotateRequest,
    ) -> RotateAgentCertificateResponse {
        respond!(RotateAgentCertificateResponse, ctx, {
            let nonce = SecretString::from(body.nonce.to_string());
            debug_assert_eq!(auth.agent_id, agent_id, "the authenticator bound the token to the path");
            let r = self.platform.rotate_certificate(auth, &body.csr_pem, &nonce, &self.meta(&ctx)).await?;
            Ok(RotateAgentCertificateResponse::Ok(types::CertificateRotateResponse {
                certificate: certificate(&r.certificate)?,
                certificate_pem: r.issued.pem.as_str().try_into().map_err(|_| Rejection::Internal)?,
                ca_chain_pem: self.platform.ca_chain_pem()?.try_into().map_err(|_| Rejection::Internal)?,
                runtime_token: runtime_token(&r.runtime_token),
            }))
        })
    }

    async fn revoke_agent(
        &self,
        ctx: RequestContext,
        admin: AdminPrincipal,
        agent_id: uuid::Uuid,
        body: types::RevokeRequest,
    ) -> RevokeAgentResponse {
        respond!(RevokeAgentResponse, ctx, {
            let m = self.meta(&ctx);
            let identity =
                self.platform.revoke_agent(&admin, agent_id, body.reason.map(|r| r.to_string()), &m).await?;
            Ok(RevokeAgentResponse::Ok(agent_identity(&identity)))
        })
    }

    async fn post_agent_heartbeat(
        &self,
        ctx: RequestContext,
        auth: RuntimeClaims,
        agent_id: uuid::Uuid,
        body: types::AgentHeartbeatTelemetryRequest,
    ) -> PostAgentHeartbeatResponse {
        respond!(PostAgentHeartbeatResponse, ctx, {
            let input = HeartbeatInput {
                sequence: body.sequence,
                collected_at: body.collected_at,
                hostname: body.hostname.to_string(),
                agent_version: body.agent_version.to_string(),
                os_family: body.os_family.map(|o| o.to_string()),
                os_version: body.os_version.map(|o| o.to_string()),
                uptime_seconds: body.uptime_seconds,
                cpu_count: body.cpu_count,
                cpu_usage_percent: body.cpu_usage_percent,
                memory_total_bytes: body.memory_total_bytes,
                memory_used_bytes: body.memory_used_bytes,
                process_count: body.process_count,
            };
            debug_assert_eq!(auth.agent_id, agent_id, "the authenticator bound the token to the path");
            let r = self.platform.heartbeat(auth, input, &self.meta(&ctx)).await?;
            Ok(PostAgentHeartbeatResponse::Ok(types::HeartbeatAccepted {
                accepted_at: r.accepted_at,
                agent_id: r.agent_id,
                duplicate: r.duplicate,
                status: agent_status(r.status),
            }))
        })
    }

    async fn list_audit_events(
        &self,
        ctx: RequestContext,
        admin: AdminPrincipal,
        query: ListAuditEventsQuery,
    ) -> ListAuditEventsResponse {
        respond!(ListAuditEventsResponse, ctx, {
            let page = self
                .platform
                .list_audit(
                    &admin,
                    PageRequest::parse(query.cursor.as_ref().map(|c| c.as_str()), query.limit)?,
                )
                .await?;
            Ok(ListAuditEventsResponse::Ok(types::AuditEventList {
                items: page.items.iter().map(audit_event).collect::<Result<_, _>>()?,
                next_cursor: cursor(page.next_after),
            }))
        })
    }

    async fn list_events(
        &self,
        ctx: RequestContext,
        admin: AdminPrincipal,
        query: ListEventsQuery,
    ) -> ListEventsResponse {
        respond!(ListEventsResponse, ctx, {
            let page = self
                .platform
                .list_events(
                    &admin,
                    PageRequest::parse(query.cursor.as_ref().map(|c| c.as_str()), query.limit)?,
                )
                .await?;
            let items = page
                .items
                .into_iter()
                .map(|e| {
                    serde_json::from_str::<types::CloudEvent>(&e.payload).map_err(|_| Rejection::Internal)
                })
                .collect::<Result<_, _>>()?;
            Ok(ListEventsResponse::Ok(types::DomainEventList { items, next_cursor: cursor(page.next_after) }))
        })
    }

    async fn get_health(&self, _ctx: RequestContext) -> GetHealthResponse {
        GetHealthResponse::Ok(types::HealthStatus {
            checks: Default::default(),
            status: types::HealthStatusStatus::Ok,
        })
    }

    async fn get_readiness(&self, ctx: RequestContext) -> GetReadinessResponse {
        match self.platform.ready().await {
            Ok(()) => {
                let checks =
                    [("store".to_owned(), "ok".to_owned()), ("migrations".to_owned(), "ok".to_owned())]
                        .into_iter()
                        .collect();
                GetReadinessResponse::Ok(types::HealthStatus {
                    checks,
                    status: types::HealthStatusStatus::Ok,
                })
            }
            Err(r) => GetReadinessResponse::from_problem(problem(&r, &ctx)),
        }
    }

    async fn get_open_api_document(&self, ctx: RequestContext) -> GetOpenApiDocumentResponse {
        // Parsed once: the document is embedded and never changes.
        static DOCUMENT: std::sync::LazyLock<Option<types::OpenApiDocument>> =
            std::sync::LazyLock::new(|| {
                serde_json::from_str(oneprotect_contracts::contract::OPENAPI_JSON).ok()
            });
        match DOCUMENT.as_ref() {
            Some(doc) => GetOpenApiDocumentResponse::Ok(doc.clone()),
            None => GetOpenApiDocumentResponse::from_problem(problem(&Rejection::Internal, &ctx)),
        }
    }

    async fn get_async_api_document(&self, ctx: RequestContext) -> GetAsyncApiDocumentResponse {
        static DOCUMENT: std::sync::LazyLock<Option<types::AsyncApiDocument>> =
            std::sync::LazyLock::new(|| {
                serde_json::from_str(oneprotect_contracts::contract::ASYNCAPI_JSON).ok()
            });
        match DOCUMENT.as_ref() {
            Some(doc) => GetAsyncApiDocumentResponse::Ok(doc.clone()),
            None => GetAsyncApiDocumentResponse::from_problem(problem(&Rejection::Internal, &ctx)),
        }
    }

    async fn get_ca_certificates(&self, ctx: RequestContext) -> GetCaCertificatesResponse {
        match self.platform.ca_chain_pem() {
            Ok(chain) => GetCaCertificatesResponse::Ok(chain),
            Err(r) => GetCaCertificatesResponse::from_problem(problem(&r, &ctx)),
        }
    }

    async fn get_certificate_revocation_list(
        &self,
        ctx: RequestContext,
    ) -> GetCertificateRevocationListResponse {
        match self.platform.certificate_revocation_list().await {
            Ok(crl) => GetCertificateRevocationListResponse::Ok(crl),
            Err(r) => GetCertificateRevocationListResponse::from_problem(problem(&r, &ctx)),
        }
    }

    async fn get_metrics(&self, _ctx: RequestContext) -> GetMetricsResponse {
        GetMetricsResponse::Ok(self.platform.metrics_text())
    }
}
