//! The evidence bundle a reviewer attaches to an audit: no secret of the
//! run in any file, digests that catch a changed byte, a report that
//! validates against its published schema, and HTML that a real browser
//! renders from disk.

use std::path::{Path, PathBuf};

use oneprotect_conformance::checks::CATALOGUE;
use oneprotect_conformance::evidence::{self, RunFacts};
use oneprotect_conformance::report::Report;
use oneprotect_conformance::{Target, local, runner};

async fn bundle() -> (tempfile::TempDir, Vec<String>, Report) {
    let platform = local::start(None, None).await.expect("local platform");
    platform.ctx.record_exchanges();
    let checks = runner::selected(&CATALOGUE, Target::Local, &[]);
    let report = runner::run(&platform.ctx, Target::Local, &checks, false).await;
    assert!(report.passed(), "{}", report.human());
    let dir = tempfile::tempdir().expect("tempdir");
    let facts =
        RunFacts { target_url: Some(platform.ctx.base.clone()), tls_certificate_sha256: None, profile: None };
    evidence::write(&dir.path().join("bundle"), &report, &platform.ctx.secrets(), &facts)
        .expect("write the bundle");
    (dir, platform.ctx.secrets(), report)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(files(&path)) } else { out.push(path) }
    }
    out
}

fn report_schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../specs/conformance/report.schema.json"
    ))
    .expect("report schema");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::options().should_validate_formats(true).build(&schema).expect("a valid JSON Schema")
}

fn assert_valid_report(json: &str) {
    let value: serde_json::Value = serde_json::from_str(json).expect("report is JSON");
    let validator = report_schema();
    let errors: Vec<String> =
        validator.iter_errors(&value).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "the report does not match specs/conformance/report.schema.json: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_the_run_appears_anywhere_in_the_bundle_and_secrets_stay_correlatable() {
    let (dir, secrets, report) = bundle().await;
    let root = dir.path().join("bundle");
    let all = files(&root);
    assert!(all.len() > 30, "a transcript per check, reports and manifest: {}", all.len());
    let mut tags = std::collections::BTreeMap::<String, usize>::new();
    for path in &all {
        let text = std::fs::read_to_string(path).expect("bundle files are text");
        for s in secrets.iter().filter(|s| s.len() >= 16) {
            assert!(!text.contains(s.as_str()), "a secret ({} chars) appears in {}", s.len(), path.display());
        }
        for marker in ["BEGIN CERTIFICATE REQUEST", "PRIVATE KEY", "oprt.v1.k", "\"opet_"] {
            assert!(!text.contains(marker), "{marker} appears in {}", path.display());
        }
        for tag in text.split("<enrollment_token:").skip(1) {
            *tags.entry(tag.chars().take(12).collect()).or_default() += 1;
        }
    }
    assert!(
        tags.values().any(|n| *n >= 2),
        "one enrollment token's tag appears in its issue answer and its exchange"
    );
    let transcript = std::fs::read_to_string(root.join("transcripts/replay.nonce-reuse-rejected.json"))
        .expect("transcript");
    assert!(
        transcript.contains("<nonce:")
            && transcript.contains("<csr:")
            && transcript.contains("Bearer <admin_jwt:"),
        "secrets are labelled"
    );
    assert_eq!(report.transcripts.len(), report.results.len(), "every check has a transcript");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_accepts_the_bundle_and_names_a_changed_a_missing_and_an_unlisted_file() {
    let (dir, _, _) = bundle().await;
    let root = dir.path().join("bundle");
    assert_eq!(evidence::verify(&root).expect("verify"), Vec::<String>::new());
    let transcript = root.join("transcripts/replay.nonce-reuse-rejected.json");
    let mut bytes = std::fs::read(&transcript).expect("read");
    let last = bytes.len() - 2;
    bytes[last] ^= 0x01;
    std::fs::write(&transcript, bytes).expect("write");
    std::fs::remove_file(root.join("report.html")).expect("remove");
    std::fs::write(root.join("extra.txt"), "not from the run").expect("write");
    let problems = evidence::verify(&root).expect("verify");
    assert!(
        problems.contains(
            &"transcripts/replay.nonce-reuse-rejected.json: changed (its SHA-256 differs from the manifest)"
                .to_owned()
        ),
        "{problems:?}"
    );
    assert!(problems.contains(&"report.html: missing".to_owned()), "{problems:?}");
    assert!(problems.contains(&"extra.txt: not in the manifest".to_owned()), "{problems:?}");
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundle_report_and_the_manifest_describe_the_run() {
    let (dir, _, report) = bundle().await;
    let root = dir.path().join("bundle");
    assert_valid_report(&std::fs::read_to_string(root.join("report.json")).expect("report.json"));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["contract_sha256"], oneprotect_contracts::contract::SPEC_SHA256);
    assert_eq!(manifest["catalogue_sha256"], evidence::catalogue_sha256());
    assert_eq!(manifest["target"]["kind"], "local");
    assert_eq!(manifest["outcomes"].as_object().map(|o| o.len()), Some(report.results.len()));
    assert_eq!(
        manifest["files"].as_object().map(|f| f.len()),
        Some(report.results.len() + 2),
        "a transcript per check and two reports"
    );
}

#[test]
fn reports_with_every_outcome_validate_against_the_report_schema() {
    use oneprotect_conformance::report::CheckResult;
    use oneprotect_conformance::{Family, Outcome};
    let result = |id: &str, outcome: Outcome| CheckResult {
        id: id.into(),
        family: Family::Replay,
        promise: "p".into(),
        outcome,
        duration_ms: 1,
    };
    let report = Report {
        run_id: "conf-0123456789ab".into(),
        target: Target::Http,
        results: vec![
            result("replay.a", Outcome::Pass),
            result("replay.b", Outcome::Fail("x".into())),
            result("replay.c", Outcome::Skip("y".into())),
        ],
        cleanup_failures: vec!["token t".into()],
        run_errors: vec![],
        notes: vec!["note".into()],
        certification: vec![],
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        transcripts: Default::default(),
    };
    assert_valid_report(&report.json());
    let mut broken: serde_json::Value = serde_json::from_str(&report.json()).expect("json");
    broken["report"]["results"][0]["outcome"] = serde_json::json!("maybe");
    assert!(!report_schema().is_valid(&broken), "the schema refuses an unknown outcome");
}

fn chromium() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return name.into();
        }
    }
    panic!("a headless Chromium is needed for this test: apt-get install chromium");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_renders_from_disk_in_headless_chromium_with_no_network() {
    let (dir, _, report) = bundle().await;
    let html = dir.path().join("bundle/report.html");
    let text = std::fs::read_to_string(&html).expect("report.html");
    for external in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(!text.contains(external), "the report loads nothing from outside ({external})");
    }
    let browser = chromium();
    let profile = dir.path().join("chromium-profile");
    let url = format!("file://{}", html.display());
    let headless = move |extra: Vec<String>| {
        let (browser, profile, url) = (browser.clone(), profile.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(browser)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .args(extra)
                .arg(url)
                .output()
                .expect("run chromium")
        })
    };
    let dom = headless(vec!["--dump-dom".into()]).await.expect("join");
    let dom = String::from_utf8_lossy(&dom.stdout);
    let t = report.total();
    assert!(
        dom.contains(&format!("{} passed, {} failed, {} skipped", t.passed, t.failed, t.skipped)),
        "the browser parsed the summary: {}",
        &dom[..dom.len().min(400)]
    );
    assert!(dom.contains("id=\"replay.nonce-reuse-rejected\""), "every check is in the document");
    let png = dir.path().join("report.png");
    let shot = headless(vec![format!("--screenshot={}", png.display()), "--window-size=1200,1600".into()])
        .await
        .expect("join");
    assert!(png.exists(), "chromium wrote a screenshot: {}", String::from_utf8_lossy(&shot.stderr));
    let bytes = std::fs::read(&png).expect("png");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert!(
        bytes.len() > 20_000,
        "the screenshot shows a rendered page, not a blank one ({} bytes)",
        bytes.len()
    );
    if let Ok(keep) = std::env::var("ONEPROTECT_KEEP_REPORT_SCREENSHOT") {
        let _ = std::fs::copy(&png, keep);
    }
}

fn agent_binary() -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(Path::to_path_buf))
        .expect("target dir");
    let bin = dir.join(format!("oneprotect-agent{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo)
            .args(["build", "-p", "oneprotect-agent", "--bin", "oneprotect-agent"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "building oneprotect-agent failed");
    }
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_checks_carry_the_agents_requests_and_the_mocks_answers_redacted() {
    use oneprotect_conformance::agent_target::{ENROLLMENT_TOKEN, RENEWED_RUNTIME_TOKEN, RUNTIME_TOKEN};
    let powers =
        oneprotect_conformance::ctx::LocalPowers { agent_bin: Some(agent_binary()), ..Default::default() };
    let ctx = oneprotect_conformance::Ctx::new(
        "http://127.0.0.1:9",
        reqwest::Client::new(),
        String::new().into(),
        String::new().into(),
        powers,
    );
    ctx.record_exchanges();
    let only = [
        "redaction.agent-token-removed-from-config".to_owned(),
        "fail-closed.agent-renews-before-expiry".to_owned(),
    ];
    let checks = runner::selected(&CATALOGUE, Target::Agent, &only);
    let report = runner::run(&ctx, Target::Agent, &checks, false).await;
    assert!(report.passed(), "{}", report.human());
    let dir = tempfile::tempdir().expect("tempdir");
    let facts = RunFacts { target_url: None, tls_certificate_sha256: None, profile: None };
    evidence::write(&dir.path().join("bundle"), &report, &ctx.secrets(), &facts).expect("write");
    let renewal = std::fs::read_to_string(
        dir.path().join("bundle/transcripts/fail-closed.agent-renews-before-expiry.json"),
    )
    .expect("transcript");
    for path in ["/api/v1/agent-enrollment/exchange", "/certificate/rotate", "/telemetry/heartbeat"] {
        assert!(renewal.contains(path), "the transcript shows the agent's {path} request");
    }
    for secret in [ENROLLMENT_TOKEN, RUNTIME_TOKEN, RENEWED_RUNTIME_TOKEN, "BEGIN CERTIFICATE REQUEST"] {
        for path in files(&dir.path().join("bundle")) {
            assert!(
                !std::fs::read_to_string(&path).expect("text").contains(secret),
                "{secret} appears in {}",
                path.display()
            );
        }
    }
    assert!(renewal.contains("Bearer <runtime_token:"), "the bearer is tagged");
}
