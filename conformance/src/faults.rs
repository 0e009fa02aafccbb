//! Deliberately faulty platforms, used only by the harness's own tests to
//! prove each check can fail. They wrap the real store, clock and router
//! from outside; nothing faulty is compiled into the server crate, so no
//! release build can contain them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use oneprotect_server::clock::Clock;
use oneprotect_server::model::*;
use oneprotect_server::runtime_token::{RuntimeClaims, RuntimeKeyring};
use oneprotect_server::store::{Store, StoreResult};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Puts each token's secret into its `label` in list answers.
    LeakSecretInList,
    /// Reads identities across tenants.
    SkipTenantPredicate,
    /// Judges token expiry with a clock stuck at the start of the run.
    AcceptExpiredToken,
    /// Stores a random value instead of the nonce hash.
    SkipNonceCheck,
    /// Re-signs tampered runtime tokens instead of refusing them.
    AcceptTamperedRuntimeToken,
    /// Logs the Authorization header.
    LogBearer,
}

pub fn sign_runtime(secret: &[u8], claims: &RuntimeClaims) -> String {
    RuntimeKeyring::new(Some(secret.to_vec()), vec![]).ok().and_then(|r| r.issue(claims)).map(|t| t.token.expose_secret().to_owned()).unwrap_or_default()
}

/// Runtime claims for the identity an exchange answer describes, issued at
/// `now` for one hour (to forge tokens only an insider with the secret could make).
pub fn claims_from_enrollment(enrolled: &serde_json::Value, now: DateTime<Utc>) -> Result<RuntimeClaims, String> {
    let id = |p: &str| Uuid::parse_str(enrolled.pointer(p).and_then(|v| v.as_str()).unwrap_or_default()).map_err(|e| format!("{p}: {e}"));
    let tenant = enrolled.pointer("/agent/tenant_id").and_then(|v| v.as_str()).unwrap_or_default();
    Ok(oneprotect_server::runtime_token::claims_for(
        tenant,
        id("/agent/agent_id")?,
        id("/agent/collector_id")?,
        id("/agent/asset_id")?,
        id("/agent/certificate_id")?,
        now,
        chrono::Duration::hours(1),
    ))
}

pub fn mint_admin(ctx: &Ctx, secret: &[u8], tenant: &str, role: &str, exp: DateTime<Utc>) -> String {
    let claims = oneprotect_server::admin_auth::AdminClaims {
        sub: format!("{}@conformance", ctx.run_id),
        tenant_id: tenant.into(),
        roles: vec![role.into()],
        exp: exp.timestamp(),
        iss: ctx.local.admin_issuer.clone(),
        aud: ctx.local.admin_audience.clone(),
        nbf: None,
    };
    let token = oneprotect_server::admin_auth::mint_hs256(secret, &claims).unwrap_or_default();
    ctx.remember(&token);
    token
}

/// A clock frozen at its creation time.
pub struct FrozenClock(pub DateTime<Utc>);

impl Clock for FrozenClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// A store that forgets the tenant predicate or the nonce.
pub struct FaultyStore {
    pub inner: Arc<dyn Store>,
    pub fault: Fault,
    pub tenants: Vec<String>,
}

#[async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ready(&self) -> StoreResult<()> {
        self.inner.ready().await
    }
    async fn insert_enrollment_token(&self, t: &EnrollmentTokenRecord, a: &AuditRecord, e: &OutboxEvent) -> StoreResult<()> {
        self.inner.insert_enrollment_token(t, a, e).await
    }
    async fn list_enrollment_tokens(&self, tenant: &str, after: Option<i64>, limit: u32) -> StoreResult<Page<EnrollmentTokenRecord>> {
        self.inner.list_enrollment_tokens(tenant, after, limit).await
    }
    async fn revoke_enrollment_token(&self, tenant: &str, id: Uuid, a: &AuditRecord, e: &OutboxEvent) -> StoreResult<RevokeOutcome<EnrollmentTokenRecord>> {
        self.inner.revoke_enrollment_token(tenant, id, a, e).await
    }
    async fn find_enrollment_token(&self, id: Uuid) -> StoreResult<Option<EnrollmentTokenRecord>> {
        self.inner.find_enrollment_token(id).await
    }
    async fn commit_enrollment(&self, c: &EnrollmentCommit) -> StoreResult<EnrollmentOutcome> {
        if self.fault == Fault::SkipNonceCheck {
            let mut c = c.clone();
            c.nonce_hash = Uuid::new_v4().to_string();
            return self.inner.commit_enrollment(&c).await;
        }
        self.inner.commit_enrollment(c).await
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
    async fn list_identities(&self, tenant: &str, after: Option<i64>, limit: u32) -> StoreResult<Page<AgentIdentityRecord>> {
        if self.fault == Fault::SkipTenantPredicate {
            let mut items = Vec::new();
            for t in &self.tenants {
                items.extend(self.inner.list_identities(t, None, 200).await?.items);
            }
            return Ok(Page { items, next_after: None });
        }
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
        self.inner.revoke_identity(tenant, agent_id, by, reason, a, e).await
    }
    async fn mark_identity_stale(&self, tenant: &str, agent_id: Uuid, a: &AuditRecord) -> StoreResult<()> {
        self.inner.mark_identity_stale(tenant, agent_id, a).await
    }
    async fn commit_heartbeat(&self, c: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        self.inner.commit_heartbeat(c).await
    }
    async fn commit_heartbeat_unbatched(&self, c: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        self.inner.commit_heartbeat_unbatched(c).await
    }
    async fn get_asset(&self, tenant: &str, asset_id: Uuid) -> StoreResult<Option<AssetRecord>> {
        self.inner.get_asset(tenant, asset_id).await
    }
    async fn commit_rotation(&self, c: &RotationCommit) -> StoreResult<RotationOutcome> {
        self.inner.commit_rotation(c).await
    }
    async fn get_certificate(&self, tenant: &str, id: Uuid) -> StoreResult<Option<CertificateRecord>> {
        self.inner.get_certificate(tenant, id).await
    }
    async fn append_audit(&self, a: &AuditRecord, e: Option<&OutboxEvent>) -> StoreResult<()> {
        self.inner.append_audit(a, e).await
    }
    async fn list_audit(&self, tenant: &str, after: Option<i64>, limit: u32) -> StoreResult<Page<AuditRecord>> {
        self.inner.list_audit(tenant, after, limit).await
    }
    async fn list_events(&self, tenant: &str, after: Option<i64>, limit: u32) -> StoreResult<Page<OutboxEvent>> {
        self.inner.list_events(tenant, after, limit).await
    }
    async fn dump_all_rows(&self) -> StoreResult<Vec<String>> {
        self.inner.dump_all_rows().await
    }
}

/// State the faulty HTTP layer keeps between requests.
#[derive(Clone, Default)]
pub struct HttpFaultState {
    pub fault: Option<Fault>,
    pub runtime_secret: Vec<u8>,
    /// token id → secret, learnt from issue answers.
    pub issued: Arc<Mutex<BTreeMap<String, String>>>,
}

async fn body_json(body: Body) -> (Vec<u8>, Option<serde_json::Value>) {
    let bytes = axum::body::to_bytes(body, 1 << 20).await.map(|b| b.to_vec()).unwrap_or_default();
    let json = serde_json::from_slice(&bytes).ok();
    (bytes, json)
}

/// The faulty HTTP layer: wraps the real router.
pub async fn http_fault(state: HttpFaultState, mut req: Request, next: Next) -> Response {
    let is_list = req.method() == axum::http::Method::GET && req.uri().path() == "/api/v1/agent-enrollment/tokens";
    let is_issue = req.method() == axum::http::Method::POST && req.uri().path() == "/api/v1/agent-enrollment/tokens";
    match state.fault {
        Some(Fault::LogBearer) => {
            let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            tracing::info!(authorization = %auth, "faulty variant: request received");
        }
        Some(Fault::AcceptTamperedRuntimeToken) => {
            let bearer = req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::to_owned);
            if let Some(token) = bearer.filter(|t| t.starts_with("oprt.v1.")) {
                let ring = RuntimeKeyring::new(Some(state.runtime_secret.clone()), vec![]).ok();
                let verifies = ring.as_ref().is_some_and(|r| r.verify(&token, Utc::now()).is_ok());
                if !verifies {
                    let parts: Vec<&str> = token.split('.').collect();
                    let claims: Option<RuntimeClaims> =
                        parts.get(3).and_then(|p| oneprotect_server::secrets::unb64(p)).and_then(|b| serde_json::from_slice(&b).ok());
                    if let Some(claims) = claims {
                        let resigned = sign_runtime(&state.runtime_secret, &claims);
                        if let Ok(v) = format!("Bearer {resigned}").parse() {
                            req.headers_mut().insert("authorization", v);
                        }
                    }
                }
            }
        }
        _ => {}
    }
    let response = next.run(req).await;
    if state.fault != Some(Fault::LeakSecretInList) || !(is_list || is_issue) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let (bytes, json) = body_json(body).await;
    let Some(mut json) = json else { return Response::from_parts(parts, Body::from(bytes)) };
    if is_issue {
        if let (Some(id), Some(secret)) = (json["token"]["enrollment_token_id"].as_str(), json["enrollment_token"].as_str()) {
            state.issued.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), secret.to_owned());
        }
    } else if let Some(items) = json["items"].as_array_mut() {
        let issued = state.issued.lock().unwrap_or_else(|p| p.into_inner());
        for item in items {
            if let Some(secret) = item["enrollment_token_id"].as_str().and_then(|id| issued.get(id)) {
                item["label"] = serde_json::Value::String(secret.clone());
            }
        }
    }
    let bytes = serde_json::to_vec(&json).unwrap_or(bytes);
    let mut parts = parts;
    parts.headers.remove("content-length");
    Response::from_parts(parts, Body::from(bytes))
}
