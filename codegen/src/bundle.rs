//! Turns `components/schemas` into one JSON Schema (2020-12) document so the
//! `jsonschema` crate can enforce what generated types do not (bounds,
//! patterns, forbidden identity fields).

use serde_json::{Map, Value, json};

use crate::openapi::FORBIDDEN_PROPERTIES_EXT;

pub const BUNDLE_SCHEMA_DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// `{"$schema": …, "$defs": {Name: schema, …}}` with refs rewritten to `#/$defs/Name`.
pub fn openapi_bundle(openapi: &Value) -> Value {
    let mut defs = Map::new();
    if let Some(schemas) = openapi.pointer("/components/schemas").and_then(Value::as_object) {
        for (name, schema) in schemas {
            defs.insert(name.clone(), convert(schema));
        }
    }
    json!({ "$schema": BUNDLE_SCHEMA_DIALECT, "$defs": defs })
}

fn convert(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                match k.as_str() {
                    "$ref" => {
                        let r = v.as_str().unwrap_or_default();
                        let r = r.replacen("#/components/schemas/", "#/$defs/", 1);
                        out.insert(k.clone(), Value::String(r));
                    }
                    "example" | "xml" | "externalDocs" | "nullable" | "discriminator" => {}
                    // Property maps: keys are names, not keywords.
                    "properties" => {
                        let props = v
                            .as_object()
                            .map(|p| p.iter().map(|(n, s)| (n.clone(), convert(s))).collect::<Map<_, _>>())
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    _ if k.starts_with("x-") => {}
                    _ => {
                        out.insert(k.clone(), convert(v));
                    }
                }
            }
            if let Some(forbidden) = map.get(FORBIDDEN_PROPERTIES_EXT).and_then(Value::as_array) {
                let props = out.entry("properties").or_insert_with(|| Value::Object(Map::new()));
                if let Some(props) = props.as_object_mut() {
                    for name in forbidden.iter().filter_map(Value::as_str) {
                        props.insert(name.to_string(), Value::Bool(false));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(convert).collect()),
        other => other.clone(),
    }
}

/// Compiles a validator with the settings every consumer uses.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options().should_validate_formats(true).build(schema).map_err(|e| e.masked().to_string())
}

/// Validator for `#/$defs/<name>` of a bundle.
pub fn compile_def(bundle: &Value, name: &str) -> Result<jsonschema::Validator, String> {
    let mut root = bundle.clone();
    if let Some(obj) = root.as_object_mut() {
        obj.insert("$ref".into(), Value::String(format!("#/$defs/{name}")));
    }
    compile(&root)
}

/// Violations as (instance pointer, message without the offending value).
/// (keyword, instance pointer, message) of every violation.
pub fn rejections(validator: &jsonschema::Validator, instance: &Value) -> Vec<(String, String, String)> {
    validator
        .iter_errors(instance)
        .map(|e| (e.kind().keyword().to_string(), e.instance_path().to_string(), e.masked().to_string()))
        .collect()
}

pub fn violations(validator: &jsonschema::Validator, instance: &Value) -> Vec<(String, String)> {
    validator.iter_errors(instance).map(|e| (e.instance_path().to_string(), e.masked().to_string())).collect()
}
