//! Every example under `specs/examples/` is checked against its schema:
//! `valid*` files must pass, `invalid*` files must be rejected.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::bundle;
use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::events::EventModel;
use crate::load::{EXAMPLES_DIR, Example, REJECTIONS_FILE, RawContracts};
use crate::openapi::ApiModel;

pub fn check(
    raw: &RawContracts,
    api: &ApiModel,
    events: &[EventModel],
    bundle_doc: &Value,
    diags: &mut Diagnostics,
) {
    let mut covered = BTreeSet::new();
    for ex in &raw.openapi_examples {
        if !api.schema_names.contains(&ex.target) {
            diags.push(
                Diagnostic::new(&ex.file, "", format!("no schema `{}` in components/schemas", ex.target))
                    .hint("name the example folder after the schema it illustrates"),
            );
            continue;
        }
        match bundle::compile_def(bundle_doc, &ex.target) {
            Ok(v) => judge(ex, &v, diags),
            Err(e) => diags.push(Diagnostic::new(
                raw.file("openapi.yaml"),
                format!("/components/schemas/{}", ex.target),
                format!("schema does not compile: {e}"),
            )),
        }
        if ex.expect_valid {
            covered.insert(ex.target.clone());
        }
    }
    for name in api.body_schemas() {
        if !covered.contains(&name) {
            diags.push(
                Diagnostic::new(
                    raw.file("openapi.yaml"),
                    format!("/components/schemas/{name}"),
                    "body schema has no valid example",
                )
                .hint(format!("add {}/{EXAMPLES_DIR}/openapi/{name}/valid.json", raw.display_root)),
            );
        }
    }

    let mut covered = BTreeSet::new();
    for ex in &raw.event_examples {
        let Some(model) = events.iter().find(|m| m.example_dir() == ex.target) else {
            diags.push(
                Diagnostic::new(&ex.file, "", format!("no event type `{}` in specs/events", ex.target)).hint(
                    "name the example folder after the event type (`<type>.v<N>` for versions after 1)",
                ),
            );
            continue;
        };
        match bundle::compile(&raw.event_schemas[&model.file_name]) {
            Ok(v) => judge(ex, &v, diags),
            Err(e) => diags.push(Diagnostic::new(
                raw.file(&format!("events/{}", model.file_name)),
                "",
                format!("schema does not compile: {e}"),
            )),
        }
        if ex.expect_valid {
            covered.insert(ex.target.clone());
        }
    }
    for model in events {
        if !covered.contains(&model.example_dir()) {
            diags.push(
                Diagnostic::new(
                    raw.file(&format!("events/{}", model.file_name)),
                    "",
                    "event has no valid example",
                )
                .hint(format!(
                    "add {}/{EXAMPLES_DIR}/events/{}/valid.json",
                    raw.display_root,
                    model.example_dir()
                )),
            );
        }
    }
}

fn judge(ex: &Example, validator: &jsonschema::Validator, diags: &mut Diagnostics) {
    let rejections = bundle::rejections(validator, &ex.value);
    if ex.expect_valid {
        for (_, ptr, msg) in rejections {
            diags.push(
                Diagnostic::new(
                    &ex.file,
                    ptr,
                    format!("example does not match schema `{}`: {msg}", ex.target),
                )
                .hint("fix the example, or the schema if the example is right"),
            );
        }
        return;
    }
    if rejections.is_empty() {
        diags.push(
            Diagnostic::new(&ex.file, "", format!("invalid example is accepted by schema `{}`", ex.target))
                .hint("tighten the schema so it rejects this instance, or rename the file to valid-*.json"),
        );
        return;
    }
    let name = ex.file.rsplit('/').next().unwrap_or_default();
    let found = rejections
        .iter()
        .map(|(k, p, _)| format!("`{k}` at `{}`", if p.is_empty() { "/" } else { p }))
        .collect::<Vec<_>>()
        .join(", ");
    match &ex.expect_rejection {
        None => {
            let (k, p, _) = &rejections[0];
            diags.push(
                Diagnostic::new(&ex.file, "", "invalid example does not say what it must be rejected for")
                    .hint(format!("add `{name}: {{keyword: {k}, pointer: '{p}'}}` to {REJECTIONS_FILE} beside it (rejected today for {found})")),
            );
        }
        Some(want) if !rejections.iter().any(|(k, p, _)| k == &want.keyword && p == &want.pointer) => {
            diags.push(
                Diagnostic::new(&ex.file, &want.pointer, format!("rejected for another reason than `{}` at `{}`: {found}", want.keyword, want.pointer))
                    .hint("the example no longer tests what it names: fix the example (or the schema), or its entry in rejections.yaml"),
            );
        }
        Some(_) => {}
    }
}
