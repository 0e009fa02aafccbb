//! `oneprotect-server`: serve the platform, run migrations, mint
//! development admin tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use oneprotect_server::admin_auth::{AdminClaims, ROLE_ADMIN, ROLE_VIEWER, mint_hs256};
use oneprotect_server::clock::SystemClock;
use oneprotect_server::config::{self, AdminKeySource, DatabaseUrl, DevSecrets, SecretInputs};
use oneprotect_server::pki::{CaFiles, PlatformCa};
use oneprotect_server::relay::RelayConfig;
use oneprotect_server::service::{AgentAuth, Policy};
use oneprotect_server::tls::TlsFiles;

/// Many small, short-lived allocations per request (JSON values, events,
/// audit records) across worker and writer threads: mimalloc's per-thread
/// free lists keep them off a shared lock (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "oneprotect-server",
    version,
    about = "The OneProtect platform: agent enrollment, identity-bound heartbeat, audit and events"
)]
#[command(after_help = "Secrets are read from the environment (or NAME_FILE), never from flags:\n  \
  ONEPROTECT_ADMIN_JWT_SECRET | ONEPROTECT_ADMIN_JWT_PUBLIC_KEY_FILE | ONEPROTECT_ADMIN_JWKS_FILE\n  \
  ONEPROTECT_TOKEN_HASH_KEY, ONEPROTECT_AGENT_RUNTIME_TOKEN_SECRET, ONEPROTECT_AGENT_RUNTIME_TOKEN_PREVIOUS_SECRETS\n\
Exit codes: 0 clean shutdown, 1 runtime failure, 2 configuration error.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API until SIGINT/SIGTERM.
    Serve(Box<ServeArgs>),
    /// Apply database migrations (and grant the application role on PostgreSQL).
    Migrate(MigrateArgs),
    /// Print a tenant-admin JWT signed with the HS256 admin secret (development).
    AdminToken(AdminTokenArgs),
}

#[derive(Args)]
struct CommonArgs {
    /// `postgres://…` selects PostgreSQL; anything else is an SQLite file.
    /// Also read from the file ONEPROTECT_DATABASE_URL_FILE names. Outside
    /// development mode it is required (no silent ./oneprotect.db).
    #[arg(long, env = "ONEPROTECT_DATABASE_URL")]
    database_url: Option<String>,
    /// Expected `iss` of admin tokens.
    #[arg(long, env = "ONEPROTECT_ADMIN_JWT_ISSUER", default_value = config::DEFAULT_ISSUER)]
    admin_jwt_issuer: String,
    /// Expected `aud` of admin tokens.
    #[arg(long, env = "ONEPROTECT_ADMIN_JWT_AUDIENCE", default_value = config::DEFAULT_AUDIENCE)]
    admin_jwt_audience: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to listen on.
    #[arg(long, env = "ONEPROTECT_LISTEN", default_value = config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Owner connection used to apply PostgreSQL migrations at start.
    #[arg(long, env = "ONEPROTECT_MIGRATION_DATABASE_URL")]
    migration_database_url: Option<String>,
    /// Development mode: generate and keep secrets in .oneprotect-dev/ and
    /// print an admin token. Implied when no secret is configured and the
    /// listen address is loopback. Never use it in production.
    #[arg(long, env = "ONEPROTECT_DEV")]
    dev: bool,
    #[arg(long, env = "ONEPROTECT_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Lifetime of runtime tokens, in seconds (300 to 604800).
    #[arg(long, env = "ONEPROTECT_RUNTIME_TOKEN_TTL_SECONDS", default_value_t = 86_400, value_parser = clap::value_parser!(i64).range(300..=604_800))]
    runtime_token_ttl_seconds: i64,
    /// Silence after which an identity turns stale, in seconds.
    #[arg(long, env = "ONEPROTECT_STALE_AFTER_SECONDS", default_value_t = 604_800, value_parser = clap::value_parser!(i64).range(60..))]
    stale_after_seconds: i64,
    /// Failed enrollment exchanges allowed per source address (and per token
    /// id from one source) in each window; then 429 with Retry-After.
    #[arg(long, env = "ONEPROTECT_EXCHANGE_FAILURE_LIMIT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    exchange_failure_limit: u32,
    /// The window of that limit, in seconds.
    #[arg(long, env = "ONEPROTECT_EXCHANGE_FAILURE_WINDOW_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(i64).range(1..=86_400))]
    exchange_failure_window_seconds: i64,
    /// Proxies (addresses or CIDR blocks, comma-separated) whose
    /// `X-Forwarded-For` names the client; by default none is trusted and
    /// the TCP peer is the source.
    #[arg(long, env = "ONEPROTECT_TRUSTED_PROXIES", default_value = "")]
    trusted_proxies: String,
    /// Connections open at once; more are closed on accept (and logged).
    #[arg(long, env = "ONEPROTECT_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Connections open at once from one source address.
    #[arg(long, env = "ONEPROTECT_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections_per_source: u32,
    /// Seconds a request head may take to arrive whole.
    #[arg(long, env = "ONEPROTECT_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    header_read_timeout_seconds: u64,
    /// Seconds a connection may stay silent before it is closed.
    #[arg(long, env = "ONEPROTECT_IDLE_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_timeout_seconds: u64,
    /// The issuing CA's certificate (PEM; the chain up to an offline root
    /// may follow it). Development mode generates one in .oneprotect-dev/.
    #[arg(long, env = "ONEPROTECT_CA_CERT_FILE")]
    ca_cert_file: Option<PathBuf>,
    /// The issuing CA's private key (PKCS#8 PEM, not readable by others).
    #[arg(long, env = "ONEPROTECT_CA_KEY_FILE")]
    ca_key_file: Option<PathBuf>,
    /// Earlier CA certificates (PEM) still trusted for verifying agent
    /// certificates, so a CA rotation does not re-enroll the fleet.
    #[arg(long, env = "ONEPROTECT_CA_PREVIOUS_CERTS_FILE")]
    ca_previous_certs_file: Option<PathBuf>,
    /// The SPIFFE trust domain of agent certificates.
    #[arg(long, env = "ONEPROTECT_TRUST_DOMAIN", default_value = oneprotect_server::pki::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// The server's TLS certificate chain (PEM). With it `serve` speaks
    /// HTTPS and requests (never requires) client certificates, verified
    /// against the platform CA. Development mode uses a localhost
    /// certificate from the development CA.
    #[arg(long, env = "ONEPROTECT_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// The key of that certificate (PEM).
    #[arg(long, env = "ONEPROTECT_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// How agent calls authenticate: `mtls` (the client certificate; the
    /// default when the server speaks TLS), `mtls+bearer` (both, bound to
    /// the same certificate) or `bearer` (the runtime token alone: the
    /// runtime-lite compatibility path, the default without TLS).
    #[arg(long, env = "ONEPROTECT_AGENT_AUTH", value_parser = parse_agent_auth)]
    agent_auth: Option<AgentAuth>,
    /// Behind a TLS-terminating proxy: the header in which it forwards the
    /// client certificate (nginx `$ssl_client_escaped_cert`, Envoy
    /// `x-forwarded-client-cert`). Read only from ONEPROTECT_TRUSTED_PROXIES
    /// and verified by the server itself.
    #[arg(long, env = "ONEPROTECT_CLIENT_CERT_HEADER")]
    client_cert_header: Option<String>,
    /// Lifetime of agent certificates, in hours (1 to 9528, i.e. 397 days).
    /// NATS server(s) the event relay publishes to (`nats://host:4222`,
    /// `tls://…`, comma-separated for a cluster). Without it the relay is
    /// off and events stay in the outbox (the events API still pages them).
    #[arg(long, env = "ONEPROTECT_NATS_URL")]
    nats_url: Option<String>,
    /// A NATS credentials file (user JWT and NKey seed).
    #[arg(long, env = "ONEPROTECT_NATS_CREDENTIALS_FILE")]
    nats_credentials_file: Option<std::path::PathBuf>,
    /// PEM roots that verify the NATS server's certificate (TLS required).
    #[arg(long, env = "ONEPROTECT_NATS_CA_FILE")]
    nats_ca_file: Option<std::path::PathBuf>,
    /// The JetStream stream created or verified at start.
    #[arg(long, env = "ONEPROTECT_EVENTS_STREAM", default_value = oneprotect_server::relay::DEFAULT_STREAM)]
    events_stream: String,
    /// How long the stream keeps events (its max_age), in hours.
    #[arg(long, env = "ONEPROTECT_EVENTS_MAX_AGE_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=87_600))]
    events_max_age_hours: u64,
    /// The broker's de-duplication window by event id, in seconds: a
    /// relay restarted within it re-sends nothing twice.
    #[arg(long, env = "ONEPROTECT_EVENTS_DUPLICATE_WINDOW_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    events_duplicate_window_seconds: u64,
    /// How long outbox events are kept once published (with the relay off:
    /// once committed), in hours.
    #[arg(long, env = "ONEPROTECT_OUTBOX_RETENTION_HOURS", default_value_t = 168, value_parser = clap::value_parser!(i64).range(1..=87_600))]
    outbox_retention_hours: i64,
    /// How long audit records are kept, in days.
    #[arg(long, env = "ONEPROTECT_AUDIT_RETENTION_DAYS", default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=36_500))]
    audit_retention_days: i64,
    /// How long an enrollment token is kept after it expired, was revoked
    /// or was used up, in days.
    #[arg(long, env = "ONEPROTECT_TOKEN_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..=36_500))]
    token_retention_days: i64,
    /// Seconds between pruning runs.
    #[arg(long, env = "ONEPROTECT_PRUNE_INTERVAL_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    prune_interval_seconds: u64,
    #[arg(long, env = "ONEPROTECT_CERTIFICATE_LIFETIME_HOURS", default_value_t = 720, value_parser = clap::value_parser!(i64).range(1..=9528))]
    certificate_lifetime_hours: i64,
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// PostgreSQL: the (existing) unprivileged role the server connects as;
    /// it is granted exactly what the application needs.
    #[arg(long)]
    app_role: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Admin,
    Viewer,
}

#[derive(Args)]
struct AdminTokenArgs {
    #[arg(long, default_value = "tenant-dev")]
    tenant: String,
    #[arg(long, default_value = "admin@localhost")]
    subject: String,
    #[arg(long, value_enum, default_value = "admin")]
    role: Role,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_seconds: i64,
    #[arg(long, env = "ONEPROTECT_ADMIN_JWT_ISSUER", default_value = config::DEFAULT_ISSUER)]
    admin_jwt_issuer: String,
    #[arg(long, env = "ONEPROTECT_ADMIN_JWT_AUDIENCE", default_value = config::DEFAULT_AUDIENCE)]
    admin_jwt_audience: String,
}

fn parse_agent_auth(s: &str) -> Result<AgentAuth, String> {
    AgentAuth::parse(s).ok_or_else(|| "expected mtls, mtls+bearer or bearer".to_owned())
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ONEPROTECT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn mint(
    secret: &[u8],
    tenant: &str,
    subject: &str,
    role: Role,
    ttl: i64,
    issuer: &str,
    audience: &str,
) -> Result<String, String> {
    let claims = AdminClaims {
        sub: subject.to_owned(),
        tenant_id: tenant.to_owned(),
        roles: vec![
            match role {
                Role::Admin => ROLE_ADMIN,
                Role::Viewer => ROLE_VIEWER,
            }
            .to_owned(),
        ],
        exp: chrono::Utc::now().timestamp() + ttl,
        iss: issuer.to_owned(),
        aud: audience.to_owned(),
        nbf: None,
    };
    mint_hs256(secret, &claims)
}

/// Every `ONEPROTECT_*` variable a command-line definition reads.
fn cli_variables() -> Vec<String> {
    fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
        out.extend(cmd.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()));
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = Vec::new();
    walk(&<Cli as clap::CommandFactory>::command(), &mut out);
    out
}

async fn serve(args: ServeArgs) -> ExitCode {
    init_logs(args.log_format);
    // Configuration that can refuse the start is judged before any file or row is created.
    let trusted_proxies = match oneprotect_server::source::TrustedProxies::parse(&args.trusted_proxies) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: ONEPROTECT_TRUSTED_PROXIES: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut secrets = match SecretInputs::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let dev = args.dev || (secrets.is_empty() && config::is_loopback(&args.listen));
    if secrets.is_empty() && !dev {
        eprintln!(
            "error: no secrets configured and {} is not a loopback address; set the ONEPROTECT_* secrets (see --help) or pass --dev",
            args.listen
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let ca = match (&args.ca_cert_file, &args.ca_key_file) {
        (Some(cert), Some(key)) => {
            let files = CaFiles {
                cert: cert.clone(),
                key: key.clone(),
                previous: args.ca_previous_certs_file.clone(),
            };
            Some(PlatformCa::load(&files, &args.trust_domain, chrono::Utc::now()))
        }
        // Created with the development secrets, once the store is open.
        (None, None) => None,
        _ => {
            Some(Err("ONEPROTECT_CA_CERT_FILE and ONEPROTECT_CA_KEY_FILE must be given together".to_owned()))
        }
    };
    let ca = match ca.transpose() {
        Ok(ca) => ca.map(Arc::new),
        Err(e) => {
            eprintln!("error: the platform CA: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let tls_files = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert: cert.clone(), key: key.clone() }),
        (None, None) => None,
        _ => {
            eprintln!("error: ONEPROTECT_TLS_CERT_FILE and ONEPROTECT_TLS_KEY_FILE must be given together");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let client_cert_header = args.client_cert_header.as_deref().map(str::to_ascii_lowercase);
    if let Some(h) = &client_cert_header
        && (h.is_empty()
            || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || trusted_proxies.is_empty())
    {
        eprintln!(
            "error: ONEPROTECT_CLIENT_CERT_HEADER must be a header name, and needs ONEPROTECT_TRUSTED_PROXIES (the proxies allowed to set it)"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let serves_tls = tls_files.is_some() || dev || client_cert_header.is_some();
    let agent_auth = args.agent_auth.unwrap_or(if serves_tls { AgentAuth::Mtls } else { AgentAuth::Bearer });
    if agent_auth.needs_certificate() && !serves_tls {
        eprintln!(
            "error: ONEPROTECT_AGENT_AUTH={} needs client certificates: set ONEPROTECT_TLS_CERT_FILE and ONEPROTECT_TLS_KEY_FILE (or ONEPROTECT_CLIENT_CERT_HEADER behind a TLS-terminating proxy), or use bearer",
            agent_auth.as_str()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    // The broker is not waited for (the client keeps connecting), but a
    // credentials or CA file that cannot be used refuses the start.
    let events_relay = match &args.nats_url {
        Some(url) => {
            let config = RelayConfig {
                credentials_file: args.nats_credentials_file.clone(),
                ca_file: args.nats_ca_file.clone(),
                stream: args.events_stream.clone(),
                max_age: std::time::Duration::from_secs(args.events_max_age_hours * 3600),
                duplicate_window: std::time::Duration::from_secs(args.events_duplicate_window_seconds),
                ..RelayConfig::new(url)
            };
            match oneprotect_server::relay::connect(&config).await {
                Ok(client) => Some((config, client)),
                Err(e) => {
                    eprintln!("error: ONEPROTECT_NATS_URL: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
        None => None,
    };
    let url = match config::database_url(args.common.database_url.as_deref(), dev)
        .and_then(|u| DatabaseUrl::parse(Some(&u)))
    {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: ONEPROTECT_DATABASE_URL: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The address is taken, and the store reached, before any file is created.
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let store = match oneprotect_server::app::open_store(&url, args.migration_database_url.as_deref()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot open the store ({}): {e}", url.describe());
            let misconfigured =
                matches!(e.downcast_ref(), Some(oneprotect_server::store::StoreError::Misconfigured(_)));
            return ExitCode::from(if misconfigured { EXIT_CONFIG } else { EXIT_RUNTIME });
        }
    };
    let mut dev_admin_token = None;
    if dev {
        let dev_secrets = match DevSecrets::load_or_create(std::path::Path::new(config::DEV_SECRETS_FILE)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: development secrets: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        secrets
            .admin_key
            .get_or_insert(AdminKeySource::Hs256Secret(dev_secrets.admin_jwt_secret.clone().into_bytes()));
        secrets.token_hash_key.get_or_insert(dev_secrets.token_hash_key.into_bytes());
        secrets.runtime_secret.get_or_insert(dev_secrets.runtime_token_secret.into_bytes());
        if let Some(AdminKeySource::Hs256Secret(s)) = &secrets.admin_key {
            dev_admin_token = mint(
                s,
                "tenant-dev",
                "admin@localhost",
                Role::Admin,
                12 * 3600,
                &args.common.admin_jwt_issuer,
                &args.common.admin_jwt_audience,
            )
            .ok();
        }
    }

    let ca = match ca {
        None if dev => match PlatformCa::development(
            std::path::Path::new(config::DEV_DIR),
            &args.trust_domain,
            chrono::Utc::now(),
        ) {
            Ok(ca) => Some(Arc::new(ca)),
            Err(e) => {
                eprintln!("error: the development CA: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        other => other,
    };
    if ca.is_none() {
        tracing::warn!(
            "no platform CA is configured (ONEPROTECT_CA_CERT_FILE, ONEPROTECT_CA_KEY_FILE): enrollment exchange and certificate rotation will fail closed with 503 certificate_authority_unavailable"
        );
    }
    let tls_files = match (tls_files, &ca) {
        (Some(files), _) => Some(files),
        (None, Some(ca)) if dev => {
            match oneprotect_server::tls::development_server_files(
                std::path::Path::new(config::DEV_DIR),
                ca,
                chrono::Utc::now(),
            ) {
                Ok(files) => Some(files),
                Err(e) => {
                    eprintln!("error: the development server certificate: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
        (None, _) => None,
    };
    let tls = match tls_files
        .as_ref()
        .map(|f| oneprotect_server::tls::server_config(f, ca.as_deref(), Arc::new(SystemClock)))
        .transpose()
    {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: TLS: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if agent_auth.needs_certificate() && ca.is_none() {
        eprintln!(
            "error: ONEPROTECT_AGENT_AUTH={} needs the platform CA (ONEPROTECT_CA_CERT_FILE, ONEPROTECT_CA_KEY_FILE)",
            agent_auth.as_str()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let policy = Policy {
        agent_auth,
        client_certificate_header: client_cert_header,
        certificate_validity: chrono::Duration::hours(args.certificate_lifetime_hours),
        runtime_token_ttl: chrono::Duration::seconds(args.runtime_token_ttl_seconds),
        stale_after: chrono::Duration::seconds(args.stale_after_seconds),
        failure_limit: args.exchange_failure_limit,
        failure_window: chrono::Duration::seconds(args.exchange_failure_window_seconds),
        trusted_proxies,
        ..Policy::default()
    };
    let platform = match oneprotect_server::app::platform(
        store,
        Arc::new(SystemClock),
        secrets,
        &args.common.admin_jwt_issuer,
        &args.common.admin_jwt_audience,
        policy,
    ) {
        Ok(p) => Arc::new(match ca {
            Some(ca) => p.with_ca(ca),
            None => p,
        }),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (stop_relay, relay_stopped) = tokio::sync::watch::channel(false);
    let retention = oneprotect_server::retention::Retention {
        outbox: chrono::Duration::hours(args.outbox_retention_hours),
        audit: chrono::Duration::days(args.audit_retention_days),
        tokens: chrono::Duration::days(args.token_retention_days),
        max_token_ttl: platform.policy().max_enrollment_token_ttl,
        failure_window: platform.policy().failure_window,
        relay: events_relay.is_some(),
    };
    let pruner = tokio::spawn(oneprotect_server::retention::run(
        platform.store().clone(),
        platform.clock().clone(),
        retention,
        std::time::Duration::from_secs(args.prune_interval_seconds),
        relay_stopped.clone(),
    ));
    let relay = events_relay.map(|(config, client)| {
        tokio::spawn(oneprotect_server::relay::start(
            config,
            client,
            platform.store().clone(),
            platform.clock().clone(),
            platform.metrics().clone(),
            relay_stopped,
        ))
    });
    let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    if dev {
        eprintln!("\n*** DEVELOPMENT MODE — NOT FOR PRODUCTION ***");
        eprintln!("Secrets were generated and are kept in {} (mode 0600).", config::DEV_SECRETS_FILE);
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!("Store: {}. Listening on {scheme}://{bound}", url.describe());
        eprintln!(
            "The development CA is {}/{} (pass it to curl --cacert and to the agent's ca_bundle); agent calls authenticate by {}.",
            config::DEV_DIR,
            oneprotect_server::pki::DEV_CA_CERT_FILE,
            agent_auth.as_str()
        );
        if let Some(token) = dev_admin_token {
            eprintln!("Tenant-admin token for tenant-dev (12 h):\n");
            println!("{token}");
            eprintln!();
        }
    }
    tracing::info!(listen = %bound, store = %url.describe(), tls = tls.is_some(), agent_auth = agent_auth.as_str(), events_relay = args.nats_url.is_some(), "serving");
    let limits = oneprotect_server::listen::Limits {
        max_connections: args.max_connections as usize,
        max_per_source: args.max_connections_per_source as usize,
        header_read_timeout: std::time::Duration::from_secs(args.header_read_timeout_seconds),
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout_seconds),
    };
    let served = oneprotect_server::app::serve(listener, platform, limits, tls).await;
    // The relay finishes its round (a claim is marked or left for the next start).
    let _ = stop_relay.send(true);
    if let Some(relay) = relay {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), relay).await;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), pruner).await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

async fn migrate(args: MigrateArgs) -> ExitCode {
    match config::database_url(args.common.database_url.as_deref(), false)
        .and_then(|u| DatabaseUrl::parse(Some(&u)))
    {
        Ok(DatabaseUrl::Sqlite(path)) => {
            match oneprotect_server::store::sqlite::SqliteStore::migrate_file(&path) {
                Ok(n) => {
                    println!("{}: migrations current ({n} applied now)", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Ok(DatabaseUrl::Postgres(url)) => {
            match oneprotect_server::store::postgres::migrate(&url, args.app_role.as_deref()).await {
                Ok(n) => {
                    println!(
                        "postgres: migrations current ({n} applied now){}",
                        args.app_role.map(|r| format!("; granted {r}")).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn admin_token(args: AdminTokenArgs) -> ExitCode {
    let secret = match config::env_secret("ONEPROTECT_ADMIN_JWT_SECRET") {
        Ok(Some(s)) => s,
        Ok(None) => match std::fs::read_to_string(PathBuf::from(config::DEV_SECRETS_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<DevSecrets>(&t).ok())
        {
            Some(dev) => dev.admin_jwt_secret.into_bytes(),
            None => {
                eprintln!(
                    "error: set ONEPROTECT_ADMIN_JWT_SECRET (or run `serve --dev` once in this directory)"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match mint(
        &secret,
        &args.tenant,
        &args.subject,
        args.role,
        args.ttl_seconds,
        &args.admin_jwt_issuer,
        &args.admin_jwt_audience,
    ) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // A misspelled variable would fall back to a default without a word.
    let unknown = config::unknown_variables(std::env::vars().map(|(k, _)| k), &cli_variables());
    if !unknown.is_empty() {
        eprintln!(
            "error: unknown configuration variable(s) {}; `oneprotect-server <command> --help` lists what each command reads",
            unknown.join(", ")
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    match cli.command {
        Command::Serve(a) => serve(*a).await,
        Command::Migrate(a) => migrate(a).await,
        Command::AdminToken(a) => admin_token(a),
    }
}
