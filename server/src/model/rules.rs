//! The rules of an agent's identity, each one function taking facts and a
//! clock (`admit`, `judge_heartbeat`, `judge_rotation_write`), and the
//! writes and outcomes they decide.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::records::*;
use crate::error::TokenFailure;

/// Everything an accepted exchange writes, in one transaction.
#[derive(Debug, Clone)]
pub struct EnrollmentCommit {
    pub token_id: Uuid,
    pub now: DateTime<Utc>,
    pub nonce_hash: KeyedHash,
    pub identity: AgentIdentityRecord,
    pub certificate: CertificateRecord,
    pub audit: AuditRecord,
    pub event: OutboxEvent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EnrollmentOutcome {
    Enrolled,
    TokenRejected(TokenFailure),
    NonceReplayed,
}

/// What a runtime token claims about the identity presenting it, and the
/// policy its stored record is judged by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBinding {
    pub collector_id: Uuid,
    pub asset_id: Uuid,
    /// The certificate the token was issued with.
    pub certificate_id: Uuid,
    pub stale_after: Duration,
    /// How long a token issued before a rotation keeps working; `None`
    /// accepts only the current certificate.
    pub rotation_grace: Option<Duration>,
}

/// Why a stored identity refuses a caller, in the order the rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityRefusal {
    Unknown,
    CollectorMismatch,
    Revoked,
    /// Silent past `stale_after`; `marked` says the stored status already
    /// records it.
    Stale {
        marked: bool,
    },
    /// The token's certificate was replaced (and any grace has ended).
    Superseded,
}

/// The identity rules every agent request passes, judged on the stored
/// record (which is returned when it admits the caller): the service applies them before a rotation, and the store
/// applies them inside the heartbeat's write transaction, on the row it
/// locks, so the answer reflects every change committed before it.
pub fn admit<'a, I: IdentityFacts>(
    stored: Option<&'a I>,
    binding: &AgentBinding,
    now: DateTime<Utc>,
) -> Result<&'a I, IdentityRefusal> {
    let found = stored.ok_or(IdentityRefusal::Unknown)?;
    let identity = found.facts();
    if identity.collector_id != binding.collector_id || identity.asset_id != binding.asset_id {
        return Err(IdentityRefusal::CollectorMismatch);
    }
    match identity.effective_status(now, binding.stale_after) {
        AgentStatus::Revoked => return Err(IdentityRefusal::Revoked),
        AgentStatus::Stale => {
            return Err(IdentityRefusal::Stale { marked: identity.status == AgentStatus::Stale });
        }
        AgentStatus::Enrolled | AgentStatus::Active => {}
    }
    let current = binding.certificate_id == identity.certificate_id;
    let in_grace = binding.rotation_grace.is_some_and(|grace| {
        identity.previous_certificate_id == Some(binding.certificate_id)
            && identity.rotated_at.is_some_and(|at| now < at + grace)
    });
    if current || in_grace { Ok(found) } else { Err(IdentityRefusal::Superseded) }
}

/// What an accepted heartbeat writes; the store decides which events apply.
#[derive(Debug, Clone)]
pub struct HeartbeatCommit {
    pub tenant_id: String,
    pub agent_id: Uuid,
    /// Checked against the identity row inside the write transaction.
    pub binding: AgentBinding,
    pub now: DateTime<Utc>,
    pub sequence: i64,
    pub hostname: String,
    pub agent_version: String,
    pub os_family: Option<String>,
    pub os_version: Option<String>,
    /// Emitted for every non-duplicate heartbeat.
    pub telemetry_event: OutboxEvent,
    /// What an identity's first heartbeat writes besides; built only when
    /// the store has answered `FirstContactRequired`, because every later
    /// heartbeat (nearly all of them) would throw it away.
    pub first_contact: Option<FirstContact>,
}

/// The records of an identity's first heartbeat.
#[derive(Debug, Clone)]
pub struct FirstContact {
    /// Emitted when the heartbeat creates the asset row.
    pub discovered_event: OutboxEvent,
    /// Written when the identity turns from enrolled to active.
    pub activation_audit: AuditRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    Accepted,
    Duplicate,
    /// The stored identity refuses this heartbeat; nothing was written.
    Refused(IdentityRefusal),
    /// The identity has not been heard from (or not activated) yet and the
    /// commit carries no `first_contact`; nothing was written. The caller
    /// builds the records and commits again.
    FirstContactRequired,
}

/// What an admitted, new heartbeat writes beyond refreshing its identity
/// and emitting its telemetry event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeartbeatEffects<'c> {
    /// The identity's asset (the stored one, which the token's binding matched).
    pub asset_id: Uuid,
    /// The identity's first heartbeat ever: its asset row may not exist yet.
    pub first_ever: bool,
    /// To write: the identity turns from enrolled to active.
    pub activation_audit: Option<&'c AuditRecord>,
    /// To emit if this heartbeat creates the asset row; present whenever
    /// the commit carries its first-contact records.
    pub discovered_event: Option<&'c OutboxEvent>,
}

/// The rules a heartbeat passes inside its write transaction, on the
/// identity as that transaction sees it: `admit`, then a sequence greater
/// than the last accepted one (otherwise a duplicate, acknowledged without
/// effect), then the first-contact records when the identity needs them.
pub fn judge_heartbeat<'c, I: IdentityFacts>(
    stored: Option<&I>,
    commit: &'c HeartbeatCommit,
) -> Result<HeartbeatEffects<'c>, HeartbeatOutcome> {
    let identity = admit(stored, &commit.binding, commit.now).map_err(HeartbeatOutcome::Refused)?.facts();
    if identity.last_sequence.is_some_and(|last| commit.sequence <= last) {
        return Err(HeartbeatOutcome::Duplicate);
    }
    let activates = identity.status == AgentStatus::Enrolled;
    let first_ever = identity.last_sequence.is_none();
    let first_contact = commit.first_contact.as_ref();
    if (activates || first_ever) && first_contact.is_none() {
        return Err(HeartbeatOutcome::FirstContactRequired);
    }
    Ok(HeartbeatEffects {
        asset_id: identity.asset_id,
        first_ever,
        activation_audit: first_contact.filter(|_| activates).map(|f| &f.activation_audit),
        discovered_event: first_contact.map(|f| &f.discovered_event),
    })
}

#[derive(Debug, Clone)]
pub struct RotationCommit {
    pub tenant_id: String,
    pub agent_id: Uuid,
    pub now: DateTime<Utc>,
    pub nonce_hash: KeyedHash,
    /// The certificate the presented token was issued with.
    pub presented_certificate_id: Uuid,
    pub certificate: CertificateRecord,
    pub audit: AuditRecord,
    pub event: OutboxEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationOutcome {
    Rotated,
    NonceReplayed,
    /// The token's certificate is no longer current.
    Superseded,
    NotAllowed(Option<AgentStatus>),
}

/// Whether a rotation may replace the identity's certificate, judged on the
/// identity as its write transaction locked it: it must exist, be enrolled
/// or active, and still hold the certificate the caller presented (a
/// concurrent rotation or revocation between the service's read and this
/// write loses here). `Ok` is the identity to rotate; `Err` the outcome to
/// report, with nothing written.
pub fn judge_rotation_write(
    identity: Option<&AgentIdentityRecord>,
    presented_certificate_id: Uuid,
) -> Result<&AgentIdentityRecord, RotationOutcome> {
    let Some(identity) = identity else { return Err(RotationOutcome::NotAllowed(None)) };
    if !matches!(identity.status, AgentStatus::Enrolled | AgentStatus::Active) {
        return Err(RotationOutcome::NotAllowed(Some(identity.status)));
    }
    if identity.certificate_id != presented_certificate_id {
        return Err(RotationOutcome::Superseded);
    }
    Ok(identity)
}

#[derive(Debug, Clone, PartialEq)]
pub enum RevokeOutcome<T> {
    Revoked(T),
    AlreadyRevoked(T),
    NotFound,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_rotation_writes_only_for_a_live_identity_still_holding_the_presented_certificate() {
        let now = Utc::now();
        let live = identity(now);
        let presented = live.certificate_id;
        assert_eq!(judge_rotation_write(Some(&live), presented), Ok(&live));
        assert_eq!(judge_rotation_write(None, presented), Err(RotationOutcome::NotAllowed(None)));
        assert_eq!(judge_rotation_write(Some(&live), Uuid::new_v4()), Err(RotationOutcome::Superseded));
        for status in [AgentStatus::Revoked, AgentStatus::Stale] {
            let judged = AgentIdentityRecord { status, ..live.clone() };
            assert_eq!(
                judge_rotation_write(Some(&judged), presented),
                Err(RotationOutcome::NotAllowed(Some(status))),
                "{status}"
            );
        }
        let enrolled = AgentIdentityRecord { status: AgentStatus::Enrolled, ..live.clone() };
        assert_eq!(
            judge_rotation_write(Some(&enrolled), presented),
            Ok(&enrolled),
            "an identity not yet heard from may rotate"
        );
    }

    #[test]
    fn a_page_says_another_follows_only_when_a_row_beyond_the_limit_was_read() {
        let rows = |n: i64| (1..=n).map(|seq| (seq * 10, seq)).collect::<Vec<_>>();
        assert_eq!(
            Page::from_rows(rows(3), 3),
            Page { items: vec![1, 2, 3], next_after: None },
            "exactly the limit: last page"
        );
        assert_eq!(
            Page::from_rows(rows(4), 3),
            Page { items: vec![1, 2, 3], next_after: Some(30) },
            "one more: the cursor is the last kept row"
        );
        assert_eq!(Page::from_rows(rows(0), 3), Page { items: Vec::<i64>::new(), next_after: None });
    }

    #[test]
    fn stored_text_values_round_trip_and_anything_else_is_refused() {
        for s in CertificateStatus::ALL {
            assert_eq!(CertificateStatus::parse(s.as_str()), Some(*s));
        }
        for a in ActorType::ALL {
            assert_eq!(ActorType::parse(a.as_str()), Some(*a));
        }
        for o in AuditOutcome::ALL {
            assert_eq!(AuditOutcome::parse(o.as_str()), Some(*o));
        }
        assert_eq!(CertificateStatus::parse("Active"), None, "no case folding");
        assert_eq!(CertificateStatus::parse("expired"), None, "no fallback to a status");
        assert_eq!(ActorType::parse(""), None);
    }

    fn identity(now: DateTime<Utc>) -> AgentIdentityRecord {
        AgentIdentityRecord {
            agent_id: Uuid::new_v4(),
            tenant_id: "tenant-fixture".into(),
            collector_id: Uuid::new_v4(),
            asset_id: Uuid::new_v4(),
            site_id: None,
            status: AgentStatus::Active,
            hostname: None,
            agent_version: None,
            os_family: None,
            enrollment_token_id: Uuid::new_v4(),
            certificate_id: Uuid::new_v4(),
            previous_certificate_id: None,
            rotated_at: None,
            fingerprint_hash: None,
            enrolled_at: now - Duration::hours(1),
            last_seen_at: Some(now - Duration::minutes(1)),
            last_sequence: Some(1),
            revoked_at: None,
        }
    }

    fn binding(i: &AgentIdentityRecord, grace: Option<Duration>) -> AgentBinding {
        AgentBinding {
            collector_id: i.collector_id,
            asset_id: i.asset_id,
            certificate_id: i.certificate_id,
            stale_after: Duration::hours(24),
            rotation_grace: grace,
        }
    }

    #[test]
    fn a_matching_current_identity_is_admitted() {
        let now = Utc::now();
        let i = identity(now);
        assert_eq!(admit(Some(&i), &binding(&i, None), now), Ok(&i));
    }

    #[test]
    fn rules_apply_in_order_unknown_collector_revoked_stale_superseded() {
        let now = Utc::now();
        let i = identity(now);
        let b = binding(&i, None);
        assert_eq!(admit::<AgentIdentityRecord>(None, &b, now), Err(IdentityRefusal::Unknown));
        // A revoked, silent identity presenting another collector and an old
        // certificate: the collector rule is judged first.
        let mut worst = i.clone();
        worst.status = AgentStatus::Revoked;
        worst.last_seen_at = Some(now - Duration::days(30));
        worst.certificate_id = Uuid::new_v4();
        let other_collector = AgentBinding { collector_id: Uuid::new_v4(), ..b.clone() };
        assert_eq!(admit(Some(&worst), &other_collector, now), Err(IdentityRefusal::CollectorMismatch));
        let other_asset = AgentBinding { asset_id: Uuid::new_v4(), ..b.clone() };
        assert_eq!(admit(Some(&worst), &other_asset, now), Err(IdentityRefusal::CollectorMismatch));
        assert_eq!(admit(Some(&worst), &b, now), Err(IdentityRefusal::Revoked));
        worst.status = AgentStatus::Active;
        assert_eq!(admit(Some(&worst), &b, now), Err(IdentityRefusal::Stale { marked: false }));
        worst.status = AgentStatus::Stale;
        assert_eq!(admit(Some(&worst), &b, now), Err(IdentityRefusal::Stale { marked: true }));
        worst.status = AgentStatus::Active;
        worst.last_seen_at = Some(now);
        assert_eq!(admit(Some(&worst), &b, now), Err(IdentityRefusal::Superseded));
    }

    #[test]
    fn staleness_starts_exactly_at_the_limit() {
        let now = Utc::now();
        let mut i = identity(now);
        let b = binding(&i, None);
        i.last_seen_at = Some(now - b.stale_after + Duration::microseconds(1));
        assert_eq!(admit(Some(&i), &b, now), Ok(&i));
        i.last_seen_at = Some(now - b.stale_after);
        assert_eq!(admit(Some(&i), &b, now), Err(IdentityRefusal::Stale { marked: false }));
        // Never seen: silence counts from enrollment.
        i.last_seen_at = None;
        i.enrolled_at = now - b.stale_after;
        assert_eq!(admit(Some(&i), &b, now), Err(IdentityRefusal::Stale { marked: false }));
    }

    fn commit_for(
        i: &AgentIdentityRecord,
        now: DateTime<Utc>,
        sequence: i64,
        first_contact: bool,
    ) -> HeartbeatCommit {
        let event = |t: &str| OutboxEvent {
            event_id: format!("fixture-{t}"),
            tenant_id: i.tenant_id.clone(),
            event_type: t.into(),
            occurred_at: now,
            payload: "{}".into(),
        };
        HeartbeatCommit {
            tenant_id: i.tenant_id.clone(),
            agent_id: i.agent_id,
            binding: binding(i, None),
            now,
            sequence,
            hostname: "fixture".into(),
            agent_version: "0.0.0".into(),
            os_family: None,
            os_version: None,
            telemetry_event: event("asset.telemetry.received"),
            first_contact: first_contact.then(|| FirstContact {
                discovered_event: event("asset.discovered"),
                activation_audit: AuditRecord {
                    audit_id: Uuid::nil(),
                    tenant_id: i.tenant_id.clone(),
                    occurred_at: now,
                    actor_type: ActorType::Agent,
                    actor_id: "fixture".into(),
                    action: AuditAction::AgentActivate,
                    target_type: "agent".into(),
                    target_id: None,
                    outcome: AuditOutcome::Success,
                    reason_code: None,
                    request_id: "fixture".into(),
                    details: BTreeMap::new(),
                },
            }),
        }
    }

    #[test]
    fn a_heartbeat_is_judged_by_admit_first_then_by_its_sequence() {
        let now = Utc::now();
        let mut i = identity(now);
        i.last_sequence = Some(5);
        assert_eq!(
            judge_heartbeat::<AgentIdentityRecord>(None, &commit_for(&i, now, 6, true)),
            Err(HeartbeatOutcome::Refused(IdentityRefusal::Unknown))
        );
        let mut revoked = i.clone();
        revoked.status = AgentStatus::Revoked;
        assert_eq!(
            judge_heartbeat(Some(&revoked), &commit_for(&i, now, 5, true)),
            Err(HeartbeatOutcome::Refused(IdentityRefusal::Revoked))
        );
        assert_eq!(
            judge_heartbeat(Some(&i), &commit_for(&i, now, 5, false)),
            Err(HeartbeatOutcome::Duplicate)
        );
        assert_eq!(
            judge_heartbeat(Some(&i), &commit_for(&i, now, 4, false)),
            Err(HeartbeatOutcome::Duplicate)
        );
        let later = commit_for(&i, now, 6, false);
        assert_eq!(
            judge_heartbeat(Some(&i), &later),
            Ok(HeartbeatEffects {
                asset_id: i.asset_id,
                first_ever: false,
                activation_audit: None,
                discovered_event: None
            })
        );
    }

    #[test]
    fn an_identity_never_heard_from_or_not_yet_active_needs_its_first_contact_records() {
        let now = Utc::now();
        let mut fresh = identity(now);
        fresh.status = AgentStatus::Enrolled;
        fresh.last_sequence = None;
        assert_eq!(
            judge_heartbeat(Some(&fresh), &commit_for(&fresh, now, 1, false)),
            Err(HeartbeatOutcome::FirstContactRequired)
        );
        let with_records = commit_for(&fresh, now, 1, true);
        let effects = judge_heartbeat(Some(&fresh), &with_records).expect("admitted");
        assert!(effects.first_ever);
        assert_eq!(effects.activation_audit.map(|a| a.action.as_str()), Some("agent.activate"));
        assert_eq!(effects.discovered_event.map(|e| e.event_type.as_str()), Some("asset.discovered"));
        // Active but never heard from (its first heartbeat was lost): the
        // asset may be missing, but there is nothing to activate.
        let mut silent = fresh.clone();
        silent.status = AgentStatus::Active;
        assert_eq!(
            judge_heartbeat(Some(&silent), &commit_for(&silent, now, 1, false)),
            Err(HeartbeatOutcome::FirstContactRequired)
        );
        let effects = judge_heartbeat(Some(&silent), &with_records).expect("admitted");
        assert_eq!((effects.first_ever, effects.activation_audit), (true, None));
    }

    #[test]
    fn a_previous_certificate_is_admitted_only_with_a_grace_and_only_within_it() {
        let now = Utc::now();
        let mut i = identity(now);
        let old = binding(&i, Some(Duration::minutes(5)));
        i.previous_certificate_id = Some(i.certificate_id);
        i.certificate_id = Uuid::new_v4();
        i.rotated_at = Some(now - Duration::minutes(5) + Duration::seconds(1));
        assert_eq!(admit(Some(&i), &old, now), Ok(&i));
        assert_eq!(
            admit(Some(&i), &AgentBinding { rotation_grace: None, ..old.clone() }, now),
            Err(IdentityRefusal::Superseded)
        );
        i.rotated_at = Some(now - Duration::minutes(5));
        assert_eq!(admit(Some(&i), &old, now), Err(IdentityRefusal::Superseded));
        // A certificate older than the previous one never comes back.
        i.rotated_at = Some(now);
        i.previous_certificate_id = Some(Uuid::new_v4());
        assert_eq!(admit(Some(&i), &old, now), Err(IdentityRefusal::Superseded));
    }
}
