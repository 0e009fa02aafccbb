//! The http target as a reviewer runs it: against a deployment with the
//! production limits, whose tenant already holds more than a page of every
//! list (over 1,000 events), run after run.

use std::sync::Arc;

use oneprotect_conformance::checks::CATALOGUE;
use oneprotect_conformance::ctx::{Ctx, LocalPowers, Sleeper};
use oneprotect_conformance::faults::Fault;
use oneprotect_conformance::{Outcome, Target, Tenant, local, preflight, runner};
use oneprotect_server::service::Policy;

/// Fills tenant A with history: 250 tokens (two pages) and one agent with
/// 1,050 heartbeats (over five pages of events and of audit records).
async fn seed(ctx: &Ctx) {
    for _ in 0..250 {
        ctx.issue_token(Tenant::A, 1).await.expect("issue");
    }
    let (agent, runtime, _) = ctx.enroll(Tenant::A).await.expect("enroll");
    for sequence in 1..=1_050 {
        let a = ctx.heartbeat(&agent, &runtime, sequence).await.expect("heartbeat");
        assert_eq!(a.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_consecutive_http_runs_pass_on_a_tenant_with_history_under_production_limits() {
    let platform =
        local::start_full(None, None, true, Policy::default(), true).await.expect("local platform");
    seed(&platform.ctx).await;
    let events =
        platform.ctx.list(Tenant::A, oneprotect_conformance::ctx::Listing::Events).await.expect("events");
    assert!(events.len() > 1_000, "the tenant holds {} events", events.len());

    // Waiting for a Retry-After moves the platform's clock: it sees no other time.
    let clock = platform.ctx.local.clock.clone().expect("manual clock");
    let sleeper: Sleeper = Arc::new(move |d| {
        clock.advance(chrono::Duration::from_std(d).expect("bounded wait"));
        Box::pin(async {})
    });
    let checks = runner::selected(&CATALOGUE, Target::Http, &[]);
    let mut throttled = 0;
    for run in 1..=10 {
        let ctx = Ctx::new(
            &platform.ctx.base,
            reqwest::Client::new(),
            platform.ctx.admin_a.clone(),
            platform.ctx.admin_b.clone(),
            LocalPowers::default(),
        )
        .with_sleeper(sleeper.clone());
        // The deployment's broker: the run's events are read there too.
        let mut ctx = ctx;
        ctx.nats = platform.ctx.nats.clone();
        preflight::preflight(&ctx).await.expect("preflight");
        let report = runner::run(&ctx, Target::Http, &checks, false).await;
        assert!(report.passed(), "run {run}:\n{}", report.human());
        assert!(report.total().passed >= 20, "run {run} ran the http checks");
        assert!(
            report.results.iter().any(|r| r.id == "redaction.broker-events-match-the-outbox"
                && matches!(r.outcome, oneprotect_conformance::Outcome::Pass)),
            "run {run} read its events from the broker"
        );
        throttled += ctx.throttling().answers;
    }
    // Ten runs make more failed exchanges from one address than the
    // production limit allows per minute: the harness met 429 and waited.
    assert!(throttled > 0, "the production limit was reached and honoured");
}

/// A reviewer's context for `base`, trusting `roots` (PEM) when it is https.
fn reviewer_ctx(platform: &local::LocalPlatform, base: &str, roots: Option<String>) -> Ctx {
    let tls = oneprotect_conformance::ctx::AgentTls { roots_pem: roots };
    let http = tls.builder().expect("roots");
    let clock = platform.ctx.local.clock.clone().expect("manual clock");
    let sleeper: Sleeper = Arc::new(move |d| {
        clock.advance(chrono::Duration::from_std(d).expect("bounded wait"));
        Box::pin(async {})
    });
    let mut ctx = Ctx::new(
        base,
        http.build().expect("client"),
        platform.ctx.admin_a.clone(),
        platform.ctx.admin_b.clone(),
        LocalPowers::default(),
    )
    .with_sleeper(sleeper);
    ctx.nats = platform.ctx.nats.clone();
    if base.starts_with("https://") {
        ctx.agent_tls = Some(tls);
    }
    ctx
}

fn outcome<'a>(report: &'a oneprotect_conformance::report::Report, id: &str) -> &'a Outcome {
    &report.results.iter().find(|r| r.id == id).unwrap_or_else(|| panic!("{id} ran")).outcome
}

const MTLS_CHECKS: [&str; 3] = [
    "fail-closed.mtls-agent-calls-require-the-certificate",
    "fail-closed.mtls-certificate-bound-to-its-agent",
    "fail-closed.mtls-revoked-certificate-refused",
];

/// The platform's own TLS listener authenticates agents by certificate
/// (`ONEPROTECT_AGENT_AUTH=mtls`): the http target finds that policy, every
/// agent call presents the enrolled agent's certificate, the mutual TLS
/// checks run against the deployment, and the two checks whose premise is
/// a bearer credential say why they do not apply. Over plain HTTP the same
/// checks say no certificate can be presented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_target_certifies_a_deployment_that_authenticates_agents_by_certificate() {
    let platform = local::start(None, None).await.expect("local platform");
    let checks = runner::selected(&CATALOGUE, Target::Http, &[]);
    let base = platform.ctx.local.mtls_base.clone().expect("the TLS listener");
    // Twice in a row: the second run meets the first one's agents, events
    // and spent failure budget.
    for run in 1..=2 {
        let ctx = reviewer_ctx(&platform, &base, platform.ctx.local.ca_chain_pem.clone());
        preflight::preflight(&ctx).await.expect("preflight");
        let report = runner::run(&ctx, Target::Http, &checks, false).await;
        assert!(report.passed(), "run {run}:\n{}", report.human());
        assert!(
            report.notes.iter().any(|n| n.contains("authenticates agents by mtls")),
            "{:?}",
            report.notes
        );
        for id in MTLS_CHECKS {
            assert_eq!(outcome(&report, id), &Outcome::Pass, "run {run}: {id}");
        }
        for id in [
            "fail-closed.tampered-runtime-token-rejected",
            "fail-closed.admin-token-at-agent-endpoint-rejected",
        ] {
            assert!(
                matches!(outcome(&report, id), Outcome::Skip(why) if why.contains("certificate alone")),
                "run {run}: {id}"
            );
        }
        assert_eq!(outcome(&report, "replay.duplicate-heartbeat-acknowledged-once"), &Outcome::Pass);
        assert_eq!(outcome(&report, "tenant-isolation.cross-agent-heartbeat-refused"), &Outcome::Pass);
    }

    let plain = reviewer_ctx(&platform, &platform.ctx.base, None);
    let report = runner::run(&plain, Target::Http, &checks, false).await;
    assert!(report.passed(), "{}", report.human());
    for id in MTLS_CHECKS {
        assert!(matches!(outcome(&report, id), Outcome::Skip(why) if why.contains("plain HTTP")), "{id}");
    }
    assert_eq!(outcome(&report, "fail-closed.tampered-runtime-token-rejected"), &Outcome::Pass);
}

/// The same run against faulty TLS listeners: one that takes the agent
/// from the certificate and ignores the path fails the binding check; one
/// that ignores the mTLS policy is found to authenticate by bearer, so the
/// report says so instead of certifying mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_target_fails_a_tls_deployment_that_binds_no_certificate_to_its_agent() {
    let checks = runner::selected(&CATALOGUE, Target::Http, &["fail-closed".to_owned()]);
    let platform = local::start(None, Some(Fault::AgentFromCertificate)).await.expect("local platform");
    let base = platform.ctx.local.mtls_base.clone().expect("the TLS listener");
    let ctx = reviewer_ctx(&platform, &base, platform.ctx.local.ca_chain_pem.clone());
    let report = runner::run(&ctx, Target::Http, &checks, false).await;
    match outcome(&report, "fail-closed.mtls-certificate-bound-to-its-agent") {
        Outcome::Fail(m) => assert!(m.contains("expected 403 actor_mismatch, got 200"), "{m}"),
        other => panic!("the binding check ended as {other:?}"),
    }

    let platform = local::start(None, Some(Fault::MtlsPolicyIgnored)).await.expect("local platform");
    let base = platform.ctx.local.mtls_base.clone().expect("the TLS listener");
    let ctx = reviewer_ctx(&platform, &base, platform.ctx.local.ca_chain_pem.clone());
    let report = runner::run(&ctx, Target::Http, &checks, false).await;
    assert!(report.notes.iter().any(|n| n.contains("authenticates agents by bearer")), "{:?}", report.notes);
    for id in MTLS_CHECKS {
        assert!(
            matches!(outcome(&report, id), Outcome::Skip(why) if why.contains("runtime token alone")),
            "{id}"
        );
    }
}
