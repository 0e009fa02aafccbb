use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::contract::ProblemCode;
use crate::types;

/// Header carrying the request id in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest bearer credential the stubs accept before answering 401.
pub const MAX_BEARER_BYTES: usize = 8 * 1024;

/// A bearer credential exactly as presented. `Debug` never prints it.
#[derive(Clone)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The credential itself: compare it in constant time, never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken([REDACTED])")
    }
}

/// What the stubs know about a request besides its typed inputs.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The caller's `x-request-id` when well formed, otherwise a fresh UUID.
    pub request_id: String,
    /// Whether `request_id` is the caller's (and so only as trustworthy as the caller).
    pub request_id_from_caller: bool,
    /// The TCP peer, when the server was started with connect info.
    pub remote_addr: Option<SocketAddr>,
    /// The `X-Forwarded-For` header as sent (at most 1 KiB of text), for an
    /// implementation that trusts the proxy in front to name the client.
    pub forwarded_for: Option<String>,
}

impl RequestContext {
    fn from_parts(parts: &Parts) -> Self {
        let from_caller = parts
            .headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
            .map(str::to_owned);
        let request_id_from_caller = from_caller.is_some();
        let request_id = from_caller.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let remote_addr = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        let forwarded_for = parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).filter(|v| v.len() <= 1024).map(str::to_owned);
        Self { request_id, request_id_from_caller, remote_addr, forwarded_for }
    }
}

/// Builds a `Problem` with the stable `code` and the request id.
pub fn problem(status: StatusCode, code: ProblemCode, title: &str, detail: Option<String>, request_id: &str) -> ProblemBody {
    ProblemBody {
        type_: format!("{PROBLEM_TYPE_PREFIX}{code}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail,
        code: code.as_str().to_owned(),
        request_id: request_id.to_owned(),
    }
}

/// Serializes a JSON body with the request id header.
pub fn json_response<T: serde::Serialize>(status: StatusCode, body: &T, request_id: &str) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(b) => b,
        Err(_) => return problem_response(&problem(StatusCode::INTERNAL_SERVER_ERROR, ProblemCode::InternalError, "Internal error", None, request_id)),
    };
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    set_request_id(response.headers_mut(), request_id);
    response
}

/// A `Problem` as a response with its own status.
pub fn problem_response(p: &ProblemBody) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, p, &p.request_id);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The headers every answer carries: its request id, and that it is not to
/// be cached (answers can carry a secret shown once, and identities) nor
/// sniffed as another media type.
fn set_request_id(headers: &mut HeaderMap, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

fn reject(status: StatusCode, code: ProblemCode, title: &str, detail: impl Into<String>, ctx: &RequestContext) -> Response {
    problem_response(&problem(status, code, title, Some(detail.into()), &ctx.request_id))
}

/// `Authorization: Bearer <token>` when the header is present (malformed is
/// 401 `unauthenticated`); `None` without it.
#[allow(dead_code)]
fn optional_bearer(headers: &HeaderMap, ctx: &RequestContext) -> Result<Option<BearerToken>, Response> {
    if headers.contains_key(header::AUTHORIZATION) {
        bearer(headers, ctx).map(Some)
    } else {
        Ok(None)
    }
}

/// Extracts `Authorization: Bearer <token>`; anything else is 401 `unauthenticated`.
fn bearer(headers: &HeaderMap, ctx: &RequestContext) -> Result<BearerToken, Response> {
    let unauthenticated = |detail: &str| reject(StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated, "Authentication required", detail, ctx);
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| unauthenticated("this operation requires a bearer token"))?;
    let value = value.to_str().map_err(|_| unauthenticated("the Authorization header is not valid text"))?;
    let (scheme, token) = value.split_once(' ').ok_or_else(|| unauthenticated("use `Authorization: Bearer <token>`"))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(unauthenticated("use `Authorization: Bearer <token>`"));
    }
    if token.len() > MAX_BEARER_BYTES {
        return Err(unauthenticated("the bearer token is too long"));
    }
    Ok(BearerToken(token.to_owned()))
}

#[allow(dead_code)]
fn path_params(params: &RawPathParams) -> std::collections::HashMap<String, String> {
    params.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[allow(dead_code)]
fn path_uuid(params: &std::collections::HashMap<String, String>, name: &str, ctx: &RequestContext) -> Result<uuid::Uuid, Response> {
    let raw = params.get(name).map(String::as_str).unwrap_or_default();
    uuid::Uuid::parse_str(raw).map_err(|_| reject(StatusCode::BAD_REQUEST, ProblemCode::ParameterInvalid, "Invalid parameter", format!("path parameter `{name}` must be a UUID"), ctx))
}

#[allow(dead_code)]
fn path_string(params: &std::collections::HashMap<String, String>, name: &str) -> String {
    params.get(name).cloned().unwrap_or_default()
}

#[allow(dead_code)]
fn query_params<T: DeserializeOwned>(parts: &Parts, ctx: &RequestContext) -> Result<T, Response> {
    let raw = parts.uri.query().unwrap_or_default();
    serde_urlencoded::from_str::<T>(raw).map_err(|_| reject(StatusCode::BAD_REQUEST, ProblemCode::ParameterInvalid, "Invalid parameter", "a query parameter is malformed", ctx))
}

/// An integer query parameter as `i64` for the range check (saturating).
trait AsI64 {
    fn as_i64(&self) -> i64;
}

macro_rules! as_i64 {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl AsI64 for $t {
            fn as_i64(&self) -> i64 {
                let $v = *self;
                $e
            }
        })*
    };
}

as_i64! {
    i8 => |v| i64::from(v), i16 => |v| i64::from(v), i32 => |v| i64::from(v), i64 => |v| v,
    u8 => |v| i64::from(v), u16 => |v| i64::from(v), u32 => |v| i64::from(v), u64 => |v| i64::try_from(v).unwrap_or(i64::MAX),
    std::num::NonZeroU8 => |v| i64::from(v.get()), std::num::NonZeroU16 => |v| i64::from(v.get()),
    std::num::NonZeroU32 => |v| i64::from(v.get()), std::num::NonZeroU64 => |v| i64::try_from(v.get()).unwrap_or(i64::MAX),
}

#[allow(dead_code)]
fn check_integer(value: Option<i64>, name: &str, min: Option<i64>, max: Option<i64>, ctx: &RequestContext) -> Result<(), Response> {
    if let Some(v) = value
        && (min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m))
    {
        let range = format!("{}..={}", min.map(|m| m.to_string()).unwrap_or_default(), max.map(|m| m.to_string()).unwrap_or_default());
        return Err(reject(StatusCode::BAD_REQUEST, ProblemCode::ParameterInvalid, "Invalid parameter", format!("query parameter `{name}` must be in {range}"), ctx));
    }
    Ok(())
}

#[allow(dead_code)]
fn check_length(value: Option<&str>, name: &str, max: usize, ctx: &RequestContext) -> Result<(), Response> {
    if value.is_some_and(|v| v.chars().count() > max) {
        return Err(reject(StatusCode::BAD_REQUEST, ProblemCode::ParameterInvalid, "Invalid parameter", format!("query parameter `{name}` is longer than {max} characters"), ctx));
    }
    Ok(())
}

/// The most of a refused request body the server reads and throws away
/// before it answers, and how long it waits for it. A server that answers
/// while the client is still sending and then closes the connection leaves
/// unread bytes in its socket, so the kernel resets the connection, and the
/// client (or a proxy in front) can lose the answer it was about to read.
/// Up to this bound the answer is delivered and the connection stays usable.
const DISCARD_LIMIT: usize = 1 << 20;
const DISCARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn next_frame(body: &mut axum::body::Body) -> Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>> {
    std::future::poll_fn(|cx| http_body::Body::poll_frame(std::pin::Pin::new(&mut *body), cx)).await
}

/// Reads and drops what remains of a refused body, within the bounds above.
async fn discard(mut body: axum::body::Body) {
    let drain = async {
        let mut read = 0usize;
        while read <= DISCARD_LIMIT {
            match next_frame(&mut body).await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, bytes::Bytes::len),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIMEOUT, drain).await;
}

/// Reads, size-limits, parses and schema-validates a JSON body. Error
/// details name the field, never echo its value.
#[allow(dead_code)]
async fn json_body<T: DeserializeOwned>(parts: &Parts, body: axum::body::Body, schema: &str, limit: usize, ctx: &RequestContext) -> Result<T, Response> {
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        discard(body).await;
        return Err(reject(StatusCode::UNSUPPORTED_MEDIA_TYPE, ProblemCode::UnsupportedMediaType, "Unsupported media type", "send the body as `Content-Type: application/json`", ctx));
    }
    let too_large = || reject(StatusCode::PAYLOAD_TOO_LARGE, ProblemCode::PayloadTooLarge, "Payload too large", format!("the body exceeds {limit} bytes"), ctx);
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        discard(body).await;
        return Err(too_large());
    }
    let mut body = body;
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(frame) = next_frame(&mut body).await {
        let Ok(frame) = frame else { return Err(too_large()) };
        let Some(data) = frame.data_ref() else { continue };
        if bytes.len() + data.len() > limit {
            discard(body).await;
            return Err(too_large());
        }
        bytes.extend_from_slice(data);
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        reject(StatusCode::BAD_REQUEST, ProblemCode::RequestInvalid, "Invalid request body", format!("the body is not valid JSON (line {}, column {})", e.line(), e.column()), ctx)
    })?;
    if let Some(field) = crate::contract::forbidden_property(schema, &value) {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            ProblemCode::IdentityOverrideRejected,
            "Identity fields may not be set",
            format!("`{field}` comes from the stored identity and may not appear in the body"),
            ctx,
        ));
    }
    if let Err(violations) = crate::contract::validate_schema(schema, &value) {
        let detail = violations.iter().take(5).map(|v| format!("{}: {}", if v.pointer.is_empty() { "/" } else { &v.pointer }, v.message)).collect::<Vec<_>>().join("; ");
        return Err(reject(StatusCode::BAD_REQUEST, ProblemCode::RequestInvalid, "Invalid request body", detail, ctx));
    }
    serde_json::from_value(value).map_err(|_| reject(StatusCode::BAD_REQUEST, ProblemCode::RequestInvalid, "Invalid request body", format!("the body does not match `{schema}`"), ctx))
}

/// The client certificate (DER of the leaf) the server's TLS layer verified
/// against its trust anchors at the handshake; the listener inserts it into
/// the extensions of every request of that connection. The implementation
/// still judges whom it names.
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub std::sync::Arc<[u8]>);

#[allow(dead_code)]
fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn not_found(req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let ctx = RequestContext::from_parts(&parts);
    reject(StatusCode::NOT_FOUND, ProblemCode::NotFound, "Not found", "no such route", &ctx)
}

async fn method_not_allowed(req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let ctx = RequestContext::from_parts(&parts);
    reject(StatusCode::METHOD_NOT_ALLOWED, ProblemCode::MethodNotAllowed, "Method not allowed", format!("{} is not allowed on this route", parts.method), &ctx)
}
