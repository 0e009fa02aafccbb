//! Reads the contract files from `specs/` without interpreting them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::diagnostics::{Diagnostic, Diagnostics, pointer};

pub const OPENAPI_FILE: &str = "openapi.yaml";
pub const ASYNCAPI_FILE: &str = "asyncapi.yaml";
pub const EVENTS_DIR: &str = "events";
pub const EXAMPLES_DIR: &str = "examples";
/// Every event schema file ends so; before it, `.v<N>` names the version.
pub const EVENT_SCHEMA_SUFFIX: &str = ".schema.json";

/// `agent.enrolled.v2.schema.json` → (`agent.enrolled`, 2). Versions count
/// from 1; a breaking change to a published event is a new version file
/// beside the old one.
pub fn event_file_parts(name: &str) -> Option<(&str, u32)> {
    let stem = name.strip_suffix(EVENT_SCHEMA_SUFFIX)?;
    let (event_type, version) = stem.rsplit_once(".v")?;
    let digits_only =
        !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) && !version.starts_with('0');
    let n: u32 = if digits_only { version.parse().ok()? } else { return None };
    (!event_type.is_empty()).then_some((event_type, n))
}

/// One example instance and what it is expected to do.
#[derive(Debug, Clone)]
pub struct Example {
    /// Display path, e.g. `specs/examples/openapi/Problem/valid.json`.
    pub file: String,
    /// The schema (OpenAPI component name or event type) it targets.
    pub target: String,
    pub expect_valid: bool,
    /// For an invalid example: the keyword and instance pointer it must be
    /// rejected for, from `rejections.yaml` beside it.
    pub expect_rejection: Option<ExpectedRejection>,
    pub value: Value,
}

/// Why an invalid example must be rejected: a JSON Schema keyword at an
/// instance pointer. Another rejection (a new required field, say) does
/// not count: the example would no longer test what it names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedRejection {
    pub keyword: String,
    pub pointer: String,
}

/// The file beside invalid examples that says what each must be rejected for.
pub const REJECTIONS_FILE: &str = "rejections.yaml";

/// The raw contract documents.
#[derive(Debug, Clone)]
pub struct RawContracts {
    /// Display prefix for file names (`specs`).
    pub display_root: String,
    pub openapi_text: String,
    pub openapi: Value,
    pub asyncapi: Value,
    /// File name (e.g. `agent.enrolled.v1.schema.json`) → schema.
    pub event_schemas: BTreeMap<String, Value>,
    /// File name → exact bytes, so generated copies are faithful.
    pub event_schema_texts: BTreeMap<String, String>,
    pub openapi_examples: Vec<Example>,
    pub event_examples: Vec<Example>,
    /// SHA-256 over every input that influences generation.
    pub spec_sha256: String,
}

impl RawContracts {
    pub fn file(&self, name: &str) -> String {
        format!("{}/{}", self.display_root, name)
    }
}

fn read(path: &Path, display: &str, diags: &mut Diagnostics) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            diags.push(
                Diagnostic::new(display, "", format!("cannot read file: {e}"))
                    .hint("create the file or pass the right --specs directory"),
            );
            None
        }
    }
}

fn parse_yaml(text: &str, display: &str, diags: &mut Diagnostics) -> Option<Value> {
    // YAML's own mapping type refuses a repeated key (with its line and
    // column); read into JSON directly, the last one would silently win
    // (a second `operationId` renames a method, a second path key drops an
    // operation).
    if let Err(e) = serde_norway::from_str::<serde_norway::Value>(text)
        && e.to_string().contains("duplicate entry")
    {
        diags.push(
            Diagnostic::new(display, "", format!("duplicate key: {e}"))
                .hint("keep one of the two keys; YAML would keep only the last"),
        );
        return None;
    }
    match serde_norway::from_str::<Value>(text) {
        Ok(v) => Some(v),
        Err(e) => {
            diags.push(
                Diagnostic::new(display, "", format!("not valid YAML: {e}"))
                    .hint("fix the YAML syntax at the reported line"),
            );
            None
        }
    }
}

fn parse_json(text: &str, display: &str, diags: &mut Diagnostics) -> Option<Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Some(v),
        Err(e) => {
            diags.push(
                Diagnostic::new(display, "", format!("not valid JSON: {e}"))
                    .hint("fix the JSON syntax at the reported line"),
            );
            None
        }
    }
}

fn sorted_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    Ok(entries)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Loads every contract file under `specs_dir`. `display_root` prefixes file
/// names in diagnostics.
/// Without `events`, `asyncapi.yaml`, `events/` and `examples/events/` are
/// not part of the contract and are not read.
pub fn load(specs_dir: &Path, display_root: &str, events: bool) -> Result<RawContracts, Diagnostics> {
    let mut diags = Diagnostics::default();
    let disp = |name: &str| format!("{display_root}/{name}");

    let openapi_text =
        read(&specs_dir.join(OPENAPI_FILE), &disp(OPENAPI_FILE), &mut diags).unwrap_or_default();
    let openapi = parse_yaml(&openapi_text, &disp(OPENAPI_FILE), &mut diags).unwrap_or(Value::Null);
    let (asyncapi_text, asyncapi) = if events {
        let text = read(&specs_dir.join(ASYNCAPI_FILE), &disp(ASYNCAPI_FILE), &mut diags).unwrap_or_default();
        let value = parse_yaml(&text, &disp(ASYNCAPI_FILE), &mut diags).unwrap_or(Value::Null);
        (text, value)
    } else {
        (String::new(), Value::Null)
    };

    let mut hasher = Sha256::new();
    let mut hash_input = |name: &str, text: &str| {
        hasher.update(name.as_bytes());
        hasher.update([0u8]);
        hasher.update(text.as_bytes());
        hasher.update([0u8]);
    };
    hash_input(OPENAPI_FILE, &openapi_text);
    hash_input(ASYNCAPI_FILE, &asyncapi_text);

    let mut event_schemas = BTreeMap::new();
    let mut event_schema_texts = BTreeMap::new();
    let events_dir = specs_dir.join(EVENTS_DIR);
    match if events { sorted_entries(&events_dir) } else { Ok(Vec::new()) } {
        Ok(entries) => {
            for path in entries {
                let name = file_name(&path);
                let display = disp(&format!("{EVENTS_DIR}/{name}"));
                if event_file_parts(&name).is_none() {
                    diags
                        .push(Diagnostic::new(display, "", "unexpected file in specs/events").hint(format!(
                        "event schemas are named <event.type>.v<N>{EVENT_SCHEMA_SUFFIX}, N counting from 1"
                    )));
                    continue;
                }
                if let Some(text) = read(&path, &display, &mut diags)
                    && let Some(value) = parse_json(&text, &display, &mut diags)
                {
                    hash_input(&format!("{EVENTS_DIR}/{name}"), &text);
                    event_schemas.insert(name.clone(), value);
                    event_schema_texts.insert(name, text);
                }
            }
        }
        Err(e) => diags.push(Diagnostic::new(disp(EVENTS_DIR), "", format!("cannot list directory: {e}"))),
    }

    let mut openapi_examples = Vec::new();
    let mut event_examples = Vec::new();
    let kinds: &[&str] = if events { &["openapi", "events"] } else { &["openapi"] };
    for (kind, out) in [("openapi", &mut openapi_examples), ("events", &mut event_examples)]
        .into_iter()
        .filter(|(k, _)| kinds.contains(k))
    {
        let dir = specs_dir.join(EXAMPLES_DIR).join(kind);
        let Ok(targets) = sorted_entries(&dir) else {
            diags.push(Diagnostic::new(
                disp(&format!("{EXAMPLES_DIR}/{kind}")),
                "",
                "missing examples directory",
            ));
            continue;
        };
        for target_dir in targets.into_iter().filter(|p| p.is_dir()) {
            let target = file_name(&target_dir);
            let Ok(files) = sorted_entries(&target_dir) else { continue };
            let mut expectations: BTreeMap<String, ExpectedRejection> = BTreeMap::new();
            let rejections_display = disp(&format!("{EXAMPLES_DIR}/{kind}/{target}/{REJECTIONS_FILE}"));
            let first = out.len();
            for path in files {
                let name = file_name(&path);
                let display = disp(&format!("{EXAMPLES_DIR}/{kind}/{target}/{name}"));
                if name == REJECTIONS_FILE {
                    if let Some(text) = read(&path, &display, &mut diags) {
                        match serde_norway::from_str::<BTreeMap<String, ExpectedRejection>>(&text) {
                            Ok(map) => expectations = map,
                            Err(e) => diags.push(
                                Diagnostic::new(&display, "", format!("not a map of example file → {{keyword, pointer}}: {e}"))
                                    .hint("write `invalid-foo.json: {keyword: maximum, pointer: /ttl_seconds}` per invalid example"),
                            ),
                        }
                    }
                    continue;
                }
                let expect_valid = if name.starts_with("valid") && name.ends_with(".json") {
                    true
                } else if name.starts_with("invalid") && name.ends_with(".json") {
                    false
                } else {
                    diags.push(
                        Diagnostic::new(
                            display,
                            "",
                            format!("example file name must start with `valid` or `invalid` and end in `.json` (or be {REJECTIONS_FILE})"),
                        )
                        .hint("rename it, e.g. valid-minimal.json or invalid-missing-nonce.json"),
                    );
                    continue;
                };
                if let Some(text) = read(&path, &display, &mut diags)
                    && let Some(value) = parse_json(&text, &display, &mut diags)
                {
                    out.push(Example {
                        file: display,
                        target: target.clone(),
                        expect_valid,
                        expect_rejection: None,
                        value,
                    });
                }
            }
            for ex in out[first..].iter_mut().filter(|e| !e.expect_valid) {
                let name = ex.file.rsplit('/').next().unwrap_or_default().to_string();
                ex.expect_rejection = expectations.remove(&name);
            }
            for name in expectations.keys() {
                diags.push(
                    Diagnostic::new(
                        &rejections_display,
                        pointer([name.as_str()]),
                        format!("`{name}` is not an invalid example in this folder"),
                    )
                    .hint("remove the entry or restore the example"),
                );
            }
        }
    }

    let spec_sha256 = hex(&hasher.finalize());
    diags.into_result()?;
    Ok(RawContracts {
        display_root: display_root.to_string(),
        openapi_text,
        openapi,
        asyncapi,
        event_schemas,
        event_schema_texts,
        openapi_examples,
        event_examples,
        spec_sha256,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
