//! The compatibility diff, rule by rule, against fixture pairs:
//! `compat/schema/<kind>.yaml` (a schema before and after, planted at every
//! site: parameter, request body, response body, event payload) and
//! `compat/spec/<rule>.yaml` (edits to a copy of `compat/base/`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use oneprotect_codegen::compat::{self, Level, Report, Spec, gate, output, rules};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat")
}

fn level(name: &str) -> Level {
    match name {
        "breaking" => Level::Breaking,
        "non-breaking" => Level::NonBreaking,
        "info" => Level::Info,
        other => panic!("unknown level {other} in a fixture"),
    }
}

/// The base contract as (relative file, parsed document) pairs.
fn base_docs() -> Vec<(String, Value)> {
    let root = fixtures().join("base");
    let mut docs = Vec::new();
    for rel in ["openapi.yaml", "asyncapi.yaml", "events/thing.happened.v1.schema.json"] {
        let text = std::fs::read_to_string(root.join(rel)).expect("fixture file");
        let v: Value = if rel.ends_with(".json") {
            serde_json::from_str(&text).expect("json")
        } else {
            serde_norway::from_str(&text).expect("yaml")
        };
        docs.push((rel.to_string(), v));
    }
    docs
}

fn write_docs(dir: &Path, docs: &[(String, Value)]) {
    std::fs::create_dir_all(dir.join("events")).expect("mkdir");
    for (rel, v) in docs {
        let text = if rel.ends_with(".json") {
            serde_json::to_string_pretty(v).expect("json")
        } else {
            serde_norway::to_string(v).expect("yaml")
        };
        std::fs::write(dir.join(rel), text).expect("write");
    }
}

fn doc_mut<'d>(docs: &'d mut [(String, Value)], file: &str) -> &'d mut Value {
    &mut docs
        .iter_mut()
        .find(|(f, _)| f == file)
        .unwrap_or_else(|| panic!("no {file} in the fixture contract"))
        .1
}

/// JSON Patch (RFC 6902) add/replace/remove, plus whole-file delete and copy.
fn apply(docs: &mut Vec<(String, Value)>, edit: &Value) {
    let file = edit["file"].as_str().expect("file");
    let op = edit["op"].as_str().expect("op");
    match op {
        "delete-file" => docs.retain(|(f, _)| f != file),
        "copy-file" => {
            let from = docs
                .iter()
                .find(|(f, _)| f == edit["from"].as_str().expect("from"))
                .expect("source")
                .1
                .clone();
            docs.push((file.to_string(), from));
        }
        _ => {
            let path = edit["path"].as_str().expect("path");
            let (parent, last) = path.rsplit_once('/').expect("pointer");
            let last = last.replace("~1", "/").replace("~0", "~");
            let doc = doc_mut(docs, file);
            let target = doc.pointer_mut(parent).unwrap_or_else(|| panic!("{file}#{parent} does not exist"));
            match (op, target) {
                ("remove", Value::Object(o)) => {
                    o.remove(&last).unwrap_or_else(|| panic!("{file}#{path} does not exist"));
                }
                ("remove", Value::Array(a)) => {
                    a.remove(last.parse().expect("index"));
                }
                ("add" | "replace", Value::Object(o)) => {
                    o.insert(last, edit["value"].clone());
                }
                ("add", Value::Array(a)) if last == "-" => a.push(edit["value"].clone()),
                (op, _) => panic!("unsupported edit {op} at {file}#{path}"),
            }
        }
    }
}

/// Diffs `base` against `revision` through real files, as the CLI does.
fn diff_docs(base: &[(String, Value)], revision: &[(String, Value)]) -> (Report, Spec, Spec) {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_docs(&tmp.path().join("base"), base);
    write_docs(&tmp.path().join("rev"), revision);
    let b = Spec::from_dir(&tmp.path().join("base")).expect("base spec");
    let r = Spec::from_dir(&tmp.path().join("rev")).expect("revision spec");
    (compat::diff(&b, &r), b, r)
}

fn spec_fixture(name: &str) -> Value {
    let text =
        std::fs::read_to_string(fixtures().join("spec").join(format!("{name}.yaml"))).expect("fixture");
    serde_norway::from_str(&text).expect("fixture yaml")
}

fn run_spec_fixture(fx: &Value) -> (Report, Spec, Spec) {
    let mut base = base_docs();
    for e in fx["both"].as_array().into_iter().flatten() {
        apply(&mut base, e);
    }
    let mut rev = base.clone();
    for e in fx["base"].as_array().into_iter().flatten() {
        apply(&mut base, e);
    }
    for e in fx["revision"].as_array().into_iter().flatten() {
        apply(&mut rev, e);
    }
    diff_docs(&base, &rev)
}

fn sorted_names(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join(dir))
        .expect("fixture dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().trim_end_matches(".yaml").to_string())
        .collect();
    names.sort();
    names
}

const SITES: [(&str, &str, &str); 4] = [
    ("request-parameter", "openapi.yaml", "/components/parameters/Filter/schema"),
    ("request-body", "openapi.yaml", "/components/schemas/ThingRequest/properties/x"),
    ("response-body", "openapi.yaml", "/components/schemas/Thing/properties/x"),
    ("event-payload", "events/thing.happened.v1.schema.json", "/properties/data/properties/x"),
];

/// (rule id, level) of every change of a schema fixture planted at a site.
fn run_schema_fixture(name: &str, site: usize) -> Vec<(String, Level)> {
    let text =
        std::fs::read_to_string(fixtures().join("schema").join(format!("{name}.yaml"))).expect("fixture");
    let fx: Value = serde_norway::from_str(&text).expect("yaml");
    let (_, file, ptr) = SITES[site];
    let (mut base, mut rev) = (base_docs(), base_docs());
    *doc_mut(&mut base, file).pointer_mut(ptr).expect("site") = fx["before"].clone();
    *doc_mut(&mut rev, file).pointer_mut(ptr).expect("site") = fx["after"].clone();
    let (report, ..) = diff_docs(&base, &rev);
    report.changes.into_iter().map(|c| (c.rule, c.level)).collect()
}

#[test]
fn each_schema_edit_is_judged_at_every_site_in_the_direction_data_flows() {
    let mut failures = Vec::new();
    for name in sorted_names("schema") {
        let text =
            std::fs::read_to_string(fixtures().join("schema").join(format!("{name}.yaml"))).expect("fixture");
        let fx: Value = serde_norway::from_str(&text).expect("yaml");
        let inbound = level(fx["request"].as_str().expect("request level"));
        let outbound = level(fx["response"].as_str().expect("response level"));
        // An event payload is read both ways: the worse of the two.
        let both = inbound.min(outbound);
        let property_edit = fx["before"]["type"] == "object" || fx["after"]["type"] == "object";
        for (i, (prefix, ..)) in SITES.iter().enumerate() {
            if property_edit && *prefix == "request-parameter" {
                continue;
            }
            let expected = match *prefix {
                "request-parameter" | "request-body" => inbound,
                "response-body" => outbound,
                _ => both,
            };
            let got = run_schema_fixture(&name, i);
            let want = vec![(format!("{prefix}-{name}"), expected)];
            if got != want {
                failures.push(format!("{name} at {prefix}: expected {want:?}, got {got:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn each_spec_edit_is_classified_by_exactly_its_rule() {
    let mut failures = Vec::new();
    for name in sorted_names("spec") {
        let fx = spec_fixture(&name);
        let expect: BTreeSet<String> = fx["expect"]
            .as_array()
            .expect("expect")
            .iter()
            .map(|v| v.as_str().expect("id").to_string())
            .collect();
        assert!(expect.contains(&name), "fixture {name} must expect its own rule");
        let (report, ..) = run_spec_fixture(&fx);
        let got: BTreeSet<String> = report.changes.iter().map(|c| c.rule.clone()).collect();
        if got != expect {
            failures.push(format!(
                "{name}: expected {expect:?}, got {got:?}\n{}",
                output::render(output::Format::Human, &report, "base", None)
            ));
        }
        let lvl = rules::lookup(&name).map(|r| r.level);
        if report.changes.iter().any(|c| c.rule == name && Some(c.level) != lvl) {
            failures.push(format!("{name}: reported at a level other than its catalogue level"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_rule_in_the_catalogue_has_a_fixture() {
    let schema_kinds = sorted_names("schema");
    let spec_rules: BTreeSet<String> = sorted_names("spec").into_iter().collect();
    let missing: Vec<&str> = rules::catalogue()
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| {
            !spec_rules.contains(*id)
                && !SITES.iter().any(|(p, ..)| {
                    id.strip_prefix(&format!("{p}-")).is_some_and(|k| schema_kinds.iter().any(|s| s == k))
                })
        })
        .collect();
    assert!(missing.is_empty(), "rules without a fixture: {missing:?}");
    assert!(rules::catalogue().len() >= 150, "the catalogue shrank to {}", rules::catalogue().len());
}

#[test]
fn an_edit_no_rule_judges_is_reported_unclassified_not_dropped() {
    for (file, pointer, value) in [
        ("openapi.yaml", "/components/schemas/Thing/properties/x/readOnly", Value::Bool(true)),
        (
            "openapi.yaml",
            "/components/schemas/Thing/properties/x/oneOf",
            serde_json::json!([{"type": "string"}, {"type": "integer"}]),
        ),
        ("openapi.yaml", "/paths/~1things/get/x-vendor-flag", Value::Bool(true)),
        (
            "events/thing.happened.v1.schema.json",
            "/properties/data/properties/x/const",
            Value::String("a".into()),
        ),
    ] {
        let base = base_docs();
        let mut rev = base.clone();
        apply(&mut rev, &serde_json::json!({"file": file, "op": "add", "path": pointer, "value": value}));
        let (report, ..) = diff_docs(&base, &rev);
        assert_eq!(report.changes.len(), 1, "{pointer}: {:?}", report.changes);
        assert_eq!(report.changes[0].rule, "unclassified");
        assert_eq!(report.changes[0].level, Level::Unclassified);
        assert_eq!(report.changes[0].revision.as_ref().map(|l| l.pointer.as_str()), Some(pointer));
    }
}

#[test]
fn identical_contracts_have_no_changes_and_reordered_keys_are_not_a_change() {
    let specs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs");
    let a = Spec::from_dir(&specs).expect("specs");
    assert!(compat::diff(&a, &a).changes.is_empty());
    let base = base_docs();
    let mut rev = base.clone();
    apply(
        &mut rev,
        &serde_json::json!({"file": "openapi.yaml", "op": "replace", "path": "/components/schemas/Thing/required", "value": ["id"]}),
    );
    let (report, ..) = diff_docs(&base, &rev);
    assert!(report.changes.is_empty(), "{:?}", report.changes);
}

#[test]
fn a_change_names_its_line_in_both_versions() {
    let fx = spec_fixture("request-parameter-became-required");
    let (report, ..) = run_spec_fixture(&fx);
    let c = &report.changes[0];
    // The fixture is rewritten through serde_norway: find the line by text.
    let rev_line = c.revision.as_ref().expect("revision location").line;
    assert!(rev_line > 1, "{c:?}");
    let real = Spec::from_dir(&fixtures().join("base")).expect("base");
    let mut edited = real.clone();
    edited.files.get_mut("openapi.yaml").expect("openapi").value["components"]["parameters"]["Filter"]["required"] =
        Value::Bool(true);
    let report = compat::diff(&real, &edited);
    let text = std::fs::read_to_string(fixtures().join("base/openapi.yaml")).expect("text");
    let filter_line = text.lines().position(|l| l.trim() == "Filter:").expect("Filter line") + 1;
    let base = report.changes[0].base.as_ref().expect("base location");
    assert_eq!(base.pointer, "/components/parameters/Filter");
    assert_eq!(base.line, filter_line);
}

fn gate_of(fx: &Value) -> Vec<gate::Refusal> {
    let (report, b, r) = run_spec_fixture(fx);
    gate::judge(&report, &b, &r)
}

#[test]
fn the_gate_refuses_a_removed_response_property_unless_the_major_version_is_raised() {
    let removal = serde_json::json!({"revision": [{"file": "openapi.yaml", "op": "remove", "path": "/components/schemas/Thing/properties/x"}]});
    let refused = gate_of(&removal);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].change.rule, "response-body-property-removed");
    assert!(refused[0].resolution.contains("2.0.0"), "{}", refused[0].resolution);

    let mut bumped = removal.clone();
    bumped["revision"]
        .as_array_mut()
        .expect("edits")
        .push(serde_json::json!({"file": "openapi.yaml", "op": "replace", "path": "/info/version", "value": "2.0.0"}));
    assert!(gate_of(&bumped).is_empty());

    let mut minor = removal;
    minor["revision"]
        .as_array_mut()
        .expect("edits")
        .push(serde_json::json!({"file": "openapi.yaml", "op": "replace", "path": "/info/version", "value": "1.1.0"}));
    assert_eq!(gate_of(&minor).len(), 1, "a minor bump does not declare a breaking change");
}

#[test]
fn the_gate_refuses_an_event_schema_broken_in_place_and_accepts_the_same_change_as_a_new_version() {
    let in_place = serde_json::json!({"revision": [
        {"file": "events/thing.happened.v1.schema.json", "op": "remove", "path": "/properties/data/properties/x"},
        {"file": "asyncapi.yaml", "op": "replace", "path": "/info/version", "value": "2.0.0"},
    ]});
    let refused = gate_of(&in_place);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].change.rule, "event-payload-property-removed");
    assert!(
        refused[0].resolution.contains("events/thing.happened.v2.schema.json"),
        "{}",
        refused[0].resolution
    );

    let mut base = base_docs();
    let v2_doc = {
        let mut v = base.iter().find(|(f, _)| f.ends_with("v1.schema.json")).expect("v1").1.clone();
        v["properties"]["data"]["properties"].as_object_mut().expect("props").remove("x");
        v
    };
    let mut rev = base.clone();
    rev.push(("events/thing.happened.v2.schema.json".to_string(), v2_doc));
    let (report, b, r) = diff_docs(&base, &rev);
    assert_eq!(report.changes.iter().map(|c| c.rule.as_str()).collect::<Vec<_>>(), ["event-schema-added"]);
    assert!(gate::judge(&report, &b, &r).is_empty());

    // Removing a version file needs the event catalogue's major version.
    base.retain(|_| true);
    let removal = serde_json::json!({"revision": [{"file": "events/thing.happened.v1.schema.json", "op": "delete-file"}]});
    assert_eq!(gate_of(&removal).len(), 1);
}

#[test]
fn the_gate_refuses_an_unclassified_change_and_says_how_to_resolve_it() {
    let fx = serde_json::json!({"revision": [{"file": "openapi.yaml", "op": "add", "path": "/components/schemas/Thing/properties/x/readOnly", "value": true}]});
    let refused = gate_of(&fx);
    assert_eq!(refused.len(), 1);
    assert!(refused[0].resolution.contains("no rule classifies"), "{}", refused[0].resolution);
}

#[test]
fn non_breaking_and_informational_changes_pass_the_gate() {
    for name in [
        "endpoint-added",
        "request-parameter-added-optional",
        "doc-changed",
        "response-error-status-added",
        "event-schema-added",
    ] {
        assert!(gate_of(&spec_fixture(name)).is_empty(), "{name} was refused");
    }
}

#[test]
fn reports_render_as_json_junit_and_github_annotations() {
    let fx = spec_fixture("request-parameter-became-required");
    let (report, b, r) = run_spec_fixture(&fx);
    let refusals = gate::judge(&report, &b, &r);

    let json: Value =
        serde_json::from_str(&output::render(output::Format::Json, &report, "specs", Some(&refusals)))
            .expect("json output parses");
    assert_eq!(json["summary"]["breaking"], 1);
    assert_eq!(json["summary"]["refused"], 1);
    assert_eq!(json["changes"][0]["rule"], "request-parameter-became-required");
    assert_eq!(json["changes"][0]["path"], "specs/openapi.yaml");
    assert!(json["changes"][0]["refused"].as_str().is_some_and(|s| s.contains("info.version")));

    let junit = output::render(output::Format::Junit, &report, "specs", Some(&refusals));
    assert!(junit.starts_with("<?xml"));
    assert_eq!(junit.matches("<testcase ").count(), report.changes.len());
    assert_eq!(junit.matches("<failure ").count(), 1);
    assert!(junit.contains("failures=\"1\""));

    let gh = output::render(output::Format::Github, &report, "specs", Some(&refusals));
    let line = gh.lines().next().expect("one annotation");
    assert!(line.starts_with("::error file=specs/openapi.yaml,line="), "{line}");
    assert!(line.contains("title=request-parameter-became-required::"), "{line}");
    assert!(!gh.lines().any(|l| !l.starts_with("::")), "every line is a workflow command: {gh}");

    let human = output::render(output::Format::Human, &report, "specs", Some(&refusals));
    assert!(human.contains("BREAKING") && human.contains("refused:"), "{human}");
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Fixture",
            "-c",
            "user.email=fixture@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .status()
        .expect("git")
        .success();
    assert!(ok, "git {args:?}");
}

#[test]
fn check_compat_against_a_git_revision_fails_naming_the_rule_and_passes_with_the_major_bump() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path();
    let specs = repo.join("specs");
    write_docs(&specs, &base_docs());
    git(repo, &["init", "-q", "-b", "main"]);
    git(repo, &["add", "."]);
    git(repo, &["commit", "-q", "-m", "base"]);

    let mut rev = base_docs();
    apply(
        &mut rev,
        &serde_json::json!({"file": "openapi.yaml", "op": "remove", "path": "/components/schemas/Thing/properties/x"}),
    );
    write_docs(&specs, &rev);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_oneprotect-codegen"))
            .current_dir(repo)
            .args(["check-compat", "--base", "main"])
            .output()
            .expect("codegen runs")
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("response-body-property-removed"), "{stdout}");
    assert!(stdout.contains("specs/openapi.yaml:"), "{stdout}");

    apply(
        &mut rev,
        &serde_json::json!({"file": "openapi.yaml", "op": "replace", "path": "/info/version", "value": "2.0.0"}),
    );
    write_docs(&specs, &rev);
    let out = run();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));

    let missing = Command::new(env!("CARGO_BIN_EXE_oneprotect-codegen"))
        .current_dir(repo)
        .args(["check-compat", "--base", "no-such-ref"])
        .output()
        .expect("runs");
    assert_eq!(missing.status.code(), Some(2), "an unresolvable base is a tool failure, not a pass");
}

#[test]
fn the_rule_catalogue_page_is_current() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/compat-rules.md");
    let on_disk = std::fs::read_to_string(&page).unwrap_or_default();
    assert!(
        on_disk == rules::markdown(),
        "docs/compat-rules.md is stale: run `cargo run -p oneprotect-codegen -- rules > docs/compat-rules.md`"
    );
}

#[test]
fn a_declared_principal_that_changes_is_a_breaking_scheme_change() {
    let mut base = base_docs();
    apply(
        &mut base,
        &serde_json::json!({"file": "openapi.yaml", "op": "add", "path": "/components/securitySchemes/adminBearer/x-oneprotect-principal", "value": "tenant-admin"}),
    );
    let mut rev = base.clone();
    apply(
        &mut rev,
        &serde_json::json!({"file": "openapi.yaml", "op": "replace", "path": "/components/securitySchemes/adminBearer/x-oneprotect-principal", "value": "agent"}),
    );
    let (report, ..) = diff_docs(&base, &rev);
    assert_eq!(
        report.changes.iter().map(|c| (c.rule.as_str(), c.level)).collect::<Vec<_>>(),
        [("security-scheme-changed", Level::Breaking)]
    );
}
