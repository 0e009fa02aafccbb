//! Rules for the event schemas in `specs/events/` and `specs/asyncapi.yaml`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::diagnostics::{Diagnostic, Diagnostics, escape_token, pointer};
use crate::load::{ASYNCAPI_FILE, EVENTS_DIR, RawContracts, event_file_parts};
use crate::openapi::pascal_case;

pub const ENVELOPE_FIELDS: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "dataschema",
    "subject",
    "tenantid",
    "data",
];

/// One event type and what the generators need of it.
#[derive(Debug, Clone)]
pub struct EventModel {
    /// `agent.enrolled`
    pub event_type: String,
    /// `agent.enrolled.v1.schema.json`
    pub file_name: String,
    /// `1` (from `.v1.`): versions of one type live side by side.
    pub version: u32,
    /// `AgentEnrolledData` (version 1), `AgentEnrolledV2Data` (version 2).
    pub data_type: String,
    /// `agent_enrolled` (version 1), `agent_enrolled_v2` (version 2).
    pub module: String,
    /// The `dataschema` URI the envelope pins.
    pub dataschema: String,
    /// The address of the AsyncAPI channel that carries it: the subject an
    /// event of this version is published on.
    pub subject: String,
}

impl EventModel {
    /// The folder of its examples under `specs/examples/events/`: the event
    /// type for version 1, `<type>.v<N>` after it.
    pub fn example_dir(&self) -> String {
        if self.version == 1 {
            self.event_type.clone()
        } else {
            format!("{}.v{}", self.event_type, self.version)
        }
    }
}

/// Property-name fragments that must never appear in an event payload.
const SECRET_FRAGMENTS: [&str; 8] =
    ["secret", "password", "private", "csr", "pem", "nonce", "bearer", "credential"];

fn secret_like(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if let Some(f) = SECRET_FRAGMENTS.iter().find(|f| lower.contains(*f)) {
        return Some(f);
    }
    if lower.contains("token") && !lower.ends_with("_id") {
        return Some("token");
    }
    if lower.contains("fingerprint") && !(lower.ends_with("_hash") || lower.ends_with("sha256")) {
        return Some("fingerprint");
    }
    None
}

pub fn check(raw: &RawContracts, diags: &mut Diagnostics) -> Vec<EventModel> {
    let mut models = Vec::new();
    for (file_name, schema) in &raw.event_schemas {
        let file = raw.file(&format!("{EVENTS_DIR}/{file_name}"));
        let before = diags.len();
        let Some((event_type, version)) = event_file_parts(file_name) else { continue };
        let event_type = event_type.to_string();
        let versioned = if version == 1 { String::new() } else { format!("V{version}") };
        if let Err(e) = jsonschema::meta::validate(schema) {
            diags.push(
                Diagnostic::new(
                    &file,
                    e.instance_path().to_string(),
                    format!("not a valid JSON Schema: {}", e.masked()),
                )
                .hint("fix the schema so it validates against its $schema meta-schema"),
            );
            continue;
        }
        check_event_refs(schema, schema, String::new(), &file, diags);
        let declared =
            schema.pointer("/properties/type/enum").and_then(Value::as_array).cloned().unwrap_or_default();
        if declared.len() != 1 || declared[0].as_str() != Some(&event_type) {
            diags.push(
                Diagnostic::new(
                    &file,
                    "/properties/type/enum",
                    format!("must be exactly [\"{event_type}\"] to match the file name"),
                )
                .hint("rename the file or fix the enum"),
            );
        }
        let required: BTreeSet<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for field in ENVELOPE_FIELDS {
            if !required.contains(field) {
                diags.push(
                    Diagnostic::new(
                        &file,
                        "/required",
                        format!("CloudEvents envelope field `{field}` is not required"),
                    )
                    .hint(format!("add `{field}` to the top-level `required`")),
                );
            }
            if schema.pointer(&format!("/properties/{field}")).is_none() {
                diags.push(
                    Diagnostic::new(&file, "/properties", format!("envelope property `{field}` is missing"))
                        .hint("copy the envelope from another event schema"),
                );
            }
        }
        let data_type = format!("{}{versioned}Data", pascal_case(&event_type));
        let expected_ref = format!("#/$defs/{data_type}");
        if schema.pointer("/properties/data/$ref").and_then(Value::as_str) != Some(expected_ref.as_str()) {
            diags.push(
                Diagnostic::new(
                    &file,
                    "/properties/data",
                    format!("`data` must be `{{\"$ref\": \"{expected_ref}\"}}`"),
                )
                .hint(format!("define the payload as $defs/{data_type}")),
            );
        }
        let dataschema = schema
            .pointer("/properties/dataschema/enum/0")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if dataschema.is_empty() {
            diags.push(
                Diagnostic::new(
                    &file,
                    "/properties/dataschema",
                    "`dataschema` must pin the schema URI with a one-value enum",
                )
                .hint("set `enum: [\"<$id of this file>\"]`"),
            );
        }
        if let Some(defs) = schema.get("$defs").and_then(Value::as_object) {
            for (name, def) in defs {
                check_payload(def, &pointer(["$defs", name]), &file, diags);
            }
        }
        if diags.len() == before {
            let module = if version == 1 {
                event_type.replace('.', "_")
            } else {
                format!("{}_v{version}", event_type.replace('.', "_"))
            };
            models.push(EventModel {
                module,
                event_type,
                file_name: file_name.clone(),
                version,
                data_type,
                dataschema,
                subject: String::new(),
            });
        }
    }
    let subjects = check_asyncapi(raw, diags);
    for model in &mut models {
        model.subject = subjects.get(&model.file_name).cloned().unwrap_or_default();
    }
    models
}

/// Whether `address` is a NATS subject an event can be published on:
/// tokens separated by `.`, none empty, each of letters, digits, `_` and
/// `-` (no whitespace, and no `*` or `>`: wildcards subscribe, they do not
/// publish), at most 255 bytes.
pub fn is_publishable_subject(address: &str) -> bool {
    !address.is_empty()
        && address.len() <= 255
        && address.split('.').all(|token| {
            !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

fn check_event_refs(root: &Value, value: &Value, ptr: String, file: &str, diags: &mut Diagnostics) {
    match value {
        Value::Object(map) => {
            if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                if !r.starts_with("#/$defs/") {
                    diags.push(
                        Diagnostic::new(
                            file,
                            format!("{ptr}/$ref"),
                            format!("`{r}`: event schemas must be self-contained"),
                        )
                        .hint("point refs at `#/$defs/<Name>`; typify cannot follow external refs"),
                    );
                } else if root.pointer(&r[1..]).is_none() {
                    diags.push(
                        Diagnostic::new(file, format!("{ptr}/$ref"), format!("dangling $ref `{r}`"))
                            .hint("define the target under $defs"),
                    );
                }
            }
            for (k, v) in map {
                check_event_refs(root, v, format!("{ptr}/{}", escape_token(k)), file, diags);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_event_refs(root, v, format!("{ptr}/{i}"), file, diags);
            }
        }
        _ => {}
    }
}

fn check_payload(schema: &Value, ptr: &str, file: &str, diags: &mut Diagnostics) {
    let Some(map) = schema.as_object() else { return };
    for kw in ["anyOf", "oneOf", "not", "allOf", "if"] {
        if map.contains_key(kw) {
            diags.push(
                Diagnostic::new(
                    file,
                    format!("{ptr}/{kw}"),
                    format!("`{kw}` is not supported in event payloads"),
                )
                .hint("typify generates unusable types for it; use one object schema"),
            );
        }
    }
    if map.get("type").and_then(Value::as_str) == Some("object")
        && map.get("additionalProperties") != Some(&Value::Bool(false))
    {
        diags.push(
            Diagnostic::new(file, ptr, "event payload objects must set `additionalProperties: false`")
                .hint("a closed payload cannot smuggle a secret in an undeclared field"),
        );
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, p) in props {
            let p_ptr = format!("{ptr}/properties/{}", escape_token(name));
            if let Some(frag) = secret_like(name) {
                diags.push(
                    Diagnostic::new(file, &p_ptr, format!("property `{name}` looks like it carries a secret (`{frag}`)"))
                        .hint("events never carry secrets, CSR bodies, PEM, keys, nonces or raw fingerprints; emit an id or a hash instead"),
                );
            }
            check_payload(p, &p_ptr, file, diags);
        }
    }
    if let Some(items) = map.get("items") {
        check_payload(items, &format!("{ptr}/items"), file, diags);
    }
}

/// The header the relay sets to the event id for the broker's de-duplication.
pub const MESSAGE_ID_HEADER: &str = "Nats-Msg-Id";

/// The contract names where events go: at least one server, each a NATS
/// server with a host (the relay publishes to NATS and nothing else).
fn check_relay_servers(doc: &Value, file: &str, diags: &mut Diagnostics) {
    let servers = doc.get("servers").and_then(Value::as_object);
    let Some(servers) = servers.filter(|s| !s.is_empty()) else {
        diags.push(
            Diagnostic::new(file, "/servers", "no server says where events are published")
                .hint("add `servers: {<name>: {host: <host:port>, protocol: nats}}`"),
        );
        return;
    };
    for (name, server) in servers {
        let ptr = pointer(["servers", name]);
        if server.get("protocol").and_then(Value::as_str) != Some("nats") {
            diags.push(
                Diagnostic::new(file, format!("{ptr}/protocol"), "the event relay publishes to NATS only")
                    .hint("set `protocol: nats`"),
            );
        }
        if server.get("host").and_then(Value::as_str).is_none_or(str::is_empty) {
            diags.push(
                Diagnostic::new(file, format!("{ptr}/host"), "a server needs a host")
                    .hint("set `host: <host>:<port>`"),
            );
        }
    }
}

/// Every message declares the de-duplication header the relay sets, as a
/// required string (inline or through `#/components/schemas/<name>`).
fn check_relay_headers(doc: &Value, msg: &Value, ptr: &str, file: &str, diags: &mut Diagnostics) {
    let headers = msg.get("headers").and_then(|h| match h.get("$ref").and_then(Value::as_str) {
        Some(r) => r.strip_prefix('#').and_then(|p| doc.pointer(p)),
        None => Some(h),
    });
    let declared = headers.is_some_and(|h| {
        let required = h
            .get("required")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|v| v.as_str() == Some(MESSAGE_ID_HEADER)));
        let string = h.pointer(&format!("/properties/{MESSAGE_ID_HEADER}/type")).and_then(Value::as_str)
            == Some("string");
        required && string
    });
    if !declared {
        diags.push(
            Diagnostic::new(
                file,
                format!("{ptr}/headers"),
                format!("the message does not declare the required `{MESSAGE_ID_HEADER}` header the relay sets to the event id"),
            )
            .hint("add `headers: {$ref: '#/components/schemas/RelayHeaders'}` with a required string `Nats-Msg-Id`"),
        );
    }
}

/// Checks `asyncapi.yaml` against the event schemas; returns the subject
/// (channel address) of each event schema file a channel carries.
fn check_asyncapi(raw: &RawContracts, diags: &mut Diagnostics) -> BTreeMap<String, String> {
    let mut subjects = BTreeMap::new();
    let file = raw.file(ASYNCAPI_FILE);
    let doc = &raw.asyncapi;
    match doc.get("asyncapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.") => {}
        other => {
            diags.push(
                Diagnostic::new(&file, "/asyncapi", format!("AsyncAPI version {other:?} is not supported"))
                    .hint("use `asyncapi: 3.0.0`"),
            );
            return subjects;
        }
    }
    check_relay_servers(doc, &file, diags);
    let messages =
        doc.pointer("/components/messages").and_then(Value::as_object).cloned().unwrap_or_default();
    for (key, msg) in &messages {
        check_relay_headers(doc, msg, &pointer(["components", "messages", key]), &file, diags);
    }
    let mut referenced: BTreeMap<String, String> = BTreeMap::new();
    for (key, msg) in &messages {
        let ptr = pointer(["components", "messages", key]);
        let payload_ref = msg
            .pointer("/payload/$ref")
            .or_else(|| msg.pointer("/payload/schema/$ref"))
            .and_then(Value::as_str);
        let Some(r) = payload_ref else {
            diags.push(
                Diagnostic::new(
                    &file,
                    format!("{ptr}/payload"),
                    "message payload must be a $ref to a file in events/",
                )
                .hint("write `payload: {$ref: './events/<type>.v1.schema.json'}`"),
            );
            continue;
        };
        let Some(target) = r.strip_prefix("./events/").or_else(|| r.strip_prefix("events/")) else {
            diags.push(
                Diagnostic::new(
                    &file,
                    format!("{ptr}/payload/$ref"),
                    format!("`{r}` does not point into events/"),
                )
                .hint("reference './events/<type>.v1.schema.json'"),
            );
            continue;
        };
        if !raw.event_schemas.contains_key(target) {
            diags.push(
                Diagnostic::new(&file, format!("{ptr}/payload/$ref"), format!("`{r}` does not exist"))
                    .hint(format!("add specs/events/{target} or fix the reference")),
            );
            continue;
        }
        let Some((event_type, _)) = event_file_parts(target) else { continue };
        if msg.get("name").and_then(Value::as_str) != Some(event_type) {
            diags.push(
                Diagnostic::new(
                    &file,
                    format!("{ptr}/name"),
                    format!("message name must be the event type `{event_type}`"),
                )
                .hint(format!("set `name: {event_type}`")),
            );
        }
        if let Some(first) = referenced.insert(target.to_string(), ptr.clone()) {
            diags.push(
                Diagnostic::new(&file, &ptr, format!("`{target}` is already the payload of {first}"))
                    .hint("one message per event version"),
            );
        }
    }
    for name in raw.event_schemas.keys() {
        if !referenced.contains_key(name) {
            diags.push(
                Diagnostic::new(
                    raw.file(&format!("{EVENTS_DIR}/{name}")),
                    "",
                    "event schema is not the payload of any AsyncAPI message",
                )
                .hint("add a channel, an operation and a message for it in specs/asyncapi.yaml"),
            );
        }
    }
    // Every message is carried by a channel, and channel refs resolve.
    let mut carried = BTreeSet::new();
    let mut addresses: BTreeMap<String, String> = BTreeMap::new();
    if let Some(channels) = doc.get("channels").and_then(Value::as_object) {
        for (ch_name, ch) in channels {
            let address = ch.get("address").and_then(Value::as_str).unwrap_or_default();
            let a_ptr = pointer(["channels", ch_name, "address"]);
            if !is_publishable_subject(address) {
                diags.push(
                    Diagnostic::new(&file, &a_ptr, format!("channel address `{address}` is not a NATS subject an event can be published on"))
                        .hint("use dot-separated tokens of letters, digits, `_` and `-`, with no wildcard, e.g. `oneprotect.events.agent.enrolled`"),
                );
            } else if let Some(first) = addresses.insert(address.to_string(), ch_name.clone()) {
                diags.push(
                    Diagnostic::new(
                        &file,
                        &a_ptr,
                        format!("channel address `{address}` is also the address of channel `{first}`"),
                    )
                    .hint("give every channel its own subject"),
                );
            }
            if let Some(msgs) = ch.get("messages").and_then(Value::as_object) {
                for (m_name, m) in msgs {
                    let m_ptr = pointer(["channels", ch_name, "messages", m_name, "$ref"]);
                    match m
                        .get("$ref")
                        .and_then(Value::as_str)
                        .and_then(|r| r.strip_prefix("#/components/messages/"))
                    {
                        Some(target) if messages.contains_key(target) => {
                            carried.insert(target.to_string());
                            if let Some(event_file) = messages[target]
                                .pointer("/payload/$ref")
                                .or_else(|| messages[target].pointer("/payload/schema/$ref"))
                                .and_then(Value::as_str)
                                .and_then(|r| {
                                    r.strip_prefix("./events/").or_else(|| r.strip_prefix("events/"))
                                })
                            {
                                subjects.insert(event_file.to_string(), address.to_string());
                            }
                        }
                        _ => diags.push(
                            Diagnostic::new(
                                &file,
                                m_ptr,
                                "channel message must reference components/messages",
                            )
                            .hint("write `$ref: '#/components/messages/<name>'`"),
                        ),
                    }
                }
            }
        }
    }
    for key in messages.keys() {
        if !carried.contains(key) {
            diags.push(
                Diagnostic::new(
                    &file,
                    pointer(["components", "messages", key]),
                    "message is not carried by any channel",
                )
                .hint("add it to a channel's `messages`"),
            );
        }
    }
    subjects
}
