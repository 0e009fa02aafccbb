//! The catalogue. Ids are stable: reports, CI and reviewers refer to them.

mod agent;
mod expiry;
mod fail_closed;
mod isolation;
mod redaction;
mod replay;

use crate::{Check, Family, Target};

const BOTH: &[Target] = &[Target::Http, Target::Local];
const LOCAL: &[Target] = &[Target::Local];
const AGENT: &[Target] = &[Target::Agent];

macro_rules! check {
    ($id:literal, $family:ident, $targets:expr, $promise:literal, $f:path) => {
        Check { id: $id, family: Family::$family, promise: $promise, targets: $targets, run: $f }
    };
}

pub static CATALOGUE: &[Check] = &[
    check!(
        "redaction.issued-secret-shown-once",
        Redaction,
        BOTH,
        "the enrollment secret appears in the issue response and in no list or later answer",
        redaction::secret_shown_once
    ),
    check!(
        "redaction.audit-and-events-carry-no-secret",
        Redaction,
        BOTH,
        "no audit record or event contains a secret, CSR, nonce or bearer",
        redaction::audit_and_events_clean
    ),
    check!("redaction.store-holds-no-secret", Redaction, LOCAL, "no stored row of any table contains a secret the run produced", redaction::store_clean),
    check!("redaction.logs-hold-no-secret", Redaction, LOCAL, "no server log line contains a secret or a bearer credential", redaction::logs_clean),
    check!("redaction.problems-do-not-echo-input", Redaction, BOTH, "a rejected body is described by field, never echoed", redaction::problems_do_not_echo),
    check!(
        "redaction.agent-files-owner-only",
        Redaction,
        AGENT,
        "the agent's identity, key and runtime token are mode 0600 in a 0700 directory",
        agent::files_owner_only
    ),
    check!(
        "redaction.agent-token-removed-from-config",
        Redaction,
        AGENT,
        "the enrollment token is removed from the config after enrollment",
        agent::token_removed
    ),
    check!(
        "redaction.agent-logs-hold-no-secret",
        Redaction,
        AGENT,
        "the agent's stdout/stderr at trace level contain no token, key, CSR or nonce",
        agent::logs_clean
    ),
    check!(
        "replay.nonce-reuse-rejected",
        Replay,
        BOTH,
        "an exchange nonce is single use (409 nonce_replayed) and the replay consumes nothing",
        replay::nonce_reuse
    ),
    check!(
        "replay.single-use-token-exhausted",
        Replay,
        BOTH,
        "a max_uses=1 token enrolls once; the second use is 401 enrollment_token_invalid",
        replay::token_exhausted
    ),
    check!(
        "replay.duplicate-heartbeat-acknowledged-once",
        Replay,
        BOTH,
        "a repeated heartbeat sequence is acknowledged as duplicate and emits no second event",
        replay::duplicate_heartbeat
    ),
    check!("replay.rotation-nonce-reuse-rejected", Replay, BOTH, "a rotation nonce is single use", replay::rotation_nonce),
    check!(
        "replay.agent-fresh-nonce-per-attempt",
        Replay,
        AGENT,
        "every enrollment attempt of the agent sends a fresh nonce and a fresh CSR",
        agent::fresh_nonce
    ),
    check!("expiry.enrollment-token-expires", Expiry, LOCAL, "an enrollment token past its TTL is refused with the uniform 401", expiry::enrollment_token),
    check!("expiry.runtime-token-expires", Expiry, LOCAL, "a runtime token past its TTL is 401 runtime_token_invalid", expiry::runtime_token),
    check!(
        "expiry.rotated-token-superseded-after-grace",
        Expiry,
        LOCAL,
        "after rotation the old runtime token works only during the grace period",
        expiry::rotation_grace
    ),
    check!(
        "expiry.silent-identity-goes-stale",
        Expiry,
        LOCAL,
        "an identity silent past the staleness window is refused with 403 identity_stale",
        expiry::stale_identity
    ),
    check!("expiry.expired-admin-token-rejected", Expiry, LOCAL, "an expired tenant-admin JWT is 401", expiry::admin_token),
    check!(
        "tenant-isolation.cross-tenant-agent-read-is-404",
        TenantIsolation,
        BOTH,
        "reading another tenant's agent answers 404, exactly like a missing one",
        isolation::agent_read
    ),
    check!(
        "tenant-isolation.cross-tenant-revokes-are-404",
        TenantIsolation,
        BOTH,
        "revoking another tenant's agent or token answers 404 and changes nothing",
        isolation::revokes
    ),
    check!("tenant-isolation.lists-are-tenant-scoped", TenantIsolation, BOTH, "lists, audit and events show nothing of another tenant", isolation::lists),
    check!(
        "tenant-isolation.cross-agent-heartbeat-refused",
        TenantIsolation,
        BOTH,
        "a runtime token cannot heartbeat for another agent (403 actor_mismatch)",
        isolation::cross_heartbeat
    ),
    check!(
        "fail-closed.missing-bearer-is-401",
        FailClosed,
        BOTH,
        "every protected operation without a bearer is 401 unauthenticated",
        fail_closed::missing_bearer
    ),
    check!("fail-closed.alg-none-admin-token-rejected", FailClosed, BOTH, "an unsigned (alg none) admin token is 401", fail_closed::alg_none),
    check!("fail-closed.forged-admin-token-rejected", FailClosed, BOTH, "an admin token signed with another key is 401", fail_closed::forged_admin),
    check!(
        "fail-closed.tampered-runtime-token-rejected",
        FailClosed,
        BOTH,
        "a runtime token with a changed payload or signature is 401",
        fail_closed::tampered_runtime
    ),
    check!(
        "fail-closed.wrong-scope-runtime-token-rejected",
        FailClosed,
        LOCAL,
        "a validly signed runtime token of another scope is 403 scope_forbidden",
        fail_closed::wrong_scope
    ),
    check!(
        "fail-closed.admin-token-at-agent-endpoint-rejected",
        FailClosed,
        BOTH,
        "an admin JWT presented to an agent endpoint is 403 not_service_account",
        fail_closed::admin_at_agent
    ),
    check!(
        "fail-closed.revoked-identity-refused",
        FailClosed,
        BOTH,
        "after revocation the agent's next heartbeat is 403 identity_revoked",
        fail_closed::revoked_identity
    ),
    check!("fail-closed.revoked-token-refused", FailClosed, BOTH, "a revoked enrollment token is refused with the uniform 401", fail_closed::revoked_token),
    check!(
        "fail-closed.malformed-csr-keeps-the-token",
        FailClosed,
        BOTH,
        "a broken CSR is 400 csr_invalid and consumes no token use",
        fail_closed::malformed_csr
    ),
    check!(
        "fail-closed.malformed-and-oversize-bodies-rejected",
        FailClosed,
        BOTH,
        "malformed JSON is 400, an oversize body 413, a wrong media type 415, all as Problem",
        fail_closed::bad_bodies
    ),
    check!(
        "fail-closed.identity-override-rejected",
        FailClosed,
        BOTH,
        "a heartbeat body carrying identity fields is 400 identity_override_rejected",
        fail_closed::identity_override
    ),
    check!("fail-closed.viewer-cannot-write", FailClosed, LOCAL, "a tenant_viewer can list but not issue (403 forbidden)", fail_closed::viewer),
    check!(
        "fail-closed.missing-runtime-secret-is-503",
        FailClosed,
        LOCAL,
        "without the runtime secret the exchange is 503 and writes nothing",
        fail_closed::missing_secret
    ),
    check!(
        "fail-closed.unknown-routes-are-problems",
        FailClosed,
        BOTH,
        "unknown paths are 404 and wrong methods 405, as Problem JSON",
        fail_closed::unknown_routes
    ),
    check!(
        "fail-closed.agent-exits-3-on-401",
        FailClosed,
        AGENT,
        "the running agent exits with code 3 when the platform answers 401, keeping its files",
        agent::exit_on_401
    ),
    check!("fail-closed.agent-exits-4-on-403", FailClosed, AGENT, "the running agent exits with code 4 when the platform answers 403", agent::exit_on_403),
    check!(
        "fail-closed.agent-honours-retry-after",
        FailClosed,
        AGENT,
        "after 429 with Retry-After the agent waits at least that long, then retries",
        agent::retry_after
    ),
    check!("fail-closed.agent-backs-off-on-5xx", FailClosed, AGENT, "on 5xx the agent retries with growing, bounded delays instead of exiting", agent::backoff),
    check!("fail-closed.agent-stops-cleanly-on-sigterm", FailClosed, AGENT, "SIGTERM stops the agent with exit 0 within 2 seconds", agent::sigterm),
    check!(
        "fail-closed.agent-bodies-match-contract",
        FailClosed,
        AGENT,
        "every body the agent sends validates against the contract",
        agent::bodies_match_contract
    ),
];
