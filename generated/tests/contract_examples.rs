//! The schemas embedded in the generated crate accept every valid example
//! under specs/examples/ and reject every invalid one.

use std::path::{Path, PathBuf};

use oneprotect_contracts::{contract, events};
use serde_json::Value;

fn examples(kind: &str) -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/examples").join(kind);
    let mut out = Vec::new();
    for dir in std::fs::read_dir(&root).expect("examples dir") {
        let dir = dir.expect("entry").path();
        let target = dir.file_name().expect("name").to_string_lossy().into_owned();
        for file in std::fs::read_dir(&dir).expect("target dir") {
            let path = file.expect("file").path();
            // `rejections.yaml` says why each invalid example fails; codegen judges it.
            if path.extension().is_some_and(|e| e == "json") {
                out.push((target.clone(), path));
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no examples found under {}", root.display());
    out
}

fn load(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
}

fn expects_valid(path: &Path) -> bool {
    path.file_name().expect("name").to_string_lossy().starts_with("valid")
}

#[test]
fn every_event_example_is_judged_correctly_by_events_validate() {
    let (mut valid, mut invalid) = (0, 0);
    for (event_type, path) in examples("events") {
        let value = load(&path);
        let outcome = events::validate(&value);
        if expects_valid(&path) {
            assert_eq!(outcome, Ok(()), "{} should be valid", path.display());
            assert_eq!(value["type"], Value::String(event_type));
            valid += 1;
        } else {
            assert!(outcome.is_err(), "{} should be rejected", path.display());
            invalid += 1;
        }
    }
    assert_eq!(valid, events::EVENT_TYPES.len(), "one valid example per event type");
    assert!(invalid >= 4);
}

#[test]
fn every_openapi_example_is_judged_correctly_by_contract_validate_schema() {
    for (schema, path) in examples("openapi") {
        let value = load(&path);
        let outcome = contract::validate_schema(&schema, &value);
        assert_eq!(outcome.is_ok(), expects_valid(&path), "{}: {outcome:?}", path.display());
    }
}

#[test]
fn an_unknown_schema_name_fails_closed() {
    assert!(contract::validate_schema("NoSuchSchema", &serde_json::json!({})).is_err());
}

#[test]
fn an_envelope_built_in_rust_validates_and_a_tampered_one_does_not() {
    let data: events::AgentRevokedData = serde_json::from_value(serde_json::json!({
        "agent_id": "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "revoked_by": "admin@fixture", "revoked_at": "2026-11-05T12:00:00Z"
    }))
    .expect("data");
    let time = chrono::DateTime::parse_from_rfc3339("2026-11-05T12:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let envelope = events::Envelope::new(
        "evt-1",
        "/oneprotect/test",
        time,
        "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
        "tenant-fixture",
        data,
    );
    let mut value = serde_json::to_value(&envelope).expect("serialize");
    assert_eq!(value["type"], events::AGENT_REVOKED);
    assert_eq!(events::validate(&value), Ok(()));
    value["data"]["nonce"] = Value::String("fixture".into());
    assert!(
        matches!(events::validate(&value), Err(events::EventValidationError::Invalid(_))),
        "a payload with an undeclared field is refused"
    );
    value["type"] = Value::String("agent.unknown".into());
    assert_eq!(
        events::validate(&value),
        Err(events::EventValidationError::UnknownType("agent.unknown".into()))
    );
}

#[test]
fn typed_handles_build_the_documented_path_and_query() {
    let r = contract::ops::revoke_enrollment_token("tok-1");
    assert_eq!(
        (r.method(), r.path.as_str(), r.operation_id()),
        ("POST", "/api/v1/agent-enrollment/tokens/tok-1/revoke", "revokeEnrollmentToken")
    );
    let r = contract::ops::list_agents().query("limit", 200).query("cursor", "a b/c=");
    assert_eq!(r.path, "/api/v1/agents?limit=200&cursor=a%20b%2Fc%3D");
    let by_spec = contract::operation("getAgent").expect("getAgent").route(|name| format!("<{name}>"));
    assert_eq!(by_spec, contract::ops::get_agent("<agent_id>"));
    for op in contract::OPERATIONS {
        assert!(!op.route(|_| "x".into()).path.contains('{'), "{} keeps a placeholder", op.operation_id);
    }
}

#[test]
fn the_operation_table_matches_the_contract() {
    let openapi: serde_json::Value = serde_json::from_str(contract::OPENAPI_JSON).expect("openapi json");
    let documented: usize = openapi["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| {
            item.as_object()
                .map_or(0, |o| o.keys().filter(|k| !k.starts_with("x-") && *k != "parameters").count())
        })
        .sum();
    assert_eq!(contract::OPERATIONS.len(), documented);
    let heartbeat = contract::ops::post_agent_heartbeat("a").op;
    assert_eq!(heartbeat.operation_id, "postAgentHeartbeat");
    assert_eq!(heartbeat.path, "/api/v1/agents/{agent_id}/telemetry/heartbeat");
    assert_eq!(heartbeat.security, Some("agentRuntimeBearer"));
    assert_eq!(heartbeat.response(200), Some(contract::ResponseSpec::Json("HeartbeatAccepted")));
    assert_eq!(heartbeat.response(404), None);
    for op in contract::OPERATIONS {
        assert_eq!(
            op.response(500),
            Some(contract::ResponseSpec::Json("Problem")),
            "{} documents 500",
            op.operation_id
        );
    }
}

#[test]
fn problem_codes_are_typed_and_a_code_added_later_still_reads() {
    use oneprotect_contracts::contract::ProblemCode;
    for code in ProblemCode::ALL {
        assert_eq!(ProblemCode::parse(code.as_str()), Some(code));
        assert_eq!(
            serde_json::to_value(code).expect("serializes"),
            serde_json::Value::String(code.as_str().into())
        );
    }
    assert_eq!(ProblemCode::parse("not_found"), Some(ProblemCode::NotFound));
    // A later release may answer a code this build does not know: the typed
    // Problem still reads, and the code is simply not one of ours.
    let later = serde_json::json!({"type": "urn:oneprotect:problem:quota_exceeded", "title": "Quota", "status": 429, "code": "quota_exceeded", "request_id": "r"});
    let p: oneprotect_contracts::types::Problem =
        serde_json::from_value(later).expect("an unknown code reads");
    assert_eq!(ProblemCode::parse(&p.code), None);
    let openapi: serde_json::Value =
        serde_json::from_str(oneprotect_contracts::contract::OPENAPI_JSON).expect("json");
    let listed = openapi
        .pointer("/components/schemas/Problem/properties/code/x-extensible-enum")
        .and_then(|v| v.as_array())
        .expect("listed")
        .len();
    assert_eq!(ProblemCode::ALL.len(), listed, "one variant per listed code");
}

#[test]
fn every_event_version_has_the_subject_of_its_asyncapi_channel() {
    use oneprotect_contracts::events::{EVENT_SUBJECTS, EVENT_VERSIONS, subject_of};
    let asyncapi: serde_json::Value =
        serde_json::from_str(oneprotect_contracts::contract::ASYNCAPI_JSON).expect("asyncapi json");
    let addresses: Vec<&str> = asyncapi["channels"]
        .as_object()
        .expect("channels")
        .values()
        .filter_map(|c| c["address"].as_str())
        .collect();
    assert_eq!(EVENT_SUBJECTS.len(), EVENT_VERSIONS.len());
    for (event_type, dataschema) in EVENT_VERSIONS {
        let subject = subject_of(dataschema).expect("every version has a subject");
        assert!(addresses.contains(&subject), "{subject} is a channel address of asyncapi.yaml");
        assert_eq!(subject, format!("oneprotect.events.{event_type}"), "the contract's naming");
    }
    assert_eq!(subject_of("https://schemas.oneprotect.invalid/unknown"), None);
}
