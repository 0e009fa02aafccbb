//! What a check can use: a contract-validating HTTP client, two tenant-admin
//! credentials, and — on the local target only — a clock, the store, the
//! runtime secret and the captured logs. Everything secret the run sees is
//! remembered so redaction checks can look for it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use oneprotect_contracts::contract::{self, ResponseSpec};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::Outcome;

/// Capabilities only an in-process target has.
#[derive(Clone, Default)]
pub struct LocalPowers {
    pub clock: Option<Arc<oneprotect_server::clock::ManualClock>>,
    pub store: Option<Arc<dyn oneprotect_server::store::Store>>,
    pub runtime_secret: Option<Vec<u8>>,
    pub admin_secret: Option<Vec<u8>>,
    pub admin_issuer: String,
    pub admin_audience: String,
    pub logs: Option<Arc<Mutex<Vec<u8>>>>,
    /// Base URL of a second platform configured without a runtime secret.
    pub secretless_base: Option<String>,
    /// The agent binary under test (agent target).
    pub agent_bin: Option<std::path::PathBuf>,
}

pub struct Ctx {
    pub base: String,
    pub http: reqwest::Client,
    pub admin_a: SecretString,
    pub admin_b: SecretString,
    pub run_id: String,
    pub local: LocalPowers,
    secrets: Mutex<BTreeSet<String>>,
}

/// One HTTP answer, already checked against the contract.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body.get("code").and_then(Value::as_str).unwrap_or("")
    }
}

impl Ctx {
    pub fn new(base: &str, http: reqwest::Client, admin_a: SecretString, admin_b: SecretString, local: LocalPowers) -> Self {
        let run_id = format!("conf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Self { base: base.trim_end_matches('/').to_owned(), http, admin_a, admin_b, run_id, local, secrets: Mutex::new(BTreeSet::new()) }
    }

    pub fn remember(&self, secret: &str) {
        if secret.len() >= 16 {
            self.secrets.lock().unwrap_or_else(|p| p.into_inner()).insert(secret.to_owned());
        }
    }

    pub fn secrets(&self) -> Vec<String> {
        let mut all: Vec<String> = self.secrets.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        all.push(self.admin_a.expose_secret().to_owned());
        all.push(self.admin_b.expose_secret().to_owned());
        all
    }

    /// Sends a request; the answer must be a documented status with a body
    /// matching its schema, or the call fails.
    pub async fn call(&self, operation: &str, method: &str, path: &str, bearer: Option<&str>, body: Option<&Value>) -> Result<Answer, String> {
        self.call_raw(operation, method, &format!("{}{path}", self.base), bearer, body.map(|b| (b.to_string(), "application/json"))).await
    }

    pub async fn call_raw(&self, operation: &str, method: &str, url: &str, bearer: Option<&str>, body: Option<(String, &str)>) -> Result<Answer, String> {
        let method: reqwest::Method = method.parse().map_err(|_| format!("bad method {method}"))?;
        let mut req = self.http.request(method, url);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some((text, content_type)) = body {
            req = req.header("content-type", content_type).body(text);
        }
        let resp = req.send().await.map_err(|e| format!("request failed: {}", e.without_url()))?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = resp.text().await.map_err(|e| format!("unreadable body: {e}"))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        check_against_contract(operation, status, &body)?;
        if status == 429 && retry_after.is_none() {
            return Err(format!("{operation}: 429 without Retry-After"));
        }
        Ok(Answer { status, body, retry_after })
    }

    pub fn admin(&self, tenant_b: bool) -> &str {
        if tenant_b { self.admin_b.expose_secret() } else { self.admin_a.expose_secret() }
    }

    /// Issues a short-lived token labelled with the run id (revoked at cleanup).
    pub async fn issue_token(&self, tenant_b: bool, max_uses: u32) -> Result<(String, String), String> {
        let body = json!({"ttl_seconds": 600, "max_uses": max_uses, "label": format!("{} (conformance, revoked at the end)", self.run_id)});
        let a = self.call("issueEnrollmentToken", "POST", "/api/v1/agent-enrollment/tokens", Some(self.admin(tenant_b)), Some(&body)).await?;
        if a.status != 201 {
            return Err(format!("issue answered {} {}", a.status, a.code()));
        }
        let secret = a.body["enrollment_token"].as_str().ok_or("no secret in the issue response")?.to_owned();
        let id = a.body["token"]["enrollment_token_id"].as_str().ok_or("no token id")?.to_owned();
        self.remember(&secret);
        Ok((secret, id))
    }

    pub fn exchange_body(&self, token: &str) -> Value {
        let csr = p256_csr();
        let nonce = crate::random_nonce();
        self.remember(&nonce);
        self.remember(pem_body(&csr));
        json!({"enrollment_token": token, "csr_pem": csr, "nonce": nonce, "hostname": format!("{}.conformance", self.run_id), "agent_version": "conformance"})
    }

    pub async fn exchange(&self, body: &Value) -> Result<Answer, String> {
        let a = self.call("exchangeEnrollmentToken", "POST", "/api/v1/agent-enrollment/exchange", None, Some(body)).await?;
        if a.status == 201
            && let Some(t) = a.body["runtime_token"]["token"].as_str()
        {
            self.remember(t);
        }
        Ok(a)
    }

    /// Issues a single-use token and enrolls one agent: (agent id, runtime token, exchange body).
    pub async fn enroll(&self, tenant_b: bool) -> Result<(String, String, Value), String> {
        let (secret, _) = self.issue_token(tenant_b, 1).await?;
        let a = self.exchange(&self.exchange_body(&secret)).await?;
        if a.status != 201 {
            return Err(format!("exchange answered {} {}", a.status, a.code()));
        }
        let agent = a.body["agent"]["agent_id"].as_str().ok_or("no agent id")?.to_owned();
        let token = a.body["runtime_token"]["token"].as_str().ok_or("no runtime token")?.to_owned();
        Ok((agent, token, a.body))
    }

    pub async fn heartbeat(&self, agent: &str, bearer: &str, sequence: u64) -> Result<Answer, String> {
        let body = json!({"sequence": sequence, "collected_at": chrono::Utc::now(), "hostname": format!("{}.conformance", self.run_id), "agent_version": "conformance"});
        self.call("postAgentHeartbeat", "POST", &format!("/api/v1/agents/{agent}/telemetry/heartbeat"), Some(bearer), Some(&body)).await
    }

    pub async fn list(&self, tenant_b: bool, operation: &str, path: &str) -> Result<Vec<Value>, String> {
        let a = self.call(operation, "GET", path, Some(self.admin(tenant_b)), None).await?;
        if a.status != 200 {
            return Err(format!("{operation} answered {}", a.status));
        }
        Ok(a.body["items"].as_array().cloned().unwrap_or_default())
    }

    /// Revokes every token and agent this run created, found by the run's
    /// label (token `label`, agent `hostname`) in both tenants. Best effort;
    /// returns what could not be revoked.
    pub async fn cleanup(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let reason = json!({"reason": format!("{} cleanup", self.run_id)});
        let host = format!("{}.conformance", self.run_id);
        for tenant_b in [false, true] {
            let admin = self.admin(tenant_b).to_owned();
            let tokens = self.list_all(&admin, "listEnrollmentTokens", "/api/v1/agent-enrollment/tokens").await;
            for t in tokens.unwrap_or_else(|e| {
                failures.push(e);
                Vec::new()
            }) {
                let labelled = t["label"].as_str().is_some_and(|l| l.contains(&self.run_id));
                if labelled && t["status"] == "active" {
                    let id = t["enrollment_token_id"].as_str().unwrap_or_default();
                    match self.call("revokeEnrollmentToken", "POST", &format!("/api/v1/agent-enrollment/tokens/{id}/revoke"), Some(&admin), Some(&reason)).await
                    {
                        Ok(a) if a.status == 200 => {}
                        other => failures.push(format!("token {id}: {other:?}")),
                    }
                }
            }
            let agents = self.list_all(&admin, "listAgents", "/api/v1/agents").await;
            for a in agents.unwrap_or_else(|e| {
                failures.push(e);
                Vec::new()
            }) {
                if a["hostname"] == host.as_str() && a["status"] != "revoked" {
                    let id = a["agent_id"].as_str().unwrap_or_default();
                    match self.call("revokeAgent", "POST", &format!("/api/v1/agents/{id}/revoke"), Some(&admin), Some(&reason)).await {
                        Ok(r) if r.status == 200 => {}
                        other => failures.push(format!("agent {id}: {other:?}")),
                    }
                }
            }
        }
        failures
    }

    /// Every page of a list operation.
    async fn list_all(&self, admin: &str, operation: &str, path: &str) -> Result<Vec<Value>, String> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let url = match &cursor {
                Some(c) => format!("{path}?limit=200&cursor={c}"),
                None => format!("{path}?limit=200"),
            };
            let a = self.call(operation, "GET", &url, Some(admin), None).await?;
            if a.status != 200 {
                return Err(format!("{operation} answered {} during cleanup", a.status));
            }
            items.extend(a.body["items"].as_array().cloned().unwrap_or_default());
            match a.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return Ok(items),
            }
        }
        Ok(items)
    }

    /// A check that needs a local power skips on other targets.
    pub fn needs<T: Clone>(&self, what: &str, power: &Option<T>) -> Result<T, Outcome> {
        power.clone().ok_or_else(|| Outcome::Skip(format!("needs {what} (local target only)")))
    }
}

/// Fails unless the status is documented for the operation and the body
/// matches the documented schema.
pub fn check_against_contract(operation: &str, status: u16, body: &Value) -> Result<(), String> {
    let op = contract::operation(operation).ok_or_else(|| format!("unknown operation {operation}"))?;
    match op.response(status) {
        Some(ResponseSpec::Json(schema)) => contract::validate_schema(schema, body).map_err(|v| {
            let first = v.first().map(|x| x.to_string()).unwrap_or_default();
            format!("{operation} {status}: body does not match {schema}: {first}")
        }),
        Some(_) => Ok(()),
        None => Err(format!("{operation} answered undocumented status {status}")),
    }
}

pub fn p256_csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
    let params = rcgen::CertificateParams::new(vec!["conformance.local".to_owned()]).expect("params");
    params.serialize_request(&key).expect("csr").pem().expect("pem")
}

/// The base64 body of a PEM block.
pub fn pem_body(pem: &str) -> &str {
    pem.lines().filter(|l| !l.starts_with("-----")).max_by_key(|l| l.len()).unwrap_or("")
}
