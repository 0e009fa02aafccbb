//! The faulty HTTP layer: the real router wrapped by a middleware that
//! breaks one rule of authentication or of a request's handling per fault.

use super::*;

/// What the faulty HTTP layer works with.
#[derive(Clone)]
pub struct HttpFaultState {
    pub fault: Fault,
    /// True on the second platform, the one without a runtime secret.
    pub secretless: bool,
    pub runtime_secret: Vec<u8>,
    pub admin_secret: Vec<u8>,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    pub seen: Shared,
}

fn bearer_of(req: &Request) -> Option<String> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

fn set_bearer(req: &mut Request, token: &str) {
    if let Ok(v) = format!("Bearer {token}").parse() {
        req.headers_mut().insert("authorization", v);
    }
}

fn json_part(part: &str) -> Option<Value> {
    oneprotect_server::secrets::unb64(part.trim_end_matches('='))
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// An admin JWT's header and claims, unverified.
fn admin_parts(token: &str) -> Option<(Value, AdminClaims)> {
    let mut parts = token.split('.');
    let header = json_part(parts.next()?)?;
    let claims = serde_json::from_value(json_part(parts.next()?)?).ok()?;
    Some((header, claims))
}

/// A runtime token's claims and MAC, unverified.
fn runtime_parts(token: &str) -> Option<(RuntimeClaims, String)> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 5 || parts[0] != "oprt" {
        return None;
    }
    let claims = serde_json::from_value(json_part(parts[3])?).ok()?;
    Some((claims, parts[4].to_owned()))
}

fn problem(status: u16, code: ProblemCode) -> Response {
    let body = json!({"type": format!("urn:oneprotect:problem:{code}"), "title": code, "status": status, "code": code, "detail": "faulty variant", "request_id": "faulty-variant"});
    let status =
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("content-type", "application/problem+json")], body.to_string()).into_response()
}

async fn read_json(req: Request) -> (axum::http::request::Parts, Option<Value>, axum::body::Bytes) {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let json = serde_json::from_slice(&bytes).ok();
    (parts, json, bytes)
}

fn rebuild(mut parts: axum::http::request::Parts, body: Vec<u8>) -> Request {
    parts.headers.remove("content-length");
    if let Ok(v) = body.len().to_string().parse() {
        parts.headers.insert("content-length", v);
    }
    Request::from_parts(parts, Body::from(body))
}

async fn response_json(
    response: Response,
) -> (axum::http::response::Parts, Option<Value>, axum::body::Bytes) {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let json = serde_json::from_slice(&bytes).ok();
    (parts, json, bytes)
}

fn respond(mut parts: axum::http::response::Parts, body: Vec<u8>) -> Response {
    parts.headers.remove("content-length");
    Response::from_parts(parts, Body::from(body))
}

fn is_heartbeat(req: &Request) -> bool {
    req.method() == axum::http::Method::POST && req.uri().path().ends_with("/telemetry/heartbeat")
}

fn remint(state: &HttpFaultState, claims: &AdminClaims) -> Option<String> {
    oneprotect_server::admin_auth::mint_hs256(&state.admin_secret, claims).ok()
}

fn known_path(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    oneprotect_contracts::contract::OPERATIONS.iter().any(|op| {
        let template: Vec<&str> = op.path.split('/').collect();
        template.len() == segments.len()
            && template.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s)
    }) || ["/healthz", "/readyz", "/metrics"].contains(&path)
}

/// The protected operation a request is for, by method and path template.
fn protected_operation(
    method: &str,
    path: &str,
) -> Option<&'static oneprotect_contracts::contract::OperationSpec> {
    let segments: Vec<&str> = path.split('/').collect();
    oneprotect_contracts::contract::OPERATIONS.iter().find(|op| {
        let template: Vec<&str> = op.path.split('/').collect();
        op.security.is_some()
            && op.method == method
            && template.len() == segments.len()
            && template.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s)
    })
}

/// The agent id a certificate's CN names, unverified.
fn certificate_agent(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// A certificate of the agent profile naming the platform CA as its issuer,
/// signed by another key.
fn forged_agent_certificate(ca_chain_pem: &str, tenant: &str, agent: &str) -> Option<String> {
    use x509_parser::prelude::*;
    let ca_der = x509_parser::pem::Pem::iter_from_buffer(ca_chain_pem.as_bytes()).next()?.ok()?.contents;
    let (_, ca) = X509Certificate::from_der(&ca_der).ok()?;
    let mut ca_name = rcgen::DistinguishedName::new();
    for o in ca.subject().iter_organization() {
        ca_name.push(rcgen::DnType::OrganizationName, o.as_str().ok()?);
    }
    for cn in ca.subject().iter_common_name() {
        ca_name.push(rcgen::DnType::CommonName, cn.as_str().ok()?);
    }
    let mut issuer_params = rcgen::CertificateParams::default();
    issuer_params.distinguished_name = ca_name;
    let forger = rcgen::KeyPair::generate().ok()?;
    let issuer = rcgen::Issuer::new(issuer_params, &forger);
    let key = rcgen::KeyPair::generate().ok()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, agent);
    let uri =
        format!("spiffe://{}/tenant/{tenant}/agent/{agent}", oneprotect_server::pki::DEFAULT_TRUST_DOMAIN);
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().ok()?)];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.signed_by(&key, &issuer).ok().map(|c| c.pem())
}

/// The faulty HTTP layer: wraps the real router.
pub async fn http_fault(state: HttpFaultState, req: Request, next: Next) -> Response {
    let now = state.clock.now();
    let fault = state.fault;
    if state.secretless {
        let response = next.run(req).await;
        if fault == Fault::SecretlessAnswers500 && response.status().as_u16() == 503 {
            return problem(500, ProblemCode::InternalError);
        }
        return response;
    }
    let path = req.uri().path().to_owned();
    let is_exchange = req.method() == axum::http::Method::POST && path == "/api/v1/agent-enrollment/exchange";
    let mut req = req;

    // Requests: what the exchange carried, and credentials the fault accepts.
    if is_exchange {
        let (parts, json, bytes) = read_json(req).await;
        let mut body = bytes.to_vec();
        if let Some(mut json) = json {
            {
                let mut seen = observed(&state.seen);
                seen.nonce = json["nonce"].as_str().map(str::to_owned);
                seen.fingerprint = json["hardware_fingerprint_hash"].as_str().map(str::to_owned);
            }
            if fault == Fault::CsrCheckedAfterRedeem
                && oneprotect_server::csr::verify_csr_pem(json["csr_pem"].as_str().unwrap_or_default())
                    .is_err()
            {
                json["csr_pem"] = json!(crate::ctx::p256_csr());
                body = json.to_string().into_bytes();
                let response = next.run(rebuild(parts, body)).await;
                return if response.status().as_u16() == 201 {
                    problem(400, ProblemCode::CsrInvalid)
                } else {
                    response
                };
            }
            if fault == Fault::EchoRejectedValue {
                let submitted = json["enrollment_token"].as_str().unwrap_or_default().to_owned();
                let response = next.run(rebuild(parts, body)).await;
                if response.status().as_u16() != 400 {
                    return response;
                }
                let (rparts, rjson, rbytes) = response_json(response).await;
                let Some(mut rjson) = rjson else { return respond(rparts, rbytes.to_vec()) };
                rjson["detail"] = json!(format!("enrollment_token {submitted:?} is invalid"));
                return respond(rparts, rjson.to_string().into_bytes());
            }
        }
        req = rebuild(parts, body);
    }
    let bearer = bearer_of(&req);
    match fault {
        Fault::LogBearer => {
            tracing::info!(authorization = %bearer.clone().unwrap_or_default(), "faulty variant: request received");
        }
        Fault::DefaultPrincipal
            if bearer.is_none()
                && path.starts_with("/api/v1/")
                && !is_exchange
                && !path.contains("/telemetry/")
                && !path.contains("/certificate/") =>
        {
            let claims = AdminClaims {
                sub: "default@faulty".into(),
                tenant_id: crate::local::TENANT_A.into(),
                roles: vec!["tenant_admin".into()],
                exp: now.timestamp() + 3600,
                iss: crate::local::ISSUER.into(),
                aud: crate::local::AUDIENCE.into(),
                nbf: None,
            };
            if let Some(t) = remint(&state, &claims) {
                set_bearer(&mut req, &t);
            }
        }
        Fault::AcceptAlgNone
        | Fault::AcceptAnySignature
        | Fault::AdminExpIgnored
        | Fault::AdminNbfIgnored
        | Fault::ViewerMayRevoke => {
            if let Some((header, mut claims)) = bearer.as_deref().and_then(admin_parts) {
                let alg = header["alg"].as_str().unwrap_or_default().to_ascii_lowercase();
                let verifies = oneprotect_server::admin_auth::AdminVerifier::hs256(
                    &state.admin_secret,
                    &claims.iss,
                    &claims.aud,
                )
                .ok()
                .is_some_and(|v| {
                    v.verify(
                        bearer.as_deref().unwrap_or_default(),
                        DateTime::from_timestamp(claims.exp - 60, 0).unwrap_or(now),
                    )
                    .is_ok()
                });
                let replace = match fault {
                    Fault::AcceptAlgNone => alg == "none",
                    Fault::AcceptAnySignature => alg == "hs256" && !verifies,
                    Fault::AdminExpIgnored if verifies && claims.exp < now.timestamp() => {
                        claims.exp = now.timestamp() + 3600;
                        true
                    }
                    Fault::AdminNbfIgnored if claims.nbf.is_some_and(|n| n > now.timestamp()) => {
                        claims.nbf = None;
                        true
                    }
                    Fault::ViewerMayRevoke
                        if path.ends_with("/revoke") && claims.roles.iter().any(|r| r == "tenant_viewer") =>
                    {
                        claims.roles = vec!["tenant_admin".into()];
                        true
                    }
                    _ => false,
                };
                if replace && let Some(t) = remint(&state, &claims) {
                    set_bearer(&mut req, &t);
                }
            }
        }
        Fault::AcceptTamperedRuntimeToken
        | Fault::TruncatedMacAccepted
        | Fault::ScopeIgnored
        | Fault::RuntimeExpiryIgnored => {
            if let Some((mut claims, mac)) = bearer.as_deref().and_then(runtime_parts) {
                let ring = RuntimeKeyring::new(Some(state.runtime_secret.clone()), vec![]).ok();
                let verifies_at = |at: DateTime<Utc>| {
                    ring.as_ref().is_some_and(|r| r.verify(bearer.as_deref().unwrap_or_default(), at).is_ok())
                };
                let correct = sign_runtime(&state.runtime_secret, &claims);
                let correct_mac = correct.rsplit('.').next().unwrap_or_default().to_owned();
                let replace = match fault {
                    Fault::AcceptTamperedRuntimeToken => !verifies_at(now),
                    Fault::TruncatedMacAccepted => {
                        mac.len() < correct_mac.len() && correct_mac.starts_with(&mac)
                    }
                    Fault::ScopeIgnored if claims.scope != "agent_heartbeat" => {
                        claims.scope = "agent_heartbeat".into();
                        true
                    }
                    Fault::RuntimeExpiryIgnored
                        if !verifies_at(now)
                            && verifies_at(DateTime::from_timestamp(claims.iat, 0).unwrap_or(now)) =>
                    {
                        claims.exp = now.timestamp() + 3600;
                        true
                    }
                    _ => false,
                };
                if replace {
                    set_bearer(&mut req, &sign_runtime(&state.runtime_secret, &claims));
                }
            }
        }
        Fault::AdminAcceptedAsAgent if is_heartbeat(&req) => {
            let agent = path.split('/').nth(4).and_then(|s| Uuid::parse_str(s).ok());
            if let (Some((_, claims)), Some(agent)) = (bearer.as_deref().and_then(admin_parts), agent)
                && let Ok(Some(identity)) = state.store.get_identity(&claims.tenant_id, agent).await
            {
                let runtime = oneprotect_server::runtime_token::claims_for(
                    &identity.tenant_id,
                    identity.agent_id,
                    identity.collector_id,
                    identity.asset_id,
                    identity.certificate_id,
                    now,
                    chrono::Duration::hours(1),
                );
                set_bearer(&mut req, &sign_runtime(&state.runtime_secret, &runtime));
            }
        }
        Fault::AgentFromCertificate if is_heartbeat(&req) => {
            let agent = req
                .extensions()
                .get::<oneprotect_contracts::server::ClientCertificate>()
                .and_then(|c| certificate_agent(&c.0));
            if let Some(agent) = agent {
                let rewritten = format!("/api/v1/agents/{agent}/telemetry/heartbeat");
                if let Ok(uri) = rewritten.parse() {
                    *req.uri_mut() = uri;
                }
            }
        }
        Fault::AgentFromToken if is_heartbeat(&req) => {
            if let Some((claims, _)) = bearer.as_deref().and_then(runtime_parts) {
                let segments: Vec<String> = path.split('/').map(str::to_owned).collect();
                if segments.len() > 4 && segments[4] != claims.agent_id.to_string() {
                    let rewritten = format!("/api/v1/agents/{}/telemetry/heartbeat", claims.agent_id);
                    if let Ok(uri) = rewritten.parse() {
                        *req.uri_mut() = uri;
                    }
                }
            }
        }
        // The old stubs checked that a bearer was present, then the body, then the credential.
        Fault::BodyJudgedBeforeCredential
            if req.method() != axum::http::Method::GET
                && req.headers().contains_key(axum::http::header::AUTHORIZATION) =>
        {
            let op = protected_operation(req.method().as_str(), &path);
            let (parts, json, bytes) = read_json(req).await;
            if let Some(schema) = op.and_then(|o| o.request_schema) {
                if json
                    .as_ref()
                    .is_some_and(|v| oneprotect_contracts::contract::forbidden_property(schema, v).is_some())
                {
                    return problem(400, ProblemCode::IdentityOverrideRejected);
                }
                let valid = json
                    .as_ref()
                    .is_some_and(|v| oneprotect_contracts::contract::validate_schema(schema, v).is_ok());
                if !valid {
                    return problem(400, ProblemCode::RequestInvalid);
                }
            }
            req = rebuild(parts, bytes.to_vec());
        }
        Fault::IdentityFieldsIgnored if is_heartbeat(&req) => {
            let (parts, json, bytes) = read_json(req).await;
            let body = match json {
                Some(Value::Object(mut map)) => {
                    for field in ["tenant_id", "agent_id", "collector_id", "asset_id", "site_id"] {
                        map.remove(field);
                    }
                    Value::Object(map).to_string().into_bytes()
                }
                _ => bytes.to_vec(),
            };
            req = rebuild(parts, body);
        }
        _ => {}
    }

    let is_list = req.method() == axum::http::Method::GET && path == "/api/v1/agent-enrollment/tokens";
    let is_issue = req.method() == axum::http::Method::POST && path == "/api/v1/agent-enrollment/tokens";
    let is_rotation = path.ends_with("/certificate/rotate");
    let response = next.run(req).await;

    // Responses.
    match fault {
        Fault::OversizeAs400 if response.status().as_u16() == 413 => {
            problem(400, ProblemCode::RequestInvalid)
        }
        Fault::PlainTextNotFound if response.status().as_u16() == 404 && !known_path(&path) => {
            (axum::http::StatusCode::NOT_FOUND, "Not Found").into_response()
        }
        Fault::LogRotationAnswer if is_rotation => {
            let (parts, _, bytes) = response_json(response).await;
            tracing::debug!(answer = %String::from_utf8_lossy(&bytes), "faulty variant: rotation answered");
            respond(parts, bytes.to_vec())
        }
        Fault::ForeignCertificateIssued if is_exchange && response.status().as_u16() == 201 => {
            let (parts, json, bytes) = response_json(response).await;
            let Some(mut json) = json else { return respond(parts, bytes.to_vec()) };
            if let (Some(agent), Some(tenant), Some(chain)) = (
                json["agent"]["agent_id"].as_str(),
                json["agent"]["tenant_id"].as_str(),
                json["ca_chain_pem"].as_str(),
            ) && let Some(forged) = forged_agent_certificate(chain, tenant, agent)
            {
                json["certificate_pem"] = Value::String(forged);
            }
            respond(parts, json.to_string().into_bytes())
        }
        Fault::LeakSecretInList if (is_list || is_issue) && response.status().is_success() => {
            let (parts, json, bytes) = response_json(response).await;
            let Some(mut json) = json else { return respond(parts, bytes.to_vec()) };
            if is_issue {
                if let (Some(id), Some(secret)) =
                    (json["token"]["enrollment_token_id"].as_str(), json["enrollment_token"].as_str())
                {
                    observed(&state.seen).issued.insert(id.to_owned(), secret.to_owned());
                }
            } else if let Some(items) = json["items"].as_array_mut() {
                let seen = observed(&state.seen);
                for item in items {
                    if let Some(secret) =
                        item["enrollment_token_id"].as_str().and_then(|id| seen.issued.get(id))
                    {
                        item["label"] = Value::String(secret.clone());
                    }
                }
            }
            respond(parts, json.to_string().into_bytes())
        }
        _ => response,
    }
}
