//! Assembles the platform from configuration and serves it.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

use crate::admin_auth::AdminVerifier;
use crate::clock::Clock;
use crate::config::{AdminKeySource, DatabaseUrl, SecretInputs};
use crate::http::HttpApi;
use crate::runtime_token::RuntimeKeyring;
use crate::secrets::HashKey;
use crate::service::{Platform, Policy};
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;

/// Opens the configured store and applies migrations where this process
/// may (always on SQLite; on PostgreSQL only with a migration URL).
pub async fn open_store(url: &DatabaseUrl, migration_url: Option<&str>) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match url {
        DatabaseUrl::Sqlite(path) => {
            let path = path.clone();
            Arc::new(tokio::task::spawn_blocking(move || SqliteStore::open(&path)).await??)
        }
        DatabaseUrl::Postgres(url) => {
            if let Some(owner) = migration_url {
                crate::store::postgres::migrate(owner, None).await?;
            }
            let store = PgStore::connect(url).await?;
            store.ensure_unprivileged().await?;
            Arc::new(store)
        }
    })
}

pub fn admin_verifier(
    source: &AdminKeySource,
    issuer: &str,
    audience: &str,
) -> anyhow::Result<AdminVerifier> {
    let v = match source {
        AdminKeySource::Hs256Secret(s) => AdminVerifier::hs256(s, issuer, audience),
        AdminKeySource::PublicKeyPem(p) => {
            AdminVerifier::public_key_pem(&std::fs::read(p)?, issuer, audience)
        }
        AdminKeySource::Jwks(p) => AdminVerifier::jwks(&std::fs::read(p)?, issuer, audience),
    };
    v.map_err(anyhow::Error::msg)
}

/// Builds the platform from secrets. A missing runtime secret is allowed:
/// exchange and heartbeat then fail closed with 503.
pub fn platform(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    secrets: SecretInputs,
    issuer: &str,
    audience: &str,
    policy: Policy,
) -> anyhow::Result<Platform> {
    let admin = secrets.admin_key.as_ref().ok_or_else(|| {
        anyhow::anyhow!("no admin JWT key: set ONEPROTECT_ADMIN_JWT_SECRET, ONEPROTECT_ADMIN_JWT_PUBLIC_KEY_FILE or ONEPROTECT_ADMIN_JWKS_FILE")
    })?;
    let admin = admin_verifier(admin, issuer, audience)?;
    let hash_key = secrets.token_hash_key.ok_or_else(|| {
        anyhow::anyhow!("ONEPROTECT_TOKEN_HASH_KEY is required (the key of the enrollment token hashes)")
    })?;
    let hash_key = HashKey::new(hash_key).map_err(anyhow::Error::msg)?;
    let runtime =
        RuntimeKeyring::new(secrets.runtime_secret, secrets.runtime_previous).map_err(anyhow::Error::msg)?;
    if !runtime.is_available() {
        tracing::warn!(
            "ONEPROTECT_AGENT_RUNTIME_TOKEN_SECRET is not set: enrollment exchange and heartbeats will fail closed with 503 runtime_secret_unavailable"
        );
    }
    Ok(Platform::new(store, clock, hash_key, runtime, admin, policy))
}

/// Logs one line per request (operation route, status, latency, request
/// id; never headers, bodies or query strings) and records its latency.
async fn access_log(
    axum::extract::State(platform): axum::extract::State<Arc<Platform>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let response = next.run(req).await;
    let request_id = response
        .headers()
        .get(oneprotect_contracts::server::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let seconds = started.elapsed().as_secs_f64();
    platform.observe_request(route, method.as_str(), response.status().as_u16(), seconds);
    tracing::info!(%method, route, status = response.status().as_u16(), latency_ms = seconds * 1000.0, request_id, "request");
    response
}

pub fn router(platform: Arc<Platform>) -> axum::Router {
    oneprotect_contracts::server::router(Arc::new(HttpApi::new(platform.clone())))
        .layer(axum::middleware::from_fn_with_state(platform.clone(), forwarded_client_certificate))
        .layer(axum::middleware::from_fn_with_state(platform, access_log))
}

/// A client certificate a trusted TLS-terminating proxy forwarded in the
/// configured header becomes the request's `ClientCertificate` — a claim
/// the platform verifies in full, as one from its own handshake. From any
/// other peer the header is dropped unread; a certificate from the
/// server's own handshake always wins.
async fn forwarded_client_certificate(
    axum::extract::State(platform): axum::extract::State<Arc<Platform>>,
    mut req: Request,
    next: Next,
) -> Response {
    use oneprotect_contracts::server::ClientCertificate;
    if let Some(name) = &platform.policy().client_certificate_header
        && let Some(value) = req.headers_mut().remove(name.as_str())
    {
        let peer =
            req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        let trusted = peer.is_some_and(|ip| platform.policy().trusted_proxies.contains(ip));
        if trusted && req.extensions().get::<ClientCertificate>().is_none() {
            match value.to_str().ok().and_then(crate::tls::forwarded_certificate) {
                Some(der) => {
                    req.extensions_mut().insert(ClientCertificate(Arc::from(der)));
                }
                None => tracing::info!("the forwarded client certificate header holds no certificate"),
            }
        }
    }
    next.run(req).await
}

/// Serves until SIGINT or SIGTERM, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    platform: Arc<Platform>,
    limits: crate::listen::Limits,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) -> anyhow::Result<()> {
    crate::listen::serve(listener, router(platform), limits, tls, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining requests");
}
