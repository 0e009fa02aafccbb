//! The generated server stubs and client, exercised together: a trivial
//! in-memory implementation of the `Api` trait is served on loopback and
//! driven through the progenitor client and raw HTTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{TimeZone, Utc};
use oneprotect_contracts::client::{Client, ClientOptions};
use oneprotect_contracts::contract::{OperationSpec, ProblemCode};
use oneprotect_contracts::server::{self, *};
use oneprotect_contracts::types;
use reqwest::StatusCode;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "fixture-admin-token-not-a-secret";
const RUNTIME_TOKEN: &str = "fixture-runtime-token-not-a-secret";
const TENANT: &str = "tenant-fixture";

/// Echoes inputs back in typed responses and counts calls, so a test can
/// prove the stub rejected a request before the implementation saw it.
#[derive(Default)]
struct EchoApi {
    /// Operation methods called: none may run for a request the stub refused.
    calls: AtomicUsize,
    /// Authenticator calls: the first thing a stub of a secured operation does.
    authentications: AtomicUsize,
}

fn at(seconds: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + seconds, 0).single().expect("valid fixture time")
}

fn metadata(
    id: uuid::Uuid,
    max_uses: u32,
    label: Option<String>,
    status: types::EnrollmentTokenStatus,
) -> types::EnrollmentTokenMetadata {
    types::EnrollmentTokenMetadata {
        collector_id: None,
        created_at: at(0),
        created_by: "admin@fixture".into(),
        enrollment_token_id: id,
        expires_at: at(3600),
        label,
        last_used_at: None,
        max_uses,
        revoked_at: None,
        site_id: None,
        status,
        tenant_id: TENANT.into(),
        use_count: 0,
    }
}

fn identity(agent_id: uuid::Uuid, status: types::AgentStatus) -> types::AgentIdentity {
    types::AgentIdentity {
        agent_id,
        agent_version: Some("0.1.0".into()),
        asset_id: uuid::Uuid::from_u128(2),
        certificate_id: uuid::Uuid::from_u128(3),
        collector_id: uuid::Uuid::from_u128(4),
        enrolled_at: at(10),
        enrollment_token_id: uuid::Uuid::from_u128(5),
        hostname: Some("host.fixture".into()),
        last_seen_at: None,
        os_family: None,
        revoked_at: None,
        site_id: None,
        status,
        tenant_id: TENANT.into(),
    }
}

/// Not a certificate: the stubs carry text, they do not parse it.
const FIXTURE_PEM: &str = "-----BEGIN CERTIFICATE-----\nfixture\n-----END CERTIFICATE-----\n";

fn certificate(agent_id: uuid::Uuid) -> types::DeviceCertificate {
    types::DeviceCertificate {
        agent_id,
        certificate_id: uuid::Uuid::from_u128(3),
        not_after: at(86_400),
        not_before: at(0),
        public_key_algorithm: types::DeviceCertificatePublicKeyAlgorithm::EcdsaP256,
        public_key_sha256: "ab".repeat(32),
        serial_number: None,
        certificate_sha256: None,
        status: types::DeviceCertificateStatus::Active,
        subject: "CN=host.fixture".into(),
    }
}

fn runtime_token() -> types::RuntimeToken {
    types::RuntimeToken {
        expires_at: at(3600),
        key_id: "k1".into(),
        scope: types::RuntimeTokenScope::AgentHeartbeat,
        token: RUNTIME_TOKEN.into(),
        token_type: types::RuntimeTokenTokenType::Bearer,
    }
}

fn unauthorized(ctx: &RequestContext) -> types::Problem {
    server::problem(
        StatusCode::UNAUTHORIZED,
        ProblemCode::Unauthenticated,
        "Authentication required",
        None,
        &ctx.request_id,
    )
}

/// A verified admin: only the authenticator makes one.
#[derive(Debug)]
struct Admin;

/// A verified agent.
#[derive(Debug)]
struct Agent;

impl Api for EchoApi {
    type TenantAdminBearer = Admin;
    type AgentRuntimeBearer = Agent;

    async fn authenticate_tenant_admin_bearer(
        &self,
        ctx: &RequestContext,
        _op: &'static OperationSpec,
        _path: &HashMap<String, String>,
        token: BearerToken,
    ) -> Result<Admin, types::Problem> {
        self.authentications.fetch_add(1, Ordering::SeqCst);
        if token.expose_secret() == ADMIN_TOKEN { Ok(Admin) } else { Err(unauthorized(ctx)) }
    }

    async fn authenticate_agent_runtime_bearer(
        &self,
        ctx: &RequestContext,
        _op: &'static OperationSpec,
        _path: &HashMap<String, String>,
        token: BearerToken,
    ) -> Result<Agent, types::Problem> {
        self.authentications.fetch_add(1, Ordering::SeqCst);
        if token.expose_secret() == RUNTIME_TOKEN {
            Ok(Agent)
        } else {
            Err(server::problem(
                StatusCode::FORBIDDEN,
                ProblemCode::IdentityRevoked,
                "Identity revoked",
                None,
                &ctx.request_id,
            ))
        }
    }

    async fn authenticate_agent_runtime_bearer_or_client_certificate(
        &self,
        ctx: &RequestContext,
        op: &'static OperationSpec,
        path: &HashMap<String, String>,
        token: Option<BearerToken>,
        certificate: Option<ClientCertificate>,
    ) -> Result<Agent, types::Problem> {
        // The stubs serve plain HTTP here: no certificate reaches them.
        assert!(certificate.is_none());
        match token {
            Some(token) => self.authenticate_agent_runtime_bearer(ctx, op, path, token).await,
            None => unreachable!("the stub answers 401 before asking when no credential is present"),
        }
    }

    async fn exchange_enrollment_token(
        &self,
        _ctx: RequestContext,
        body: types::EnrollmentExchangeRequest,
    ) -> ExchangeEnrollmentTokenResponse {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut agent = identity(uuid::Uuid::from_u128(1), types::AgentStatus::Enrolled);
        agent.hostname = Some(body.hostname.to_string());
        ExchangeEnrollmentTokenResponse::Created(types::EnrollmentExchangeResponse {
            agent,
            certificate: certificate(uuid::Uuid::from_u128(1)),
            certificate_pem: FIXTURE_PEM.try_into().expect("fixture PEM"),
            ca_chain_pem: FIXTURE_PEM.try_into().expect("fixture PEM"),
            runtime_token: runtime_token(),
        })
    }

    async fn list_enrollment_tokens(
        &self,
        _ctx: RequestContext,
        _auth: Admin,
        query: ListEnrollmentTokensQuery,
    ) -> ListEnrollmentTokensResponse {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let n = query.limit.map_or(50, std::num::NonZeroU32::get) as u128;
        let items = (0..n.min(3))
            .map(|i| metadata(uuid::Uuid::from_u128(i), 1, None, types::EnrollmentTokenStatus::Active))
            .collect();
        ListEnrollmentTokensResponse::Ok(types::EnrollmentTokenList {
            items,
            next_cursor: query.cursor.map(|c| format!("{}-next", c.as_str())),
        })
    }

    async fn issue_enrollment_token(
        &self,
        _ctx: RequestContext,
        _auth: Admin,
        body: types::EnrollmentTokenIssueRequest,
    ) -> IssueEnrollmentTokenResponse {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let meta = metadata(
            uuid::Uuid::from_u128(7),
            body.max_uses.get(),
            body.label.map(|l| l.to_string()),
            types::EnrollmentTokenStatus::Active,
        );
        IssueEnrollmentTokenResponse::Created(types::EnrollmentTokenIssued {
            enrollment_token: "opet_fixture_not_a_secret".into(),
            token: meta,
        })
    }

    async fn revoke_enrollment_token(
        &self,
        ctx: RequestContext,
        _auth: Admin,
        enrollment_token_id: uuid::Uuid,
        _body: types::RevokeRequest,
    ) -> RevokeEnrollmentTokenResponse {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if enrollment_token_id.is_nil() {
            return RevokeEnrollmentTokenResponse::NotFound(server::problem(
                StatusCode::NOT_FOUND,
                ProblemCode::NotFound,
                "Not found",
                None,
                &ctx.request_id,
            ));
        }
        RevokeEnrollmentTokenResponse::Ok(metadata(
            enrollment_token_id,
            1,
            None,
            types::EnrollmentTokenStatus::Revoked,
        ))
    }

    async fn list_agents(
        &self,
        _ctx: RequestContext,
        _auth: Admin,
        _query: ListAgentsQuery,
    ) -> ListAgentsResponse {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ListAgentsResponse::Ok(types::AgentList {
            items: vec![identity(uuid::Uuid::from_u128(1), types::AgentStatus::Active)],
            next_cursor: None,
        })
    }

    async fn get_agent(&self, _ctx: RequestContext, _auth: Admin, agent_id: uuid::Uuid) -> GetAgentResponse {
        self.calls.fetch_add(1, Ordering::SeqCst);
        GetAgentResponse::Ok(identity(agent_id, types::AgentStatus::Active))
    }

    async fn rotate_agent_certificate(
        &self,
        _ctx: RequestContext,
        _auth: Agent,
        agent_id: uuid::Uuid,
        _body: types::CertificateRotateRequest,
    ) -> RotateAgentCertificateResponse {
        self.calls.fetch_add(1, Ordering::SeqCst);
        RotateAgentCertificateResponse::Ok(types::CertificateRotateResponse {
            certificate: certificate(agent_id),
            certificate_pem: FIXTURE_PEM.try_into().expect("fixture PEM"),
            ca_chain_pem: FIXTURE_PEM.try_into().expect("fixture PEM"),
            runtime_token: runtime_token(),
        })
    }

    async fn revoke_agent(
        &self,
        _ctx: RequestContext,
        _auth: Admin,
        agent_id: uuid::Uuid,
        _body: types::RevokeRequest,
    ) -> RevokeAgentResponse {
        self.calls.fetch_add(1, Ordering::SeqCst);
        RevokeAgentResponse::Ok(identity(agent_id, types::AgentStatus::Revoked))
    }

    async fn post_agent_heartbeat(
        &self,
        ctx: RequestContext,
        _auth: Agent,
        agent_id: uuid::Uuid,
        body: types::AgentHeartbeatTelemetryRequest,
    ) -> PostAgentHeartbeatResponse {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if body.sequence == 429 {
            let body = server::problem(
                StatusCode::TOO_MANY_REQUESTS,
                ProblemCode::RateLimited,
                "Slow down",
                None,
                &ctx.request_id,
            );
            return PostAgentHeartbeatResponse::TooManyRequests { body, retry_after: 17 };
        }
        PostAgentHeartbeatResponse::Ok(types::HeartbeatAccepted {
            accepted_at: body.collected_at,
            agent_id,
            duplicate: body.sequence == 0,
            status: types::AgentStatus::Active,
        })
    }

    async fn list_audit_events(
        &self,
        _ctx: RequestContext,
        _auth: Admin,
        _query: ListAuditEventsQuery,
    ) -> ListAuditEventsResponse {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ListAuditEventsResponse::Ok(types::AuditEventList { items: vec![], next_cursor: None })
    }

    async fn list_events(
        &self,
        _ctx: RequestContext,
        _auth: Admin,
        _query: ListEventsQuery,
    ) -> ListEventsResponse {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ListEventsResponse::Ok(types::DomainEventList { items: vec![], next_cursor: None })
    }

    async fn get_health(&self, _ctx: RequestContext) -> GetHealthResponse {
        GetHealthResponse::Ok(types::HealthStatus {
            checks: Default::default(),
            status: types::HealthStatusStatus::Ok,
        })
    }

    async fn get_readiness(&self, ctx: RequestContext) -> GetReadinessResponse {
        GetReadinessResponse::ServiceUnavailable(server::problem(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemCode::StoreUnavailable,
            "Not ready",
            None,
            &ctx.request_id,
        ))
    }

    async fn get_open_api_document(&self, _ctx: RequestContext) -> GetOpenApiDocumentResponse {
        GetOpenApiDocumentResponse::Ok(
            serde_json::from_str(oneprotect_contracts::contract::OPENAPI_JSON)
                .expect("the embedded contract reads as an OpenApiDocument"),
        )
    }

    async fn get_async_api_document(&self, _ctx: RequestContext) -> GetAsyncApiDocumentResponse {
        GetAsyncApiDocumentResponse::Ok(
            serde_json::from_str(oneprotect_contracts::contract::ASYNCAPI_JSON)
                .expect("the embedded event contract reads as an AsyncApiDocument"),
        )
    }

    async fn get_ca_certificates(&self, _ctx: RequestContext) -> GetCaCertificatesResponse {
        GetCaCertificatesResponse::Ok(FIXTURE_PEM.into())
    }

    async fn get_certificate_revocation_list(
        &self,
        _ctx: RequestContext,
    ) -> GetCertificateRevocationListResponse {
        GetCertificateRevocationListResponse::Ok(
            "-----BEGIN X509 CRL-----\nfixture\n-----END X509 CRL-----\n".into(),
        )
    }

    async fn get_metrics(&self, _ctx: RequestContext) -> GetMetricsResponse {
        GetMetricsResponse::Ok("# TYPE fixture_up gauge\nfixture_up 1\n".into())
    }
}

struct Harness {
    base: String,
    api: Arc<EchoApi>,
}

async fn serve() -> Harness {
    let api = Arc::new(EchoApi::default());
    let app = server::router(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
    });
    Harness { base: format!("http://{addr}"), api }
}

fn client_with(base: &str, bearer: Option<&str>) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = bearer {
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
    }
    let http = reqwest::Client::builder().default_headers(headers).build().expect("client");
    Client::new_with_client(base, http, ClientOptions::default())
}

async fn problem_of(resp: reqwest::Response, status: StatusCode) -> types::Problem {
    assert_eq!(resp.status(), status);
    let content_type =
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(content_type, "application/json", "problems are typed JSON, never plain text");
    let request_id = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = resp.text().await.expect("body");
    let problem: types::Problem =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a Problem ({e}): {text}"));
    assert_eq!(problem.status, status.as_u16());
    assert_eq!(Some(problem.request_id.clone()), request_id, "the body and header carry the same request id");
    problem
}

fn heartbeat(sequence: u64) -> types::AgentHeartbeatTelemetryRequest {
    serde_json::from_value(json!({
        "sequence": sequence, "collected_at": "2026-11-02T11:00:00Z", "hostname": "host.fixture", "agent_version": "0.1.0"
    }))
    .expect("heartbeat fixture")
}

fn exchange_request() -> types::EnrollmentExchangeRequest {
    serde_json::from_value(json!({
        "enrollment_token": "opet_fixture_not_a_secret",
        "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nFIXTURE\n-----END CERTIFICATE REQUEST-----\n",
        "nonce": "fixture-nonce-AAAAAAAAAAAAAAAA",
        "hostname": "host.fixture",
        "agent_version": "0.1.0"
    }))
    .expect("exchange fixture")
}

#[tokio::test]
async fn every_operation_round_trips_typed_bodies_through_the_generated_client() {
    let h = serve().await;
    let admin = client_with(&h.base, Some(ADMIN_TOKEN));
    let agent = client_with(&h.base, Some(RUNTIME_TOKEN));
    let anonymous = client_with(&h.base, None);
    let agent_id = uuid::Uuid::from_u128(42);

    let issue = types::EnrollmentTokenIssueRequest {
        collector_id: None,
        label: Some("fixture label".parse().expect("label")),
        max_uses: NonZeroU32::new(3).expect("non-zero"),
        site_id: None,
        ttl_seconds: 3600,
    };
    let issued = admin.issue_enrollment_token(&issue).await.expect("issue").into_inner();
    assert_eq!(issued.token.max_uses, 3);
    assert_eq!(issued.token.label.as_deref(), Some("fixture label"));

    let cursor: types::ListEnrollmentTokensCursor = "c1".parse().expect("cursor");
    let list =
        admin.list_enrollment_tokens(Some(&cursor), NonZeroU32::new(2)).await.expect("list").into_inner();
    assert_eq!(list.items.len(), 2, "the limit query parameter reached the implementation");
    assert_eq!(
        list.next_cursor.as_deref(),
        Some("c1-next"),
        "the cursor query parameter reached the implementation"
    );

    let token_id = uuid::Uuid::from_u128(9);
    let revoked = admin
        .revoke_enrollment_token(&token_id, &types::RevokeRequest { reason: None })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(revoked.enrollment_token_id, token_id);
    assert_eq!(revoked.status, types::EnrollmentTokenStatus::Revoked);

    let enrolled = anonymous.exchange_enrollment_token(&exchange_request()).await.expect("exchange");
    assert_eq!(enrolled.status(), StatusCode::CREATED);
    assert_eq!(enrolled.into_inner().agent.hostname.as_deref(), Some("host.fixture"));

    assert_eq!(admin.list_agents(None, None).await.expect("agents").into_inner().items.len(), 1);
    assert_eq!(admin.get_agent(&agent_id).await.expect("agent").into_inner().agent_id, agent_id);
    assert_eq!(
        admin
            .revoke_agent(&agent_id, &types::RevokeRequest { reason: None })
            .await
            .expect("revoke agent")
            .into_inner()
            .status,
        types::AgentStatus::Revoked
    );

    let accepted =
        agent.post_agent_heartbeat(&agent_id, &heartbeat(5)).await.expect("heartbeat").into_inner();
    assert_eq!(accepted.agent_id, agent_id);
    assert!(!accepted.duplicate);

    let rotate: types::CertificateRotateRequest = serde_json::from_value(
        json!({"csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nX\n-----END CERTIFICATE REQUEST-----\n", "nonce": "fixture-nonce-BBBBBBBBBBBBBBBB"}),
    )
    .expect("rotate");
    assert_eq!(
        agent
            .rotate_agent_certificate(&agent_id, &rotate)
            .await
            .expect("rotate")
            .into_inner()
            .certificate
            .agent_id,
        agent_id
    );

    assert!(admin.list_audit_events(None, None).await.expect("audit").into_inner().items.is_empty());
    assert!(admin.list_events(None, None).await.expect("events").into_inner().items.is_empty());
    assert_eq!(
        anonymous.get_health().await.expect("health").into_inner().status,
        types::HealthStatusStatus::Ok
    );
    let metrics = anonymous.get_metrics().await.expect("metrics");
    assert_eq!(metrics.status(), StatusCode::OK);

    match anonymous.get_readiness().await {
        Err(oneprotect_contracts::client::Error::ErrorResponse(problem)) => {
            assert_eq!(problem.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(problem.code, "store_unavailable", "error bodies arrive typed");
        }
        other => panic!("expected a typed 503 Problem, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_bearer_on_protected_operation_is_401_problem_before_the_implementation_runs() {
    let h = serve().await;
    let http = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/api/v1/agents".to_owned()),
        ("POST", "/api/v1/agent-enrollment/tokens".to_owned()),
        ("POST", format!("/api/v1/agents/{}/telemetry/heartbeat", uuid::Uuid::from_u128(1))),
    ] {
        let resp = http
            .request(method.parse().expect("method"), format!("{}{path}", h.base))
            .json(&json!({}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
        let problem = problem_of(resp, StatusCode::UNAUTHORIZED).await;
        assert_eq!(problem.code, "unauthenticated", "{method} {path}");
    }
    let resp = http
        .get(format!("{}/api/v1/agents", h.base))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .expect("send");
    assert_eq!(
        problem_of(resp, StatusCode::UNAUTHORIZED).await.code,
        "unauthenticated",
        "a non-bearer scheme is not a bearer"
    );
    assert_eq!(h.api.calls.load(Ordering::SeqCst), 0, "the trait was never called");
    assert_eq!(
        h.api.authentications.load(Ordering::SeqCst),
        0,
        "without a certificate or a bearer the heartbeat's authenticator is not asked either"
    );
}

#[tokio::test]
async fn malformed_json_is_400_problem_not_axum_plain_text() {
    let h = serve().await;
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/agent-enrollment/exchange", h.base))
        .header("content-type", "application/json")
        .body("{\"enrollment_token\": ")
        .send()
        .await
        .expect("send");
    let problem = problem_of(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(problem.code, "request_invalid");
    assert_eq!(h.api.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unknown_path_is_404_problem_and_wrong_method_is_405_problem() {
    let h = serve().await;
    let http = reqwest::Client::new();
    let resp = http.get(format!("{}/api/v1/nope", h.base)).send().await.expect("send");
    assert_eq!(problem_of(resp, StatusCode::NOT_FOUND).await.code, "not_found");
    let resp = http.delete(format!("{}/api/v1/agents", h.base)).send().await.expect("send");
    assert_eq!(problem_of(resp, StatusCode::METHOD_NOT_ALLOWED).await.code, "method_not_allowed");
}

#[tokio::test]
async fn wrong_media_type_is_415_and_oversize_body_is_413() {
    let h = serve().await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/agent-enrollment/exchange", h.base);
    let resp = http.post(&url).header("content-type", "text/plain").body("hello").send().await.expect("send");
    assert_eq!(problem_of(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE).await.code, "unsupported_media_type");
    let huge = format!("{{\"csr_pem\": \"{}\"}}", "A".repeat(70 * 1024));
    let resp =
        http.post(&url).header("content-type", "application/json").body(huge).send().await.expect("send");
    assert_eq!(problem_of(resp, StatusCode::PAYLOAD_TOO_LARGE).await.code, "payload_too_large");
    assert_eq!(h.api.calls.load(Ordering::SeqCst), 0);
}

/// Writes `request` on one connection and reads until the peer closes it
/// or `within` passes; returns what was read.
async fn raw_exchange(base: &str, request: &[u8], within: std::time::Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.expect("connect");
    let (mut read, mut write) = conn.split();
    let mut answer = Vec::new();
    let reading = async {
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let writing = async {
        let _ = write.write_all(request).await;
    };
    let _ = tokio::time::timeout(within, async { tokio::join!(reading, writing) }).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_oversize_body_is_read_to_its_end_so_the_413_arrives_and_the_connection_stays_usable() {
    // Answering 413 while the body is still arriving, then closing, resets
    // the connection: the client loses the answer (seen as "error sending
    // request", or a proxy's 502). The refused body is drained instead.
    let h = serve().await;
    let body = "A".repeat(70 * 1024);
    let mut request = format!(
        "POST /api/v1/agent-enrollment/exchange HTTP/1.1\r\nhost: fixture\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    request.push_str("GET /healthz HTTP/1.1\r\nhost: fixture\r\nconnection: close\r\n\r\n");
    let answer = raw_exchange(&h.base, request.as_bytes(), std::time::Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{}", answer.lines().next().unwrap_or_default());
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        2,
        "the next request on the connection is answered too: {answer}"
    );
    let text = format!(
        "POST /api/v1/agent-enrollment/exchange HTTP/1.1\r\nhost: fixture\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}GET /healthz HTTP/1.1\r\nhost: fixture\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let answer = raw_exchange(&h.base, text.as_bytes(), std::time::Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 415"), "{}", answer.lines().next().unwrap_or_default());
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        2,
        "the connection survives a 415 with a large body: {answer}"
    );
    // Refused for its credential before the body is read: drained all the same.
    let unauthenticated = format!(
        "POST /api/v1/agent-enrollment/tokens HTTP/1.1\r\nhost: fixture\r\nauthorization: Bearer not-the-admin\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}GET /healthz HTTP/1.1\r\nhost: fixture\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let answer = raw_exchange(&h.base, unauthenticated.as_bytes(), std::time::Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{}", answer.lines().next().unwrap_or_default());
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        2,
        "the connection survives a 401 with an unread body: {answer}"
    );
    assert_eq!(h.api.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_refused_body_is_drained_only_up_to_its_bound() {
    // 100 MiB declared, 2 MiB sent, the rest never comes: the server stops
    // reading after its 1 MiB bound and answers at once instead of waiting.
    let h = serve().await;
    let mut request =
        b"POST /api/v1/agent-enrollment/exchange HTTP/1.1\r\nhost: fixture\r\ncontent-type: application/json\r\ncontent-length: 104857600\r\n\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'A', 2 << 20));
    let started = std::time::Instant::now();
    let answer = raw_exchange(&h.base, &request, std::time::Duration::from_secs(30)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{}", answer.lines().next().unwrap_or_default());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "answered after {:?}, not at the bound",
        started.elapsed()
    );
}

#[tokio::test]
async fn schema_bounds_are_enforced_and_the_rejection_never_echoes_the_value() {
    let h = serve().await;
    let marker = "FIXTURE-SECRET-MARKER";
    let mut body = serde_json::to_value(exchange_request()).expect("json");
    body["enrollment_token"] = Value::String(format!("{marker}{}", "x".repeat(300)));
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/agent-enrollment/exchange", h.base))
        .json(&body)
        .send()
        .await
        .expect("send");
    let problem = problem_of(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(problem.code, "request_invalid");
    let detail = problem.detail.unwrap_or_default();
    assert!(detail.contains("/enrollment_token"), "the detail names the field: {detail}");
    assert!(!detail.contains(marker), "the detail must not echo the value: {detail}");
    assert_eq!(h.api.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn heartbeat_body_carrying_identity_fields_is_rejected_as_identity_override() {
    let h = serve().await;
    let url = format!("{}/api/v1/agents/{}/telemetry/heartbeat", h.base, uuid::Uuid::from_u128(1));
    for field in ["tenant_id", "agent_id", "collector_id", "asset_id", "site_id"] {
        let mut body = serde_json::to_value(heartbeat(1)).expect("json");
        body[field] = Value::String("someone-else".into());
        let resp = reqwest::Client::new()
            .post(&url)
            .bearer_auth(RUNTIME_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("send");
        let problem = problem_of(resp, StatusCode::BAD_REQUEST).await;
        assert_eq!(problem.code, "identity_override_rejected", "{field}");
    }
    let mut body = serde_json::to_value(heartbeat(1)).expect("json");
    body["kernel_version"] = Value::String("6.1".into());
    let resp =
        reqwest::Client::new().post(&url).bearer_auth(RUNTIME_TOKEN).json(&body).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK, "extra telemetry facts ride on additional properties");
}

#[tokio::test]
async fn malformed_path_and_query_parameters_are_400_problems() {
    let h = serve().await;
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/api/v1/agents/not-a-uuid", h.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("send");
    assert_eq!(problem_of(resp, StatusCode::BAD_REQUEST).await.code, "parameter_invalid");
    for query in ["limit=0", "limit=201", "limit=ten", &format!("cursor={}", "c".repeat(129))] {
        let resp = http
            .get(format!("{}/api/v1/agents?{query}", h.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("send");
        assert_eq!(problem_of(resp, StatusCode::BAD_REQUEST).await.code, "parameter_invalid", "{query}");
    }
    assert_eq!(h.api.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn documented_headers_and_request_ids_reach_the_client() {
    let h = serve().await;
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/agents/{}/telemetry/heartbeat", h.base, uuid::Uuid::from_u128(1)))
        .bearer_auth(RUNTIME_TOKEN)
        .header("x-request-id", "req-fixture-1")
        .json(&heartbeat(429))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("17"));
    let problem = problem_of(resp, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(problem.request_id, "req-fixture-1", "a well-formed caller request id is kept");

    let resp = reqwest::Client::new()
        .get(format!("{}/healthz", h.base))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .expect("send");
    let id = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "a malformed caller request id is replaced: {id}");
}

#[test]
fn from_problem_maps_an_undocumented_status_to_a_500_internal_error() {
    let p = server::problem(StatusCode::IM_A_TEAPOT, ProblemCode::RequestInvalid, "Teapot", None, "r1");
    match GetAgentResponse::from_problem(p) {
        GetAgentResponse::InternalError(problem) => {
            assert_eq!(problem.status, 500);
            assert_eq!(problem.code, "internal_error");
        }
        other => panic!("expected InternalError, got {other:?}"),
    }
    let p = server::problem(StatusCode::NOT_FOUND, ProblemCode::NotFound, "Not found", None, "r2");
    assert!(matches!(GetAgentResponse::from_problem(p), GetAgentResponse::NotFound(_)));
}

#[test]
fn bearer_token_debug_output_is_redacted() {
    let token = BearerToken::new("fixture-bearer-value");
    assert_eq!(format!("{token:?}"), "BearerToken([REDACTED])");
}

/// The stubs give each query parameter the type the client sends it as: a
/// query read by the server passes to the client unconverted (this compiles
/// only while the two agree).
#[tokio::test]
async fn client_and_server_give_query_parameters_the_same_rust_types() {
    let h = serve().await;
    let client = client_with(&h.base, Some(ADMIN_TOKEN));
    let query = ListAgentsQuery { cursor: None, limit: NonZeroU32::new(2) };
    let page = client.list_agents(query.cursor.as_ref(), query.limit).await.expect("lists");
    assert!(page.into_inner().items.len() <= 2);
    let cursor: types::ListEnrollmentTokensCursor =
        "page-2".to_string().try_into().expect("a short cursor fits");
    let tokens = ListEnrollmentTokensQuery { cursor: Some(cursor), limit: NonZeroU32::new(1) };
    let page = client
        .list_enrollment_tokens(tokens.cursor.as_ref(), tokens.limit)
        .await
        .expect("lists tokens")
        .into_inner();
    assert_eq!(page.next_cursor.as_deref(), Some("page-2-next"), "the typed cursor arrived as sent");
    let audit = ListAuditEventsQuery { cursor: None, limit: NonZeroU32::new(1) };
    let _ = client.list_audit_events(audit.cursor.as_ref(), audit.limit).await;
    let events = ListEventsQuery { cursor: None, limit: NonZeroU32::new(1) };
    let _ = client.list_events(events.cursor.as_ref(), events.limit).await;
}

/// The stub asks the implementation's authenticator first: a refused
/// credential is answered before a path parameter, a query or a body is
/// judged, and no operation method runs.
#[tokio::test]
async fn a_refused_credential_is_answered_before_parameters_or_body_are_judged() {
    let h = serve().await;
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/api/v1/agents/not-a-uuid", h.base))
        .bearer_auth("not-the-admin")
        .send()
        .await
        .expect("send");
    assert_eq!(problem_of(resp, StatusCode::UNAUTHORIZED).await.code, "unauthenticated");
    let resp = http
        .get(format!("{}/api/v1/agents?limit=0", h.base))
        .bearer_auth("not-the-admin")
        .send()
        .await
        .expect("send");
    assert_eq!(problem_of(resp, StatusCode::UNAUTHORIZED).await.code, "unauthenticated");
    let resp = http
        .post(format!("{}/api/v1/agent-enrollment/tokens", h.base))
        .bearer_auth("not-the-admin")
        .header("content-type", "text/plain")
        .body("x".repeat(128 * 1024))
        .send()
        .await
        .expect("send");
    assert_eq!(problem_of(resp, StatusCode::UNAUTHORIZED).await.code, "unauthenticated", "not 413 nor 415");
    let resp = http
        .post(format!("{}/api/v1/agents/{}/telemetry/heartbeat", h.base, uuid::Uuid::nil()))
        .bearer_auth("not-the-runtime-token")
        .json(&json!({"tenant_id": "someone-else"}))
        .send()
        .await
        .expect("send");
    assert_eq!(
        problem_of(resp, StatusCode::FORBIDDEN).await.code,
        "identity_revoked",
        "the authenticator's answer, not identity_override_rejected"
    );
    assert_eq!(h.api.calls.load(Ordering::SeqCst), 0, "no operation method ran");
    assert_eq!(h.api.authentications.load(Ordering::SeqCst), 4, "each request was authenticated first");
}

/// Every answer — success, refusal by the stub, refusal by the
/// implementation, unknown route — is marked not to be cached nor sniffed.
#[tokio::test]
async fn every_answer_is_no_store_and_nosniff() {
    let h = serve().await;
    let http = reqwest::Client::new();
    let issue = serde_json::json!({"ttl_seconds": 600});
    let answers = [
        http.post(format!("{}/api/v1/agent-enrollment/tokens", h.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&issue)
            .send()
            .await
            .expect("send"),
        http.post(format!("{}/api/v1/agent-enrollment/tokens", h.base))
            .bearer_auth("not-the-admin")
            .json(&issue)
            .send()
            .await
            .expect("send"),
        http.get(format!("{}/api/v1/agents?limit=0", h.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("send"),
        http.get(format!("{}/no/such/route", h.base)).send().await.expect("send"),
        http.get(format!("{}/metrics", h.base)).send().await.expect("send"),
    ];
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [201, 401, 400, 404, 200]);
    for r in &answers {
        assert_eq!(
            r.headers().get("cache-control").and_then(|v| v.to_str().ok()),
            Some("no-store"),
            "{}",
            r.url()
        );
        assert_eq!(
            r.headers().get("x-content-type-options").and_then(|v| v.to_str().ok()),
            Some("nosniff"),
            "{}",
            r.url()
        );
    }
}
