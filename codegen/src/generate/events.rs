//! `events.rs` of the generated crate: the CloudEvents envelope, one
//! module of payload types per event schema version, the version table and
//! validation by `dataschema`.

use super::*;

pub(super) fn events_module(c: &Contracts, modules: Vec<TokenStream>) -> TokenStream {
    // One constant per event type, however many versions it has.
    let mut types: Vec<&String> = Vec::new();
    for m in &c.events {
        if !types.contains(&&m.event_type) {
            types.push(&m.event_type);
        }
    }
    let consts = types.iter().map(|ty| {
        let name = format_ident!("{}", ty.replace('.', "_").to_ascii_uppercase());
        let doc = format!("The CloudEvents `type` `{ty}`.");
        quote! { #[doc = #doc] pub const #name: &str = #ty; }
    });
    let count = types.len();
    let reexports = c.events.iter().map(|m| {
        let module = format_ident!("{}", m.module);
        let data = format_ident!("{}", m.data_type);
        quote! { pub use #module::#data; }
    });
    let impls = c.events.iter().map(|m| {
        let module = format_ident!("{}", m.module);
        let data = format_ident!("{}", m.data_type);
        let ty = &m.event_type;
        let ds = &m.dataschema;
        let subject = &m.subject;
        quote! {
            impl EventData for #module::#data {
                const EVENT_TYPE: &'static str = #ty;
                const DATASCHEMA: &'static str = #ds;
                const SUBJECT: &'static str = #subject;
            }
        }
    });
    let schema_arms = c.events.iter().map(|m| {
        let ds = &m.dataschema;
        let path = format!("schemas/events/{}", m.file_name);
        quote! { #ds => Some(include_str!(#path)) }
    });
    let versions = c.events.iter().map(|m| {
        let ty = &m.event_type;
        let ds = &m.dataschema;
        quote! { (#ty, #ds) }
    });
    let subjects = c.events.iter().map(|m| {
        let ds = &m.dataschema;
        let subject = &m.subject;
        quote! { (#ds, #subject) }
    });
    let version_count = c.events.len();
    quote! {
        #![allow(clippy::all)]
        use std::collections::BTreeMap;
        use std::sync::LazyLock;

        use crate::contract::SchemaViolation;

        #(#modules)*

        #(#reexports)*

        #(#consts)*

        /// Every event type of the contract.
        pub const EVENT_TYPES: [&str; #count] = [#(#types),*];

        /// Every published (type, `dataschema`) pair: a type keeps its old
        /// versions beside new ones, oldest first.
        pub const EVENT_VERSIONS: [(&str, &str); #version_count] = [#(#versions),*];

        /// The subject (AsyncAPI channel address) each event version is
        /// published on, by `dataschema`: a relay takes its subjects from
        /// here, never from a string written by hand.
        pub const EVENT_SUBJECTS: [(&str, &str); #version_count] = [#(#subjects),*];

        /// The subject an event is published on, from its `dataschema`.
        pub fn subject_of(dataschema: &str) -> Option<&'static str> {
            EVENT_SUBJECTS.iter().find(|(ds, _)| *ds == dataschema).map(|(_, subject)| *subject)
        }

        /// A payload type that knows its CloudEvents `type`, schema and subject.
        pub trait EventData: serde::Serialize {
            const EVENT_TYPE: &'static str;
            const DATASCHEMA: &'static str;
            const SUBJECT: &'static str;
        }

        #(#impls)*

        /// CloudEvents 1.0 structured-mode envelope with the `tenantid` extension.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct Envelope<D> {
            pub specversion: String,
            pub id: String,
            pub source: String,
            #[serde(rename = "type")]
            pub type_: String,
            pub time: chrono::DateTime<chrono::Utc>,
            pub datacontenttype: String,
            pub dataschema: String,
            pub subject: String,
            pub tenantid: String,
            pub data: D,
        }

        impl<D: EventData> Envelope<D> {
            /// An envelope for `data` with its type and schema filled in.
            pub fn new(id: impl Into<String>, source: impl Into<String>, time: chrono::DateTime<chrono::Utc>, subject: impl Into<String>, tenantid: impl Into<String>, data: D) -> Self {
                Self {
                    specversion: "1.0".to_owned(),
                    id: id.into(),
                    source: source.into(),
                    type_: D::EVENT_TYPE.to_owned(),
                    time,
                    datacontenttype: "application/json".to_owned(),
                    dataschema: D::DATASCHEMA.to_owned(),
                    subject: subject.into(),
                    tenantid: tenantid.into(),
                    data,
                }
            }
        }

        /// The JSON Schema text of an event version, by its `dataschema` URI.
        pub fn schema_json(dataschema: &str) -> Option<&'static str> {
            match dataschema {
                #(#schema_arms,)*
                _ => None,
            }
        }

        /// Why an event was refused.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum EventValidationError {
            /// The event has no string `type`.
            MissingType,
            /// The `type` is not one of [`EVENT_TYPES`].
            UnknownType(String),
            /// The event does not match its schema.
            Invalid(Vec<SchemaViolation>),
        }

        impl std::fmt::Display for EventValidationError {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    Self::MissingType => f.write_str("event has no `type`"),
                    Self::UnknownType(t) => write!(f, "unknown event type `{t}`"),
                    Self::Invalid(v) => {
                        f.write_str("event does not match its schema: ")?;
                        for (i, violation) in v.iter().enumerate() {
                            if i > 0 {
                                f.write_str("; ")?;
                            }
                            write!(f, "{violation}")?;
                        }
                        Ok(())
                    }
                }
            }
        }

        impl std::error::Error for EventValidationError {}

        /// One validator per event version, by `dataschema`.
        static VALIDATORS: LazyLock<BTreeMap<&'static str, jsonschema::Validator>> = LazyLock::new(|| {
            EVENT_VERSIONS
                .iter()
                .filter_map(|(_, ds)| {
                    let schema: serde_json::Value = serde_json::from_str(schema_json(ds)?).ok()?;
                    let validator = jsonschema::options().should_validate_formats(true).build(&schema).ok()?;
                    Some((*ds, validator))
                })
                .collect()
        });

        /// Validates a whole CloudEvent (envelope and `data`) against the
        /// schema of its version: the one its `dataschema` names, else the
        /// oldest version of its `type` (whose pinned `dataschema` then
        /// refuses it). Messages never echo instance values.
        pub fn validate(event: &serde_json::Value) -> Result<(), EventValidationError> {
            let event_type = event.get("type").and_then(|t| t.as_str()).ok_or(EventValidationError::MissingType)?;
            let declared = event.get("dataschema").and_then(|d| d.as_str());
            let version = EVENT_VERSIONS
                .iter()
                .find(|(t, ds)| *t == event_type && Some(*ds) == declared)
                .or_else(|| EVENT_VERSIONS.iter().find(|(t, _)| *t == event_type))
                .ok_or_else(|| EventValidationError::UnknownType(event_type.to_owned()))?;
            let validator = VALIDATORS.get(version.1).ok_or_else(|| EventValidationError::UnknownType(event_type.to_owned()))?;
            // The answer without collecting errors first: valid events are the rule.
            if validator.is_valid(event) {
                return Ok(());
            }
            let violations: Vec<SchemaViolation> = validator
                .iter_errors(event)
                .map(|e| SchemaViolation { pointer: e.instance_path().to_string(), message: e.masked().to_string() })
                .collect();
            if violations.is_empty() { Ok(()) } else { Err(EventValidationError::Invalid(violations)) }
        }
    }
}
