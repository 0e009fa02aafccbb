//! Tolerant readers, strict judges: a type generated from today's contract
//! reads an answer (or event) that a later, additive release extends with
//! an optional property, while JSON Schema validation against today's
//! contract still refuses the undeclared field.

use oneprotect_contracts::{contract, events, types};
use serde_json::{Value, json};

fn with_added_field(mut v: Value) -> Value {
    v["added_in_a_later_release"] = json!({"optional": true});
    v
}

#[test]
fn an_old_client_reads_responses_that_gained_an_optional_property() {
    let accepted = json!({"agent_id": "5a1c0f6e-3b2d-4c8e-9f70-112233445566", "status": "active", "accepted_at": "2026-12-06T10:00:00Z", "duplicate": false});
    let parsed: types::HeartbeatAccepted =
        serde_json::from_value(with_added_field(accepted.clone())).expect("an extra property is ignored");
    assert_eq!(
        parsed,
        serde_json::from_value::<types::HeartbeatAccepted>(accepted.clone()).expect("today's shape")
    );

    let problem = json!({"type": "urn:oneprotect:problem:not_found", "title": "Not found", "status": 404, "code": "not_found", "request_id": "r-1"});
    let parsed: types::Problem =
        serde_json::from_value(with_added_field(problem)).expect("an extra property is ignored");
    assert_eq!(parsed.code, "not_found");

    // Nested objects too: an identity inside a list.
    let identity = json!({"agent_id": "5a1c0f6e-3b2d-4c8e-9f70-112233445566", "tenant_id": "tenant-a", "collector_id": "00000000-0000-0000-0000-000000000002",
        "asset_id": "00000000-0000-0000-0000-000000000003", "certificate_id": "00000000-0000-0000-0000-000000000004",
        "enrollment_token_id": "00000000-0000-0000-0000-000000000005", "status": "active", "enrolled_at": "2026-12-06T10:00:00Z"});
    let list =
        json!({"items": [with_added_field(identity)], "next_cursor": null, "added_in_a_later_release": 1});
    let parsed: types::AgentList = serde_json::from_value(list).expect("nested extra properties are ignored");
    assert_eq!(parsed.items.len(), 1);
}

#[test]
fn the_contract_still_refuses_an_undeclared_field_in_an_answer() {
    let accepted = json!({"agent_id": "5a1c0f6e-3b2d-4c8e-9f70-112233445566", "status": "active", "accepted_at": "2026-12-06T10:00:00Z", "duplicate": false});
    assert!(contract::validate_schema("HeartbeatAccepted", &accepted).is_ok());
    assert!(
        contract::validate_schema("HeartbeatAccepted", &with_added_field(accepted)).is_err(),
        "closed response objects catch a leaked field"
    );
}

#[test]
fn event_payload_types_read_an_added_property_and_validation_still_refuses_it() {
    let data = json!({"enrollment_token_id": "00000000-0000-0000-0000-000000000005", "revoked_by": "admin@fixture", "reason": null, "revoked_at": "2026-12-06T10:00:00Z"});
    let parsed: events::AgentEnrollmentTokenRevokedData =
        serde_json::from_value(with_added_field(data.clone())).expect("an extra property is ignored");
    assert_eq!(
        parsed,
        serde_json::from_value::<events::AgentEnrollmentTokenRevokedData>(data).expect("today's shape")
    );
}
