//! The http target as a reviewer runs it: against a deployment with the
//! production limits, whose tenant already holds more than a page of every
//! list (over 1,000 events), run after run.

use std::sync::Arc;

use oneprotect_conformance::checks::CATALOGUE;
use oneprotect_conformance::ctx::{Ctx, LocalPowers, Sleeper};
use oneprotect_conformance::{Target, Tenant, local, preflight, runner};
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
