//! Each contract rule fails on a small broken copy of the real specs, with a
//! message naming the file and the JSON pointer.

use std::path::{Path, PathBuf};

use oneprotect_codegen::{Diagnostics, validate};
use serde_json::{Value, json};

fn real_specs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

/// A scratch copy of specs/ that a test may break.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(&real_specs(), dir.path());
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn edit_openapi(&self, f: impl FnOnce(&mut Value)) {
        let path = self.path("openapi.yaml");
        let mut doc: Value =
            serde_norway::from_str(&std::fs::read_to_string(&path).expect("read")).expect("yaml");
        f(&mut doc);
        std::fs::write(&path, serde_norway::to_string(&doc).expect("to yaml")).expect("write");
    }

    fn validate(&self) -> Result<(), Diagnostics> {
        validate(self.dir.path(), "specs").map(|_| ())
    }

    fn errors(&self) -> Diagnostics {
        self.validate().expect_err("the broken spec must fail validation")
    }
}

fn assert_reports(diags: &Diagnostics, file: &str, pointer: &str, needle: &str) {
    let hit = diags
        .iter()
        .any(|d| d.file == file && d.pointer == pointer && d.message.contains(needle) && d.hint.is_some());
    assert!(hit, "expected `{needle}` at {file}#{pointer}, got:\n{diags}");
}

#[test]
fn the_real_contracts_are_valid() {
    let contracts = validate(&real_specs(), "specs").unwrap_or_else(|d| panic!("{d}"));
    // Counted from the documents themselves, not written down here.
    let doc: Value =
        serde_norway::from_str(&std::fs::read_to_string(real_specs().join("openapi.yaml")).expect("read"))
            .expect("yaml");
    let methods = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| methods.iter().filter(|m| item.get(**m).is_some()).count())
        .sum();
    assert_eq!(contracts.api.operations.len(), operations);
    let event_files = std::fs::read_dir(real_specs().join("events")).expect("events").count();
    assert_eq!(contracts.events.len(), event_files);
}

#[test]
fn openapi_3_1_is_rejected_naming_the_version_field() {
    let f = Fixture::new();
    f.edit_openapi(|doc| doc["openapi"] = json!("3.1.0"));
    assert_reports(&f.errors(), "specs/openapi.yaml", "/openapi", "only 3.0.x");
}

#[test]
fn a_dangling_ref_is_rejected_at_its_pointer() {
    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["schemas"]["AgentList"]["properties"]["items"]["items"]["$ref"] =
            json!("#/components/schemas/NoSuchThing")
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/components/schemas/AgentList/properties/items/items/$ref",
        "dangling $ref",
    );
}

#[test]
fn a_duplicate_operation_id_is_rejected() {
    let f = Fixture::new();
    f.edit_openapi(|doc| doc["paths"]["/api/v1/agents"]["get"]["operationId"] = json!("getAgent"));
    let diags = f.errors();
    assert!(
        diags.iter().any(|d| d.file == "specs/openapi.yaml"
            && d.message.contains("duplicate operationId `getAgent`")
            && d.pointer.ends_with("/operationId")),
        "{diags}"
    );
}

#[test]
fn an_event_schema_missing_from_asyncapi_is_rejected() {
    let f = Fixture::new();
    let schema = std::fs::read_to_string(f.path("events/agent.revoked.v1.schema.json")).expect("read");
    std::fs::write(
        f.path("events/agent.quarantined.v1.schema.json"),
        schema
            .replace("agent.revoked", "agent.quarantined")
            .replace("AgentRevokedData", "AgentQuarantinedData"),
    )
    .expect("write");
    std::fs::create_dir_all(f.path("examples/events/agent.quarantined")).expect("mkdir");
    let example = std::fs::read_to_string(f.path("examples/events/agent.revoked/valid.json")).expect("read");
    std::fs::write(
        f.path("examples/events/agent.quarantined/valid.json"),
        example.replace("agent.revoked", "agent.quarantined"),
    )
    .expect("write");
    assert_reports(
        &f.errors(),
        "specs/events/agent.quarantined.v1.schema.json",
        "",
        "not the payload of any AsyncAPI message",
    );
}

#[test]
fn an_example_that_does_not_match_its_schema_is_rejected_at_the_instance_pointer() {
    let f = Fixture::new();
    let path = f.path("examples/openapi/EnrollmentExchangeRequest/valid.json");
    let mut example: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    example["hostname"] = json!(42);
    std::fs::write(&path, example.to_string()).expect("write");
    assert_reports(
        &f.errors(),
        "specs/examples/openapi/EnrollmentExchangeRequest/valid.json",
        "/hostname",
        "does not match schema `EnrollmentExchangeRequest`",
    );
}

#[test]
fn an_invalid_example_the_schema_accepts_is_rejected() {
    let f = Fixture::new();
    let ok =
        std::fs::read_to_string(f.path("examples/openapi/RevokeRequest/valid-empty.json")).expect("read");
    std::fs::write(f.path("examples/openapi/RevokeRequest/invalid-but-accepted.json"), ok).expect("write");
    assert_reports(
        &f.errors(),
        "specs/examples/openapi/RevokeRequest/invalid-but-accepted.json",
        "",
        "invalid example is accepted",
    );
}

#[test]
fn a_missing_documented_status_is_rejected() {
    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["paths"]["/api/v1/agent-enrollment/exchange"]["post"]["responses"]
            .as_object_mut()
            .expect("responses")
            .remove("413");
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/paths/~1api~1v1~1agent-enrollment~1exchange/post/responses",
        "does not document 413",
    );
}

#[test]
fn constructs_the_generators_cannot_handle_are_errors_before_generation() {
    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["schemas"]["RevokeRequest"]["properties"]["reason"]["anyOf"] =
            json!([{"type": "string"}, {"type": "integer"}]);
        doc["components"]["schemas"]["AgentList"]["properties"]["next_cursor"]["nullable"] = json!(true);
        doc["paths"]["/healthz"]["get"]["responses"]["200"]["content"] =
            json!({"application/health+json": {"schema": {"$ref": "#/components/schemas/HealthStatus"}}});
    });
    let diags = f.errors();
    assert_reports(
        &diags,
        "specs/openapi.yaml",
        "/components/schemas/RevokeRequest/properties/reason/anyOf",
        "`anyOf` is not supported",
    );
    assert_reports(
        &diags,
        "specs/openapi.yaml",
        "/components/schemas/AgentList/properties/next_cursor/nullable",
        "`nullable` is not supported",
    );
    assert_reports(
        &diags,
        "specs/openapi.yaml",
        "/paths/~1healthz/get/responses/200/content",
        "media type `application/health+json` is not supported",
    );
}

#[test]
fn an_event_payload_field_that_could_carry_a_secret_is_rejected() {
    let f = Fixture::new();
    let path = f.path("events/agent.enrolled.v1.schema.json");
    let mut schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    schema["$defs"]["AgentEnrolledData"]["properties"]["runtime_token"] = json!({"type": "string"});
    std::fs::write(&path, serde_json::to_string_pretty(&schema).expect("json")).expect("write");
    assert_reports(
        &f.errors(),
        "specs/events/agent.enrolled.v1.schema.json",
        "/$defs/AgentEnrolledData/properties/runtime_token",
        "looks like it carries a secret",
    );
}

#[test]
fn an_external_ref_in_an_event_schema_is_rejected() {
    let f = Fixture::new();
    let path = f.path("events/agent.revoked.v1.schema.json");
    let mut schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    schema["properties"]["data"]["$ref"] = json!("common.json#/$defs/AgentRevokedData");
    std::fs::write(&path, serde_json::to_string_pretty(&schema).expect("json")).expect("write");
    assert_reports(
        &f.errors(),
        "specs/events/agent.revoked.v1.schema.json",
        "/properties/data/$ref",
        "self-contained",
    );
}

#[test]
fn invalid_yaml_is_reported_with_the_file_not_a_panic() {
    let f = Fixture::new();
    std::fs::write(f.path("openapi.yaml"), "openapi: [unclosed\n").expect("write");
    let diags = f.errors();
    assert!(
        diags.iter().any(|d| d.file == "specs/openapi.yaml" && d.message.starts_with("not valid YAML")),
        "{diags}"
    );
}

#[test]
fn a_duplicate_yaml_key_is_an_error_with_its_line_not_a_silent_overwrite() {
    let f = Fixture::new();
    let path = f.path("openapi.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    let changed = text.replacen(
        "      operationId: listAgents\n",
        "      operationId: listAgents\n      operationId: listEveryAgent\n",
        1,
    );
    assert_ne!(text, changed, "the fixture edit applies");
    std::fs::write(&path, changed).expect("write");
    let diags = f.errors();
    let text = diags.to_string();
    assert!(
        text.contains("duplicate key") && text.contains("operationId") && text.contains("line "),
        "names the key and its line: {text}"
    );
}

#[test]
fn a_second_version_of_an_event_lives_beside_the_first_and_is_generated_as_its_own_type() {
    let f = Fixture::new();
    let v1 = std::fs::read_to_string(f.path("events/agent.revoked.v1.schema.json")).expect("read");
    let v2 = v1
        .replace("agent.revoked.v1.schema.json", "agent.revoked.v2.schema.json")
        .replace("AgentRevokedData", "AgentRevokedV2Data");
    std::fs::write(f.path("events/agent.revoked.v2.schema.json"), v2).expect("write");
    let asyncapi = std::fs::read_to_string(f.path("asyncapi.yaml")).expect("read");
    let asyncapi = asyncapi
        .replace(
            "      agentRevoked:\n        $ref: '#/components/messages/agentRevoked'\n",
            "      agentRevoked:\n        $ref: '#/components/messages/agentRevoked'\n      agentRevokedV2:\n        $ref: '#/components/messages/agentRevokedV2'\n",
        )
        .replace(
            "  messages:\n    agentEnrollmentTokenIssued:\n",
            "  messages:\n    agentRevokedV2:\n      name: agent.revoked\n      contentType: application/cloudevents+json\n      headers:\n        $ref: '#/components/schemas/RelayHeaders'\n      payload:\n        $ref: './events/agent.revoked.v2.schema.json'\n    agentEnrollmentTokenIssued:\n",
        );
    std::fs::write(f.path("asyncapi.yaml"), asyncapi).expect("write");
    std::fs::create_dir_all(f.path("examples/events/agent.revoked.v2")).expect("mkdir");
    let example = std::fs::read_to_string(f.path("examples/events/agent.revoked/valid.json")).expect("read");
    std::fs::write(
        f.path("examples/events/agent.revoked.v2/valid.json"),
        example.replace("agent.revoked.v1", "agent.revoked.v2"),
    )
    .expect("write");

    let contracts = validate(f.dir.path(), "specs").unwrap_or_else(|d| panic!("{d}"));
    let v2 = contracts.events.iter().find(|m| m.version == 2).expect("version 2 is a model");
    assert_eq!(
        (v2.event_type.as_str(), v2.module.as_str(), v2.data_type.as_str()),
        ("agent.revoked", "agent_revoked_v2", "AgentRevokedV2Data")
    );
    assert_eq!(contracts.events.iter().filter(|m| m.event_type == "agent.revoked").count(), 2);

    let files = oneprotect_codegen::generate::generate(&contracts, &real_specs().join("../rustfmt.toml"))
        .unwrap_or_else(|d| panic!("{d}"));
    let events = &files["events.rs"];
    assert!(events.contains("pub mod agent_revoked_v2"), "a module per version");
    assert!(events.contains("pub const EVENT_TYPES: [&str; 8usize]"), "one type, two versions");
    assert!(events.contains("pub const EVENT_VERSIONS: [(&str, &str); 9usize]"));

    // The compatibility gate accepts a new version file beside the old one.
    let base = oneprotect_codegen::compat::Spec::from_dir(&real_specs()).expect("base");
    let rev = oneprotect_codegen::compat::Spec::from_dir(f.dir.path()).expect("revision");
    let report = oneprotect_codegen::compat::diff(&base, &rev);
    let refused = oneprotect_codegen::compat::gate::judge(&report, &base, &rev);
    assert!(refused.is_empty(), "{:?}", refused.iter().map(|r| &r.change.rule).collect::<Vec<_>>());
    assert!(report.changes.iter().any(|c| c.rule == "event-schema-added"));
}

#[test]
fn an_event_file_without_a_version_is_rejected() {
    let f = Fixture::new();
    std::fs::copy(f.path("events/agent.revoked.v1.schema.json"), f.path("events/agent.revoked.schema.json"))
        .expect("copy");
    assert_reports(&f.errors(), "specs/events/agent.revoked.schema.json", "", "unexpected file");
    let g = Fixture::new();
    std::fs::copy(
        g.path("events/agent.revoked.v1.schema.json"),
        g.path("events/agent.revoked.v0.schema.json"),
    )
    .expect("copy");
    assert_reports(&g.errors(), "specs/events/agent.revoked.v0.schema.json", "", "unexpected file");
}

#[test]
fn every_diagnostic_names_its_line_and_column_and_renders_as_json_sarif_and_github() {
    use oneprotect_codegen::diagnostics::DiagnosticFormat;
    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["schemas"]["AgentList"]["properties"]["items"]["items"]["$ref"] =
            json!("#/components/schemas/NoSuchThing")
    });
    let diags = f.errors();
    let d = diags.iter().find(|d| d.message.contains("dangling $ref")).expect("dangling ref reported");
    let text = std::fs::read_to_string(f.path("openapi.yaml")).expect("read");
    let (line, column) = d.position.expect("located");
    let at = text.lines().nth(line - 1).expect("line exists");
    assert!(at.contains("NoSuchThing"), "line {line} is `{at}`");
    assert_eq!(column, at.len() - at.trim_start().len() + 1);
    assert!(
        diags
            .to_string()
            .contains(&format!("specs/openapi.yaml:{line}:{column}: #/components/schemas/AgentList")),
        "{diags}"
    );

    let json: Value = serde_json::from_str(&diags.render(DiagnosticFormat::Json)).expect("json");
    assert!(
        json["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .any(|e| e["line"] == line && e["file"] == "specs/openapi.yaml")
    );
    let sarif: Value = serde_json::from_str(&diags.render(DiagnosticFormat::Sarif)).expect("sarif");
    assert_eq!(sarif["version"], "2.1.0");
    let results = sarif["runs"][0]["results"].as_array().expect("results");
    assert_eq!(results.len(), diags.len());
    assert!(results.iter().any(|r| r["locations"][0]["physicalLocation"]["region"]["startLine"] == line));
    let gh = diags.render(DiagnosticFormat::Github);
    assert_eq!(gh.lines().count(), diags.len());
    assert!(gh.lines().all(|l| l.starts_with("::error file=")), "{gh}");
    assert!(gh.contains(&format!("line={line},col={column}")), "{gh}");
}

#[test]
fn composition_or_nullable_in_a_parameter_schema_is_rejected() {
    for (kw, value) in [
        ("oneOf", json!([{"type": "integer"}, {"type": "string"}])),
        ("nullable", json!(true)),
        ("anyOf", json!([{"type": "integer"}])),
    ] {
        let f = Fixture::new();
        f.edit_openapi(|doc| doc["components"]["parameters"]["Limit"]["schema"][kw] = value.clone());
        let diags = f.errors();
        assert!(
            diags.iter().any(|d| d.pointer.ends_with(&format!("/schema/{kw}"))
                && d.message.contains("parameter `limit`")
                && d.hint.is_some()),
            "{kw}: {diags}"
        );
    }
}

#[test]
fn a_misspelled_malformed_or_misplaced_oneprotect_extension_is_rejected() {
    let op = "/api/v1/agent-enrollment/tokens";
    let f = Fixture::new();
    f.edit_openapi(|doc| doc["paths"][op]["post"]["x-oneprotect-max-body-byte"] = json!(1024));
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/paths/~1api~1v1~1agent-enrollment~1tokens/post/x-oneprotect-max-body-byte",
        "unknown extension",
    );

    let f = Fixture::new();
    f.edit_openapi(|doc| doc["paths"][op]["post"]["x-oneprotect-max-body-bytes"] = json!("1MB"));
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/paths/~1api~1v1~1agent-enrollment~1tokens/post/x-oneprotect-max-body-bytes",
        "whole number of bytes",
    );

    let f = Fixture::new();
    f.edit_openapi(|doc| doc["paths"][op]["post"]["x-oneprotect-max-body-bytes"] = json!(0));
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/paths/~1api~1v1~1agent-enrollment~1tokens/post/x-oneprotect-max-body-bytes",
        "whole number of bytes",
    );

    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["schemas"]["Problem"]["x-oneprotect-max-body-bytes"] = json!(1024)
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/components/schemas/Problem/x-oneprotect-max-body-bytes",
        "not allowed here",
    );

    let f = Fixture::new();
    f.edit_openapi(|doc| doc["paths"][op]["post"]["x-oneprotect-max-body-bytes"] = json!(131072));
    f.validate().unwrap_or_else(|d| panic!("a well-formed limit is accepted: {d}"));
}

#[test]
fn a_client_certificate_extension_needs_a_boolean_and_a_security_scheme() {
    let public = "/api/v1/agent-enrollment/exchange";
    let agent = "/api/v1/agents/{agent_id}/telemetry/heartbeat";
    let f = Fixture::new();
    f.edit_openapi(|doc| doc["paths"][agent]["post"]["x-oneprotect-client-certificate"] = json!("yes"));
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/paths/~1api~1v1~1agents~1{agent_id}~1telemetry~1heartbeat/post/x-oneprotect-client-certificate",
        "must be `true` or `false`",
    );

    let f = Fixture::new();
    f.edit_openapi(|doc| doc["paths"][public]["post"]["x-oneprotect-client-certificate"] = json!(true));
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/paths/~1api~1v1~1agent-enrollment~1exchange/post/x-oneprotect-client-certificate",
        "without a security scheme",
    );

    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["schemas"]["Problem"]["x-oneprotect-client-certificate"] = json!(true)
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/components/schemas/Problem/x-oneprotect-client-certificate",
        "not allowed here",
    );
}

#[test]
fn specification_extensions_are_accepted_where_openapi_allows_them() {
    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["paths"]["/api/v1/agents"]["get"]["responses"]["x-vendor-note"] = json!("reviewed");
        doc["paths"]["/api/v1/agents"]["x-vendor-owner"] = json!("platform");
        doc["x-vendor-top"] = json!({"a": 1});
    });
    f.validate().unwrap_or_else(|d| panic!("x- keys are extensions, not statuses or paths: {d}"));
}

#[test]
fn a_problem_field_of_the_wrong_type_is_rejected_before_it_generates_code_that_does_not_compile() {
    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["schemas"]["Problem"]["properties"]["status"] =
            json!({"type": "integer", "format": "int64"})
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/components/schemas/Problem/properties/status",
        "format: uint16",
    );
    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["schemas"]["Problem"]["properties"]["code"] = json!({"type": "integer"})
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/components/schemas/Problem/properties/code",
        "must be `type: string`",
    );
}

#[test]
fn problem_codes_must_be_listed_as_an_extensible_enum_of_distinct_strings() {
    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["schemas"]["Problem"]["properties"]["code"]
            .as_object_mut()
            .expect("code")
            .remove("x-extensible-enum");
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/components/schemas/Problem/properties/code",
        "must list every code",
    );

    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["schemas"]["Problem"]["properties"]["code"]["x-extensible-enum"] =
            json!(["not_found", "not_found"])
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/components/schemas/Problem/properties/code/x-extensible-enum",
        "distinct strings",
    );

    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["schemas"]["Problem"]["properties"]["code"]["x-extensible-enum"] =
            json!(["Not Found"])
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/components/schemas/Problem/properties/code/x-extensible-enum/0",
        "snake_case",
    );

    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["schemas"]["Problem"]["properties"]["status"]["x-extensible-enum"] = json!(["a"])
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/components/schemas/Problem/properties/status/x-extensible-enum",
        "`type: string` only",
    );
}

#[test]
fn who_holds_a_credential_is_declared_on_the_scheme_and_decides_the_required_refusals() {
    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["securitySchemes"]["agentRuntimeBearer"]
            .as_object_mut()
            .expect("scheme")
            .remove("x-oneprotect-principal");
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/components/securitySchemes/agentRuntimeBearer/x-oneprotect-principal",
        "must say who holds",
    );

    let f = Fixture::new();
    f.edit_openapi(|doc| {
        doc["components"]["securitySchemes"]["agentRuntimeBearer"]["x-oneprotect-principal"] = json!("robot")
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/components/securitySchemes/agentRuntimeBearer/x-oneprotect-principal",
        "must say who holds",
    );

    // The scheme's name no longer matters: renamed without "Admin", a
    // tenant-admin operation must still document 403 and 404.
    let f = Fixture::new();
    let path = f.path("openapi.yaml");
    let text = std::fs::read_to_string(&path).expect("read").replace("tenantAdminBearer", "operatorBearer");
    std::fs::write(&path, text).expect("write");
    f.validate().unwrap_or_else(|d| panic!("a renamed scheme is still valid: {d}"));
    f.edit_openapi(|doc| {
        let responses =
            doc["paths"]["/api/v1/agents/{agent_id}"]["get"]["responses"].as_object_mut().expect("responses");
        responses.remove("403");
        responses.remove("404");
    });
    let diags = f.errors();
    assert!(diags.iter().any(|d| d.message.contains("does not document 403")), "{diags}");
    assert!(diags.iter().any(|d| d.message.contains("does not document 404")), "{diags}");
}

#[test]
fn an_invalid_example_rejected_for_another_reason_than_it_names_fails() {
    let f = Fixture::new();
    f.edit_openapi(|doc| {
        let schema = &mut doc["components"]["schemas"]["EnrollmentTokenIssueRequest"];
        schema["properties"]["ttl_seconds"].as_object_mut().expect("ttl").remove("maximum");
        schema["properties"]["purpose"] = json!({"type": "string"});
        schema["required"] = json!(["ttl_seconds", "purpose"]);
    });
    let diags = f.errors();
    let file = "specs/examples/openapi/EnrollmentTokenIssueRequest/invalid-ttl-over-30-days.json";
    assert!(
        diags.iter().any(|d| d.file == file
            && d.message.contains("rejected for another reason than `maximum` at `/ttl_seconds`")
            && d.message.contains("`required`")),
        "{diags}"
    );
}

#[test]
fn every_invalid_example_says_what_it_must_be_rejected_for_and_every_entry_names_an_example() {
    let f = Fixture::new();
    let folder = f.path("examples/openapi/EnrollmentTokenIssueRequest");
    std::fs::copy(folder.join("invalid-missing-ttl.json"), folder.join("invalid-unexplained.json"))
        .expect("copy");
    assert_reports(
        &f.errors(),
        "specs/examples/openapi/EnrollmentTokenIssueRequest/invalid-unexplained.json",
        "",
        "does not say what it must be rejected for",
    );

    let g = Fixture::new();
    let rejections = g.path("examples/openapi/EnrollmentTokenIssueRequest/rejections.yaml");
    let text = std::fs::read_to_string(&rejections).expect("read");
    std::fs::write(&rejections, format!("{text}invalid-gone.json: {{keyword: required, pointer: ''}}\n"))
        .expect("write");
    assert_reports(
        &g.errors(),
        "specs/examples/openapi/EnrollmentTokenIssueRequest/rejections.yaml",
        "/invalid-gone.json",
        "not an invalid example",
    );
}

#[test]
fn a_problem_code_the_generated_runtime_answers_with_must_be_listed() {
    let f = Fixture::new();
    f.edit_openapi(|doc| {
        let codes = doc["components"]["schemas"]["Problem"]["properties"]["code"]["x-extensible-enum"]
            .as_array_mut()
            .expect("codes");
        codes.retain(|c| c != "payload_too_large");
    });
    assert_reports(
        &f.errors(),
        "specs/openapi.yaml",
        "/components/schemas/Problem/properties/code/x-extensible-enum",
        "`payload_too_large`",
    );
}

#[test]
fn a_channel_address_must_be_a_publishable_nats_subject_of_its_own() {
    let original = std::fs::read_to_string(real_specs().join("asyncapi.yaml")).expect("read");
    let cases = [
        ("oneprotect.events.agent.*.revoked", "is not a NATS subject"),
        ("oneprotect.events.agent.>", "is not a NATS subject"),
        ("oneprotect.events..agent.revoked", "is not a NATS subject"),
        ("oneprotect.events.agent revoked", "is not a NATS subject"),
        ("oneprotect.events.agent.enrolled", "is also the address of channel"),
    ];
    for (address, needle) in cases {
        let f = Fixture::new();
        let edited = original
            .replace("address: oneprotect.events.agent.revoked\n", &format!("address: '{address}'\n"));
        assert_ne!(edited, original, "the fixture names the agent.revoked channel");
        std::fs::write(f.path("asyncapi.yaml"), edited).expect("write");
        assert_reports(&f.errors(), "specs/asyncapi.yaml", "/channels/agentRevoked/address", needle);
    }
}

#[test]
fn publishable_subjects_are_dot_separated_tokens_without_wildcards() {
    use oneprotect_codegen::events::is_publishable_subject;
    assert!(is_publishable_subject("oneprotect.events.agent.enrolled"));
    assert!(is_publishable_subject("a-b_c.D9"));
    for bad in ["", ".", "a.", ".a", "a..b", "a.*", "a.>", "a b", "a\tb", "ä.b", &"a".repeat(256)] {
        assert!(!is_publishable_subject(bad), "{bad:?}");
    }
    assert!(is_publishable_subject(&"a".repeat(255)), "255 bytes is the longest accepted");
}

#[test]
fn the_contract_names_a_nats_server_and_every_message_the_de_duplication_header() {
    let original = std::fs::read_to_string(real_specs().join("asyncapi.yaml")).expect("read");
    let cases = [
        (
            "    protocol: nats\n",
            "    protocol: kafka\n",
            "/servers/platform-events/protocol",
            "publishes to NATS only",
        ),
        (
            "    host: nats.example.invalid:4222\n",
            "    host: ''\n",
            "/servers/platform-events/host",
            "needs a host",
        ),
        (
            "      required:\n        - Nats-Msg-Id\n",
            "",
            "/components/messages/agentRevoked/headers",
            "required `Nats-Msg-Id` header",
        ),
        (
            "        Nats-Msg-Id:\n          type: string\n",
            "        Nats-Msg-Id:\n          type: integer\n",
            "/components/messages/agentEnrolled/headers",
            "required `Nats-Msg-Id` header",
        ),
    ];
    for (from, to, at, needle) in cases {
        let f = Fixture::new();
        let edited = original.replacen(from, to, 1);
        assert_ne!(edited, original, "the fixture contains {from:?}");
        std::fs::write(f.path("asyncapi.yaml"), edited).expect("write");
        assert_reports(&f.errors(), "specs/asyncapi.yaml", at, needle);
    }
    // A message without headers, and a contract without servers.
    let f = Fixture::new();
    let edited = original.replacen(
        "      headers:\n        $ref: '#/components/schemas/RelayHeaders'\n      payload:\n        $ref: './events/agent.revoked.v1.schema.json'",
        "      payload:\n        $ref: './events/agent.revoked.v1.schema.json'",
        1,
    );
    assert_ne!(edited, original);
    std::fs::write(f.path("asyncapi.yaml"), edited).expect("write");
    assert_reports(
        &f.errors(),
        "specs/asyncapi.yaml",
        "/components/messages/agentRevoked/headers",
        "Nats-Msg-Id",
    );
    let f = Fixture::new();
    let start = original.find("servers:\n").expect("servers");
    let end = original.find("channels:\n").expect("channels");
    std::fs::write(f.path("asyncapi.yaml"), format!("{}{}", &original[..start], &original[end..]))
        .expect("write");
    assert_reports(&f.errors(), "specs/asyncapi.yaml", "/servers", "no server");
}
