//! The rule catalogue: every kind of change the diff classifies, with its
//! level, the oasdiff check it corresponds to (where there is one) and why.
//!
//! Schema rules are written once per kind of edit and judged per site: the
//! same `maxLength` decrease breaks clients in a request body and is safe in
//! a response body. Event payloads flow both ways (old events stay in the
//! stream; old consumers read new events), so an edit is breaking there when
//! it is breaking in either direction.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::Serialize;

/// How a change affects existing clients, servers and consumers. The order
/// is the report's order: most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Something built against the old version stops working.
    Breaking,
    /// No rule judged this difference: it needs a person, and the gate treats it as breaking.
    Unclassified,
    /// Existing clients and servers keep working.
    NonBreaking,
    /// Documentation, metadata or a version number.
    Info,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Breaking => "breaking",
            Level::Unclassified => "unclassified",
            Level::NonBreaking => "non-breaking",
            Level::Info => "info",
        }
    }

    fn worst(a: Level, b: Level) -> Level {
        a.min(b)
    }
}

/// One entry of the catalogue.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub id: String,
    pub level: Level,
    /// The oasdiff check id that judges the same edit, where one exists (its level may differ).
    pub oasdiff: Option<&'static str>,
    pub why: String,
}

/// Where a schema is used, which decides the direction data flows through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Site {
    Parameter,
    RequestBody,
    ResponseBody,
    EventPayload,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::Parameter, Site::RequestBody, Site::ResponseBody, Site::EventPayload];

    pub fn prefix(self) -> &'static str {
        match self {
            Site::Parameter => "request-parameter",
            Site::RequestBody => "request-body",
            Site::ResponseBody => "response-body",
            Site::EventPayload => "event-payload",
        }
    }

    /// The rule id of `kind` at this site.
    pub fn rule(self, kind: &str) -> String {
        format!("{}-{kind}", self.prefix())
    }
}

use Level::{Breaking as B, Info as I, NonBreaking as N};

/// Schema edits: (kind, level when data flows in to the server, level when
/// it flows out to a client, what the edit is, whether it applies to
/// parameters, whose parse it affects).
const SCHEMA_KINDS: &[(&str, Level, Level, &str, bool)] = &[
    ("type-changed", B, B, "the type or format changed", true),
    ("became-nullable", N, B, "null became a valid value", true),
    ("became-not-nullable", B, N, "null is no longer a valid value", true),
    ("enum-value-added", N, B, "a value was added to the enum", true),
    ("enum-value-removed", B, N, "a value was removed from the enum", true),
    ("became-enum", B, N, "the value is now restricted to an enum", true),
    ("enum-removed", N, B, "the enum restriction was removed", true),
    ("max-length-decreased", B, N, "maxLength was lowered or set", true),
    ("max-length-increased", N, B, "maxLength was raised or removed", true),
    ("min-length-increased", B, N, "minLength was raised or set", true),
    ("min-length-decreased", N, B, "minLength was lowered or removed", true),
    ("max-decreased", B, N, "maximum was lowered, set or made exclusive", true),
    ("max-increased", N, B, "maximum was raised or removed", true),
    ("min-increased", B, N, "minimum was raised, set or made exclusive", true),
    ("min-decreased", N, B, "minimum was lowered or removed", true),
    ("max-items-decreased", B, N, "maxItems was lowered or set", true),
    ("max-items-increased", N, B, "maxItems was raised or removed", true),
    ("min-items-increased", B, N, "minItems was raised or set", true),
    ("min-items-decreased", N, B, "minItems was lowered or removed", true),
    (
        "extensible-enum-value-added",
        N,
        N,
        "a value was added to x-extensible-enum (readers tolerate values they do not know)",
        true,
    ),
    ("extensible-enum-value-removed", B, N, "a value was removed from x-extensible-enum", true),
    ("pattern-added", B, N, "a pattern was added", true),
    ("pattern-changed", B, B, "the pattern changed", true),
    ("pattern-removed", N, B, "the pattern was removed", true),
    ("default-changed", B, I, "the default value changed", true),
    ("property-added-required", B, N, "a required property was added", false),
    ("property-added-optional", N, N, "an optional property was added", false),
    ("property-removed", B, B, "a property was removed", false),
    ("property-became-required", B, N, "a property became required", false),
    ("property-became-optional", N, B, "a required property became optional", false),
    ("became-closed", B, N, "additionalProperties: false was added", false),
    ("became-open", N, N, "additionalProperties: false was removed", false),
];

/// Why a schema edit at a site has its level.
fn schema_why(site: Site, what: &str, level: Level) -> String {
    let who = match site {
        Site::Parameter | Site::RequestBody => "clients send this data to the server",
        Site::ResponseBody => "the server sends this data to clients",
        Site::EventPayload => {
            "events already in a stream must stay valid and existing consumers must read new ones"
        }
    };
    let verdict = match level {
        Level::Breaking => match site {
            Site::Parameter | Site::RequestBody => {
                "a request an existing client sends can now be refused or read differently"
            }
            Site::ResponseBody => "an existing client can now receive a value it does not expect",
            Site::EventPayload => {
                "an old event or an old consumer no longer fits the schema; publish the change as a new version file"
            }
        },
        Level::NonBreaking | Level::Unclassified => {
            "everything valid before is still accepted where it matters"
        }
        Level::Info => "it changes no accepted value",
    };
    format!("{what}; {who}: {verdict}")
}

/// (id, level, oasdiff id, why) for the rules that are not per schema site.
const STRUCTURE_RULES: &[(&str, Level, Option<&str>, &str)] = &[
    (
        "endpoint-removed",
        B,
        Some("api-removed-without-deprecation"),
        "an operation was removed: clients that call it get 404",
    ),
    ("endpoint-added", N, Some("endpoint-added"), "a new operation: existing clients do not call it"),
    (
        "endpoint-deprecated",
        I,
        Some("endpoint-deprecated"),
        "the operation is marked deprecated; it still works",
    ),
    ("endpoint-reactivated", I, Some("endpoint-reactivated"), "the operation is no longer deprecated"),
    (
        "operation-id-changed",
        B,
        Some("api-operation-id-removed"),
        "the operationId names the generated client method and server handler: code built on the old name stops compiling",
    ),
    (
        "security-added",
        B,
        Some("api-security-added"),
        "the operation now requires a credential: clients that send none are refused",
    ),
    (
        "security-removed",
        I,
        Some("api-security-removed"),
        "the operation no longer requires a credential; existing clients keep working, but review it as a security change",
    ),
    (
        "security-changed",
        B,
        None,
        "the operation requires a different security scheme: existing credentials are refused",
    ),
    (
        "security-scheme-changed",
        B,
        Some("api-security-component-type-changed"),
        "a security scheme's type, scheme, format or location changed: existing credentials no longer fit",
    ),
    (
        "security-scheme-principal-declared",
        I,
        None,
        "a security scheme now says who holds its credential (x-oneprotect-principal); credentials are unchanged",
    ),
    ("security-scheme-removed", B, Some("api-security-component-removed"), "a security scheme was removed"),
    ("security-scheme-added", N, Some("api-security-component-added"), "a new security scheme"),
    (
        "request-parameter-removed",
        B,
        Some("request-parameter-removed"),
        "a parameter existing clients send is no longer accepted",
    ),
    (
        "request-parameter-added-required",
        B,
        Some("new-required-request-parameter"),
        "existing clients do not send the new required parameter",
    ),
    (
        "request-parameter-added-optional",
        N,
        Some("new-optional-request-parameter"),
        "a new optional parameter: existing clients omit it",
    ),
    (
        "request-parameter-became-required",
        B,
        Some("request-parameter-became-required"),
        "existing clients may omit the parameter that is now required",
    ),
    (
        "request-parameter-became-optional",
        N,
        Some("request-parameter-became-optional"),
        "a required parameter became optional",
    ),
    (
        "request-body-added-required",
        B,
        Some("request-body-added-required"),
        "existing clients send no body where one is now required",
    ),
    (
        "request-body-added-optional",
        N,
        Some("request-body-added-optional"),
        "an optional request body was added",
    ),
    (
        "request-body-removed",
        B,
        Some("request-body-removed"),
        "existing clients send a body the operation no longer reads",
    ),
    (
        "request-body-became-required",
        B,
        Some("request-body-became-required"),
        "existing clients may omit the body that is now required",
    ),
    (
        "request-body-became-optional",
        N,
        Some("request-body-became-optional"),
        "the request body became optional",
    ),
    (
        "request-media-type-removed",
        B,
        Some("request-body-media-type-removed"),
        "clients sending this media type are refused with 415",
    ),
    (
        "request-media-type-added",
        N,
        Some("request-body-media-type-added"),
        "a new request media type is accepted",
    ),
    (
        "request-body-max-bytes-decreased",
        B,
        None,
        "x-oneprotect-max-body-bytes was lowered: bodies existing clients send can now be refused with 413",
    ),
    ("request-body-max-bytes-increased", N, None, "x-oneprotect-max-body-bytes was raised"),
    (
        "client-certificate-accepted",
        N,
        None,
        "x-oneprotect-client-certificate: a verified TLS client certificate is now accepted beside the bearer",
    ),
    (
        "client-certificate-no-longer-accepted",
        B,
        None,
        "x-oneprotect-client-certificate was removed: clients authenticating by their certificate are refused with 401",
    ),
    (
        "response-success-status-removed",
        B,
        Some("response-success-status-removed"),
        "clients that expect this success status receive another one",
    ),
    (
        "response-success-status-added",
        N,
        Some("response-success-status-added"),
        "a new documented success status",
    ),
    (
        "response-error-status-removed",
        B,
        Some("response-non-success-status-removed"),
        "a documented error status was removed: clients that branch on it no longer get a typed error (stricter than oasdiff)",
    ),
    (
        "response-error-status-added",
        N,
        Some("response-non-success-status-added"),
        "a new documented error status",
    ),
    (
        "response-media-type-removed",
        B,
        Some("response-media-type-removed"),
        "clients that accept only this media type can no longer read the response",
    ),
    ("response-media-type-added", N, Some("response-media-type-added"), "a new response media type"),
    (
        "response-header-removed",
        B,
        Some("required-response-header-removed"),
        "clients that read this response header no longer get it",
    ),
    ("response-header-added", N, Some("response-header-added"), "a new response header"),
    ("schema-component-added", I, None, "a new schema component; what uses it is judged where it is used"),
    (
        "schema-component-removed",
        I,
        Some("api-schema-removed"),
        "a schema component was removed; what used it is judged where it was used",
    ),
    ("component-added", I, None, "a new reusable component; what uses it is judged where it is used"),
    (
        "component-removed",
        I,
        None,
        "a reusable component was removed; what used it is judged where it was used",
    ),
    ("api-version-changed", I, None, "info.version changed; the compatibility gate reads its major number"),
    ("metadata-changed", I, None, "document metadata (info, servers, tags) changed; no client parses it"),
    ("doc-changed", I, None, "a description, summary, title or example changed; no client parses it"),
    ("channel-removed", B, None, "consumers subscribed to this channel receive nothing"),
    ("channel-added", N, None, "a new channel: existing consumers do not subscribe to it"),
    (
        "channel-address-changed",
        B,
        None,
        "consumers subscribed to the old address (NATS subject) receive nothing",
    ),
    ("channel-message-removed", B, None, "consumers of this channel stop receiving this message"),
    (
        "channel-message-added",
        N,
        None,
        "a channel carries a new message; consumers filter on the CloudEvents `type`",
    ),
    (
        "message-payload-changed",
        B,
        None,
        "the message now carries a different payload schema: existing consumers cannot parse it",
    ),
    (
        "message-content-type-changed",
        B,
        None,
        "the message's content type changed: existing consumers cannot parse it",
    ),
    (
        "message-header-added",
        N,
        None,
        "a header added to a message: consumers that do not read it are unaffected",
    ),
    (
        "message-header-removed",
        B,
        None,
        "consumers that read this header (a de-duplication id, a content type) no longer get it",
    ),
    ("message-header-changed", B, None, "a header's schema changed: consumers that read it may not parse it"),
    (
        "operation-bindings-changed",
        I,
        None,
        "the protocol bindings of a send operation describe how the platform publishes; no consumer parses them",
    ),
    ("message-removed", I, None, "a message component was removed; the channels that carried it are judged"),
    ("message-added", I, None, "a new message component"),
    ("operation-removed", B, None, "an AsyncAPI operation (send/receive) was removed"),
    ("operation-added", N, None, "a new AsyncAPI operation"),
    ("default-content-type-changed", B, None, "the default content type of every message changed"),
    (
        "event-schema-removed",
        B,
        None,
        "an event version was removed: its events in a stream can no longer be validated and consumers of it receive nothing",
    ),
    (
        "event-schema-added",
        N,
        None,
        "a new event type or a new version of one, published beside the old ones",
    ),
    (
        "event-schema-id-changed",
        B,
        None,
        "the `$id` (the `dataschema` events carry) changed: consumers resolving the schema by it fail",
    ),
    ("unclassified", Level::Unclassified, None, "no rule judges this kind of change; review it by hand"),
];

/// The oasdiff check that judges the same schema edit at a site, where one exists.
fn schema_oasdiff(site: Site, kind: &str) -> Option<&'static str> {
    let id = match (site, kind) {
        (Site::RequestBody, "property-added-required") => "new-required-request-property",
        (Site::RequestBody, "property-added-optional") => "new-optional-request-property",
        (Site::RequestBody, "property-removed") => "request-property-removed",
        (Site::RequestBody, "property-became-required") => "request-property-became-required",
        (Site::RequestBody, "property-became-optional") => "request-property-became-optional",
        (Site::ResponseBody, "property-added-optional") => "response-optional-property-added",
        (Site::ResponseBody, "property-added-required") => "response-required-property-added",
        (Site::ResponseBody, "property-removed") => "response-required-property-removed",
        (Site::ResponseBody, "property-became-optional") => "response-property-became-optional",
        (Site::ResponseBody, "property-became-required") => "response-property-became-required",
        (Site::ResponseBody, "enum-value-added") => "response-property-enum-value-added",
        (Site::ResponseBody, "enum-value-removed") => "response-property-enum-value-removed",
        (Site::ResponseBody, "became-nullable") => "response-property-became-nullable",
        (Site::ResponseBody, "type-changed") => "response-property-type-changed",
        (Site::ResponseBody, "max-length-increased") => "response-property-max-length-increased",
        (Site::ResponseBody, "min-length-decreased") => "response-property-min-length-decreased",
        (Site::ResponseBody, "max-increased") => "response-property-max-increased",
        (Site::ResponseBody, "min-decreased") => "response-property-min-decreased",
        (Site::ResponseBody, "min-items-decreased") => "response-property-min-items-decreased",
        (Site::ResponseBody, "pattern-added") => "response-property-pattern-added",
        (Site::ResponseBody, "pattern-removed") => "response-property-pattern-removed",
        (Site::RequestBody, "type-changed") => "request-property-type-changed",
        (Site::RequestBody, "became-not-nullable") => "request-property-became-not-nullable",
        (Site::RequestBody, "enum-value-added") => "request-property-enum-value-added",
        (Site::RequestBody, "enum-value-removed") => "request-property-enum-value-removed",
        (Site::RequestBody, "became-enum") => "request-property-became-enum",
        (Site::RequestBody, "max-length-decreased") => "request-property-max-length-decreased",
        (Site::RequestBody, "min-length-increased") => "request-property-min-length-increased",
        (Site::RequestBody, "max-decreased") => "request-property-max-decreased",
        (Site::RequestBody, "min-increased") => "request-property-min-increased",
        (Site::RequestBody, "min-items-increased") => "request-property-min-items-increased",
        (Site::RequestBody, "pattern-added") => "request-property-pattern-added",
        (Site::RequestBody, "pattern-removed") => "request-property-pattern-removed",
        (Site::RequestBody, "default-changed") => "request-property-default-value-changed",
        (Site::Parameter, "type-changed") => "request-parameter-type-changed",
        (Site::Parameter, "became-not-nullable") => "request-parameter-became-not-nullable",
        (Site::Parameter, "enum-value-added") => "request-parameter-enum-value-added",
        (Site::Parameter, "enum-value-removed") => "request-parameter-enum-value-removed",
        (Site::Parameter, "became-enum") => "request-parameter-became-enum",
        (Site::Parameter, "max-length-decreased") => "request-parameter-max-length-decreased",
        (Site::Parameter, "min-length-increased") => "request-parameter-min-length-increased",
        (Site::Parameter, "max-decreased") => "request-parameter-max-decreased",
        (Site::Parameter, "min-increased") => "request-parameter-min-increased",
        (Site::Parameter, "max-items-decreased") => "request-parameter-max-items-decreased",
        (Site::Parameter, "min-items-increased") => "request-parameter-min-items-increased",
        (Site::Parameter, "pattern-added") => "request-parameter-pattern-added",
        (Site::Parameter, "pattern-removed") => "request-parameter-pattern-removed",
        (Site::Parameter, "default-changed") => "request-parameter-default-value-changed",
        (Site::Parameter, "extensible-enum-value-removed") => {
            "request-parameter-x-extensible-enum-value-removed"
        }
        (Site::RequestBody, "extensible-enum-value-removed") => {
            "request-property-x-extensible-enum-value-removed"
        }
        _ => return None,
    };
    Some(id)
}

/// The whole catalogue, in a stable order.
pub fn catalogue() -> &'static [Rule] {
    &CATALOGUE
}

/// The rule with this id.
pub fn lookup(id: &str) -> Option<&'static Rule> {
    BY_ID.get(id).map(|&i| &CATALOGUE[i])
}

static CATALOGUE: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let mut rules = Vec::new();
    for site in Site::ALL {
        for &(kind, inbound, outbound, what, for_parameters) in SCHEMA_KINDS {
            if site == Site::Parameter && !for_parameters {
                continue;
            }
            let level = match site {
                Site::Parameter | Site::RequestBody => inbound,
                Site::ResponseBody => outbound,
                Site::EventPayload => Level::worst(inbound, outbound),
            };
            rules.push(Rule {
                id: site.rule(kind),
                level,
                oasdiff: schema_oasdiff(site, kind),
                why: schema_why(site, what, level),
            });
        }
    }
    for &(id, level, oasdiff, why) in STRUCTURE_RULES {
        rules.push(Rule { id: id.to_string(), level, oasdiff, why: why.to_string() });
    }
    rules
});

static BY_ID: LazyLock<BTreeMap<&'static str, usize>> =
    LazyLock::new(|| CATALOGUE.iter().enumerate().map(|(i, r)| (r.id.as_str(), i)).collect());

/// The catalogue as the Markdown page `docs/compat-rules.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Contract compatibility rules\n\n\
         Generated by `oneprotect-codegen rules` from `codegen/src/compat/rules.rs`; a test fails when this page is stale.\n\
         `make check-compat` refuses a `breaking` or `unclassified` change unless the contract declares it \
         (README, \"Changing a contract\"). The oasdiff column names the oasdiff check that judges the same edit; \
         where our level differs from oasdiff's, ours is stricter and the reason says why.\n\n\
         | Rule | Level | oasdiff | Why |\n|---|---|---|---|\n",
    );
    for r in catalogue() {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            r.id,
            r.level.as_str(),
            r.oasdiff.map_or("—".to_string(), |o| format!("`{o}`")),
            r.why.replace('|', "\\|")
        ));
    }
    let matched = catalogue().iter().filter(|r| r.oasdiff.is_some()).count();
    out.push_str(&format!("\n{} rules; {matched} correspond to an oasdiff check.\n", catalogue().len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_unique() {
        assert_eq!(BY_ID.len(), CATALOGUE.len());
    }

    #[test]
    fn an_event_payload_edit_is_breaking_when_either_direction_breaks() {
        assert_eq!(lookup("request-body-enum-value-added").map(|r| r.level), Some(Level::NonBreaking));
        assert_eq!(lookup("response-body-enum-value-added").map(|r| r.level), Some(Level::Breaking));
        assert_eq!(lookup("event-payload-enum-value-added").map(|r| r.level), Some(Level::Breaking));
        assert_eq!(lookup("event-payload-property-became-required").map(|r| r.level), Some(Level::Breaking));
        assert_eq!(
            lookup("event-payload-property-added-optional").map(|r| r.level),
            Some(Level::NonBreaking)
        );
    }

    #[test]
    fn property_rules_do_not_exist_for_parameters() {
        assert!(lookup("request-parameter-property-removed").is_none());
        assert!(lookup("request-parameter-max-length-decreased").is_some());
    }
}
