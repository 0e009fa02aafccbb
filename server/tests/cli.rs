//! The server binary as an operator starts it: configuration refused before
//! anything is created, files owner-only, nothing falling back silently.
//! Each test runs the binary in its own directory with a clean environment.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fixture secrets (not real ones): 48 characters each.
const FIXTURE_SECRETS: [(&str, &str); 3] = [
    ("ONEPROTECT_ADMIN_JWT_SECRET", "fixture-admin-secret-not-real-000000000000000000"),
    ("ONEPROTECT_AGENT_RUNTIME_TOKEN_SECRET", "fixture-runtime-secret-not-real-0000000000000000"),
    ("ONEPROTECT_TOKEN_HASH_KEY", "fixture-hash-key-not-real-00000000000000000000000"),
];

fn server(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oneprotect-server"));
    c.current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = server(dir, args, env).output().expect("run the server binary");
    (
        out.status.code(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Starts `serve` and waits (at most 30 s) until it reports that it serves.
fn start(dir: &Path, env: &[(&str, &str)]) -> Child {
    let mut child = server(dir, &["serve", "--listen", "127.0.0.1:0"], env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        if line.contains("serving") || Instant::now() > deadline {
            break;
        }
    }
    child
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn outside_development_mode_a_missing_database_url_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out) = run(dir.path(), &["serve", "--listen", "0.0.0.0:0"], &FIXTURE_SECRETS);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("ONEPROTECT_DATABASE_URL"), "{out}");
    assert!(entries(dir.path()).is_empty(), "no file was created: {:?}", entries(dir.path()));
}

#[test]
fn an_unknown_oneprotect_variable_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out) = run(dir.path(), &["serve"], &[("ONEPROTECT_LISTEN_ADDRESS", "127.0.0.1:9999")]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("ONEPROTECT_LISTEN_ADDRESS"), "{out}");
    assert!(entries(dir.path()).is_empty());
    // Every variable the binary documents is known: none of them is refused.
    let (_, out) = run(
        dir.path(),
        &["migrate"],
        &[("ONEPROTECT_DATABASE_URL_FILE", "/nonexistent"), ("ONEPROTECT_LOG", "info")],
    );
    assert!(!out.contains("unknown configuration variable"), "known variables are accepted: {out}");
    assert!(out.contains("cannot read /nonexistent"), "the URL file is read and its failure named: {out}");
}

#[test]
fn an_address_in_use_refuses_the_start_before_any_file_is_created() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out) = run(dir.path(), &["serve", "--listen", &addr], &[]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("cannot listen"), "{out}");
    assert!(
        entries(dir.path()).is_empty(),
        "no database and no development secrets: {:?}",
        entries(dir.path())
    );
}

#[test]
fn the_database_url_can_come_from_a_file_and_names_the_store_in_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("db-url"), "sqlite:from-file.db\n").expect("write");
    let url_file = dir.path().join("db-url").to_string_lossy().into_owned();
    let mut env = FIXTURE_SECRETS.to_vec();
    env.push(("ONEPROTECT_DATABASE_URL_FILE", &url_file));
    let child = start(dir.path(), &env);
    stop(child);
    assert!(
        dir.path().join("from-file.db").exists(),
        "the store is the file's URL: {:?}",
        entries(dir.path())
    );
    assert!(!dir.path().join("oneprotect.db").exists(), "no default database next to it");
}

#[cfg(unix)]
#[test]
fn development_secrets_live_in_an_owner_only_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let child = start(dir.path(), &[]);
    stop(child);
    let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join(".oneprotect-dev")), 0o700);
    assert_eq!(mode(&dir.path().join(".oneprotect-dev/secrets.json")), 0o600);
    assert_eq!(mode(&dir.path().join("oneprotect.db")), 0o600);
    // The development CA and server certificate: keys owner-only.
    assert_eq!(mode(&dir.path().join(".oneprotect-dev/ca.key")), 0o600);
    assert_eq!(mode(&dir.path().join(".oneprotect-dev/server.key")), 0o600);
}

/// A fixture CA in `dir` (PEM, PKCS#8) made with the `openssl` tool.
fn openssl_ca(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
        ])
        .args(["-subj", "/CN=OneProtect cli test CA (fixture)"])
        .args([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    (cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned())
}

#[cfg(unix)]
#[test]
fn the_agent_authentication_policy_and_the_ca_are_judged_before_anything_is_created() {
    use std::os::unix::fs::PermissionsExt;
    let files = tempfile::tempdir().expect("tempdir");
    let (ca_cert, ca_key) = openssl_ca(files.path());
    let with = |extra: &[(&'static str, &str)]| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = FIXTURE_SECRETS.to_vec();
        env.push(("ONEPROTECT_DATABASE_URL", "platform.db"));
        env.extend_from_slice(extra);
        let (code, out) = run(dir.path(), &["serve", "--listen", "127.0.0.1:0"], &env);
        assert!(entries(dir.path()).is_empty(), "nothing was created: {:?} ({out})", entries(dir.path()));
        (code, out)
    };
    let (code, out) = with(&[("ONEPROTECT_AGENT_AUTH", "mtls")]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("needs client certificates"), "{out}");
    let (code, out) = with(&[("ONEPROTECT_AGENT_AUTH", "tls")]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("mtls, mtls+bearer or bearer"), "{out}");
    let (code, out) = with(&[("ONEPROTECT_CA_CERT_FILE", &ca_cert)]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("must be given together"), "{out}");
    std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, out) = with(&[("ONEPROTECT_CA_CERT_FILE", &ca_cert), ("ONEPROTECT_CA_KEY_FILE", &ca_key)]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("readable by other users"), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "no key material in the error: {out}");
}

#[test]
fn an_unreachable_database_is_named_by_its_address_and_the_reason() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("postgres://fixture-role:fixture-password-not-real@127.0.0.1:{port}/oneprotect");
    let mut env = FIXTURE_SECRETS.to_vec();
    env.push(("ONEPROTECT_DATABASE_URL", &url));
    let (code, out) = run(dir.path(), &["serve", "--listen", "127.0.0.1:0"], &env);
    assert_eq!(code, Some(1), "an unreachable database is a runtime failure: {out}");
    assert!(
        out.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}: connection refused")),
        "{out}"
    );
    assert!(!out.contains("fixture-password-not-real"), "the URL's password is never printed: {out}");
    assert!(entries(dir.path()).is_empty(), "nothing was created: {:?}", entries(dir.path()));
}

/// Runs `sql` as the test superuser (`ONEPROTECT_TEST_POSTGRES_URL`).
fn as_superuser(sql: &str) {
    use sqlx::Executor;
    let admin = std::env::var("ONEPROTECT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .expect("PostgreSQL must be reachable for this test");
        conn.execute(sqlx::AssertSqlSafe(sql.to_owned())).await.expect(sql);
    });
}

#[test]
fn a_privileged_database_role_is_a_configuration_error_that_names_the_fix() {
    let name = format!("op_cli_{}", std::process::id());
    as_superuser(&format!("CREATE DATABASE {name}"));
    let admin = std::env::var("ONEPROTECT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = format!("{}/{name}", admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = FIXTURE_SECRETS.to_vec();
    env.push(("ONEPROTECT_DATABASE_URL", &url));
    let (code, out) = run(dir.path(), &["serve", "--listen", "127.0.0.1:0"], &env);
    as_superuser(&format!("DROP DATABASE {name} WITH (FORCE)"));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("superuser") && out.contains("CREATE ROLE") && out.contains("migrate --app-role"),
        "{out}"
    );
}

#[test]
fn an_unusable_nats_credentials_or_ca_file_refuses_the_start_before_anything_is_created() {
    for (variable, value) in [
        ("ONEPROTECT_NATS_CREDENTIALS_FILE", "/nonexistent/relay.creds"),
        ("ONEPROTECT_NATS_CA_FILE", "/nonexistent/nats-ca.pem"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (code, out) = run(
            dir.path(),
            &["serve", "--listen", "127.0.0.1:0"],
            &[("ONEPROTECT_NATS_URL", "nats://127.0.0.1:1"), (variable, value)],
        );
        assert_eq!(code, Some(2), "{variable}: {out}");
        assert!(out.contains("/nonexistent/"), "the file is named: {out}");
        assert!(entries(dir.path()).is_empty(), "nothing was created: {:?}", entries(dir.path()));
    }
}
