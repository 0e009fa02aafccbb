//! The reviewer's first minute: a run that cannot work says why in one
//! line and exits 2, before any check runs.

use std::process::{Command, Stdio};
use std::sync::Arc;

use oneprotect_conformance::{Tenant, local};

struct Run {
    code: Option<i32>,
    stderr: String,
    stdout: String,
}

async fn conformance(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_oneprotect-conformance"))
            .args(&args)
            .env_remove("ONEPROTECT_CONFORMANCE_BASE_URL")
            .env_remove("ONEPROTECT_CONFORMANCE_ADMIN_TOKEN_A")
            .env_remove("ONEPROTECT_CONFORMANCE_ADMIN_TOKEN_B")
            .stdin(Stdio::null())
            .output()
            .expect("run oneprotect-conformance");
        Run {
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    })
    .await
    .expect("join")
}

fn http_args(base: &str, a: &str, b: &str) -> Vec<String> {
    ["run", "--target", "http", "--base-url", base, "--admin-token-a", a, "--admin-token-b", b]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// Exit 2, one line on stderr that names the cause, nothing on stdout.
fn assert_one_line_refusal(run: &Run, cause: &str) {
    assert_eq!(run.code, Some(2), "stderr: {}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "exactly one line: {}", run.stderr);
    assert!(run.stderr.contains(cause), "names the cause ({cause}): {}", run.stderr);
    assert!(run.stdout.is_empty(), "no report: {}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_tenant_given_as_a_and_b_is_refused_before_any_check() {
    let platform = local::start(None, None).await.expect("local platform");
    let a = platform.ctx.admin(Tenant::A).to_owned();
    let run = conformance(http_args(&platform.ctx.base, &a, &a)).await;
    assert_one_line_refusal(&run, "credentials A and B are of the same tenant (tenant-a)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_is_named_before_any_check() {
    let platform = local::start(None, None).await.expect("local platform");
    let b = platform.ctx.admin(Tenant::B).to_owned();
    let forged = oneprotect_server::admin_auth::mint_hs256(
        b"fixture-key-that-this-deployment-does-not-use-000",
        &oneprotect_server::admin_auth::AdminClaims {
            sub: "fixture@conformance".into(),
            tenant_id: "tenant-a".into(),
            roles: vec!["tenant_admin".into()],
            exp: chrono::Utc::now().timestamp() + 3600,
            iss: "oneprotect-conformance".into(),
            aud: "oneprotect-api".into(),
            nbf: None,
        },
    )
    .expect("mint");
    let run = conformance(http_args(&platform.ctx.base, &forged, &b)).await;
    assert_one_line_refusal(&run, "credential A was refused (401)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_with_no_server_is_connection_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let run = conformance(http_args(&format!("http://127.0.0.1:{port}"), "a", "b")).await;
    assert_one_line_refusal(&run, "connection refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_without_a_scheme_is_a_usage_error() {
    let run = conformance(http_args("127.0.0.1:8080", "a", "b")).await;
    assert_one_line_refusal(&run, "--base-url");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_ca_bundle_does_not_vouch_for_fails_verification() {
    // A TLS server on loopback whose self-signed certificate no bundle
    // trusts: the run must stop at the handshake.
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let run = conformance(http_args(&format!("https://127.0.0.1:{port}"), "a", "b")).await;
    server.abort();
    assert_one_line_refusal(&run, "certificate verification failed");
}

#[test]
fn listing_the_catalogue_into_a_closed_pipe_exits_cleanly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let status = Command::new(env!("CARGO_BIN_EXE_oneprotect-conformance"))
        .arg("list")
        .stdout(writer)
        .stderr(Stdio::null())
        .status()
        .expect("run list");
    assert_eq!(status.code(), Some(0), "no panic (101) when the reader is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_credential_and_a_base_url_that_is_not_the_api_root_are_named() {
    let platform = local::start(None, None).await.expect("local platform");
    let secret = platform.ctx.local.admin_secret.clone().expect("fixture secret");
    let viewer = oneprotect_conformance::faults::mint_admin(
        &platform.ctx,
        &secret,
        "tenant-a",
        "tenant_viewer",
        chrono::Utc::now() + chrono::Duration::hours(1),
    );
    let b = platform.ctx.admin(Tenant::B).to_owned();
    let run = conformance(http_args(&platform.ctx.base, &viewer, &b)).await;
    assert_one_line_refusal(&run, "credential A has roles [\"tenant_viewer\"]; the suite needs tenant_admin");
    let a = platform.ctx.admin(Tenant::A).to_owned();
    let run = conformance(http_args(&format!("{}/not-the-root", platform.ctx.base), &a, &b)).await;
    assert_one_line_refusal(&run, "has no /api/v1/agents (404)");
}
