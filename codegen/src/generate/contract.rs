//! `contract.rs` of the generated crate: the operation table, route
//! handles, problem codes and JSON Schema validation of bodies.

use super::*;

pub(super) fn contract_module(c: &Contracts) -> TokenStream {
    let sha = &c.raw.spec_sha256;
    let asyncapi_json = if c.config.events {
        quote! {
            /// The AsyncAPI document, as JSON.
            pub const ASYNCAPI_JSON: &str = include_str!("schemas/asyncapi.json");
        }
    } else {
        quote! {}
    };
    let ops = c.api.operations.iter().map(|op| {
        let id = &op.id;
        let method = op.method.to_uppercase();
        let path = &op.path;
        let security = match &op.security {
            Some(s) => quote! { Some(#s) },
            None => quote! { None },
        };
        let request = match &op.body {
            Some(b) => quote! { Some(#b) },
            None => quote! { None },
        };
        let responses = op.responses.iter().map(|r| {
            let status = r.status;
            let body = match &r.body {
                ResponseBody::Json(n) => quote! { ResponseSpec::Json(#n) },
                ResponseBody::Text(media) => quote! { ResponseSpec::Text(#media) },
                ResponseBody::Empty => quote! { ResponseSpec::Empty },
            };
            quote! { (#status, #body) }
        });
        let variant = format_ident!("{}", crate::openapi::pascal_case(id));
        let client_certificate = op.client_certificate;
        quote! {
            OperationSpec { id: OperationId::#variant, operation_id: #id, method: #method, path: #path, security: #security, client_certificate: #client_certificate, request_schema: #request, responses: &[#(#responses),*] }
        }
    });
    let id_variants: Vec<_> =
        c.api.operations.iter().map(|op| format_ident!("{}", crate::openapi::pascal_case(&op.id))).collect();
    let id_docs: Vec<String> = c
        .api
        .operations
        .iter()
        .map(|op| format!(" `{}`: `{} {}`", op.id, op.method.to_uppercase(), op.path))
        .collect();
    let forbidden =
        c.api.forbidden_properties.iter().map(|(schema, props)| quote! { (#schema, &[#(#props),*]) });
    let codes = &c.api.problem_codes;
    let code_variants: Vec<_> =
        codes.iter().map(|c| format_ident!("{}", crate::openapi::pascal_case(c))).collect();
    let code_count = codes.len();
    let handles = c.api.operations.iter().enumerate().map(|(index, op)| {
        let name = format_ident!("{}", crate::openapi::snake_case(&op.id));
        let args: Vec<_> = op.path_params.iter().map(|p| format_ident!("{}", p.name)).collect();
        let placeholders: Vec<String> = op.path_params.iter().map(|p| format!("{{{}}}", p.name)).collect();
        let path = &op.path;
        let doc = format!(
            " `{} {}` (`{}`), its path parameters inserted as given.",
            op.method.to_uppercase(),
            op.path,
            op.id
        );
        quote! {
            #[doc = #doc]
            pub fn #name(#(#args: impl std::fmt::Display),*) -> Route {
                let path = String::from(#path) #(.replace(#placeholders, &#args.to_string()))*;
                Route { op: &OPERATIONS[#index], path }
            }
        }
    });
    quote! {
        use std::collections::BTreeMap;
        use std::sync::LazyLock;

        /// SHA-256 of the contract files this crate was generated from.
        pub const SPEC_SHA256: &str = #sha;

        /// The OpenAPI document, as JSON.
        pub const OPENAPI_JSON: &str = include_str!("schemas/openapi.json");

        #asyncapi_json

        /// `components/schemas` as one JSON Schema 2020-12 document (`$defs`).
        pub const SCHEMA_BUNDLE_JSON: &str = include_str!("schemas/openapi.schema.json");

        /// What a documented response carries.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ResponseSpec {
            /// `application/json` with this component schema.
            Json(&'static str),
            /// A string of this text media type.
            Text(&'static str),
            /// No body.
            Empty,
        }

        /// Every operation of the contract: an implementation that must say
        /// something per operation (its audit action, whether it writes)
        /// matches on it exhaustively, so a new operation does not compile
        /// until it is declared.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum OperationId {
            #(#[doc = #id_docs] #id_variants,)*
        }

        /// One operation of the contract.
        #[derive(Debug, Clone, Copy)]
        pub struct OperationSpec {
            pub id: OperationId,
            pub operation_id: &'static str,
            pub method: &'static str,
            pub path: &'static str,
            /// The bearer security scheme it requires, if any.
            pub security: Option<&'static str>,
            /// Whether a verified TLS client certificate is accepted as its
            /// credential (`x-oneprotect-client-certificate`).
            pub client_certificate: bool,
            pub request_schema: Option<&'static str>,
            /// Every documented status, ascending.
            pub responses: &'static [(u16, ResponseSpec)],
        }

        impl OperationSpec {
            /// The documented response for `status`, if any.
            pub fn response(&self, status: u16) -> Option<ResponseSpec> {
                self.responses.iter().find(|(s, _)| *s == status).map(|(_, r)| *r)
            }
        }

        /// Every operation, in path order.
        pub const OPERATIONS: &[OperationSpec] = &[#(#ops),*];

        /// Request schemas and the identity properties they may not carry.
        pub const FORBIDDEN_PROPERTIES: &[(&str, &[&str])] = &[#(#forbidden),*];

        /// One request target: an operation of the contract and the concrete
        /// path (and query) to send it to. Built by the functions in [`ops`],
        /// so a test or check naming an operation the contract no longer has
        /// does not compile.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Route {
            pub op: &'static OperationSpec,
            /// Path and query, starting with `/`.
            pub path: String,
        }

        impl OperationSpec {
            /// A route to this operation, each `{name}` path parameter
            /// replaced by `value(name)`, inserted as given.
            pub fn route(&'static self, value: impl Fn(&str) -> String) -> Route {
                let mut path = String::with_capacity(self.path.len());
                let mut rest = self.path;
                while let Some(open) = rest.find('{') {
                    path.push_str(&rest[..open]);
                    match rest[open..].find('}') {
                        Some(close) => {
                            path.push_str(&value(&rest[open + 1..open + close]));
                            rest = &rest[open + close + 1..];
                        }
                        None => {
                            rest = &rest[open..];
                            break;
                        }
                    }
                }
                path.push_str(rest);
                Route { op: self, path }
            }
        }

        impl PartialEq for OperationSpec {
            fn eq(&self, other: &Self) -> bool {
                self.operation_id == other.operation_id
            }
        }

        impl Eq for OperationSpec {}

        impl Route {
            /// Appends `name=value` to the query, percent-encoding the value.
            pub fn query(mut self, name: &str, value: impl std::fmt::Display) -> Self {
                let sep = if self.path.contains('?') { '&' } else { '?' };
                self.path.push(sep);
                self.path.push_str(name);
                self.path.push('=');
                for b in value.to_string().bytes() {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                        self.path.push(b as char);
                    } else {
                        self.path.push_str(&format!("%{b:02X}"));
                    }
                }
                self
            }

            /// The HTTP method the operation is sent with.
            pub fn method(&self) -> &'static str {
                self.op.method
            }

            /// The operation's `operationId`.
            pub fn operation_id(&self) -> &'static str {
                self.op.operation_id
            }
        }

        /// Every stable machine `code` a `Problem` carries today (`Problem.code`'s
        /// `x-extensible-enum`). The list is open: a later release may add
        /// codes, so a reader parses with [`ProblemCode::parse`] and treats
        /// `None` by the HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ProblemCode {
            #(#[doc = #codes] #code_variants,)*
        }

        impl ProblemCode {
            /// Every code, in the contract's order.
            pub const ALL: [ProblemCode; #code_count] = [#(ProblemCode::#code_variants),*];

            /// The code as it appears on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    #(ProblemCode::#code_variants => #codes,)*
                }
            }

            /// The known code with this name; `None` for one this build does not know.
            pub fn parse(code: &str) -> Option<ProblemCode> {
                Self::ALL.into_iter().find(|c| c.as_str() == code)
            }
        }

        /// Written as its wire string. There is deliberately no `Deserialize`:
        /// a reader keeps the wire string and calls [`ProblemCode::parse`].
        impl serde::Serialize for ProblemCode {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl std::fmt::Display for ProblemCode {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<ProblemCode> for &str {
            fn eq(&self, other: &ProblemCode) -> bool {
                *self == other.as_str()
            }
        }

        impl PartialEq<ProblemCode> for str {
            fn eq(&self, other: &ProblemCode) -> bool {
                self == other.as_str()
            }
        }

        impl PartialEq<ProblemCode> for String {
            fn eq(&self, other: &ProblemCode) -> bool {
                self == other.as_str()
            }
        }

        /// Typed handles: one function per operation, its path parameters as arguments.
        pub mod ops {
            use super::{OPERATIONS, Route};

            #(#handles)*
        }

        /// The operation with this `operationId`.
        pub fn operation(operation_id: &str) -> Option<&'static OperationSpec> {
            OPERATIONS.iter().find(|op| op.operation_id == operation_id)
        }

        /// One schema violation: where, and what (never the offending value).
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct SchemaViolation {
            /// JSON pointer into the instance.
            pub pointer: String,
            pub message: String,
        }

        impl std::fmt::Display for SchemaViolation {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}: {}", if self.pointer.is_empty() { "/" } else { &self.pointer }, self.message)
            }
        }

        static VALIDATORS: LazyLock<BTreeMap<String, jsonschema::Validator>> = LazyLock::new(|| {
            let Ok(bundle) = serde_json::from_str::<serde_json::Value>(SCHEMA_BUNDLE_JSON) else { return BTreeMap::new() };
            let names: Vec<String> = bundle.get("$defs").and_then(|d| d.as_object()).map(|d| d.keys().cloned().collect()).unwrap_or_default();
            names
                .into_iter()
                .filter_map(|name| {
                    let mut root = bundle.clone();
                    root.as_object_mut()?.insert("$ref".into(), serde_json::Value::String(format!("#/$defs/{name}")));
                    let validator = jsonschema::options().should_validate_formats(true).build(&root).ok()?;
                    Some((name, validator))
                })
                .collect()
        });

        /// Validates `instance` against `components/schemas/<schema>`.
        /// An unknown schema name is itself a violation (fail closed).
        pub fn validate_schema(schema: &str, instance: &serde_json::Value) -> Result<(), Vec<SchemaViolation>> {
            let Some(validator) = VALIDATORS.get(schema) else {
                return Err(vec![SchemaViolation { pointer: String::new(), message: format!("unknown schema `{schema}`") }]);
            };
            // The answer without collecting errors first: valid bodies are the rule.
            if validator.is_valid(instance) {
                return Ok(());
            }
            let violations: Vec<SchemaViolation> = validator
                .iter_errors(instance)
                .map(|e| SchemaViolation { pointer: e.instance_path().to_string(), message: e.masked().to_string() })
                .collect();
            if violations.is_empty() { Ok(()) } else { Err(violations) }
        }

        /// The first identity property `instance` carries that `schema` forbids.
        pub fn forbidden_property(schema: &str, instance: &serde_json::Value) -> Option<&'static str> {
            let object = instance.as_object()?;
            FORBIDDEN_PROPERTIES
                .iter()
                .filter(|(s, _)| *s == schema)
                .flat_map(|(_, props)| props.iter())
                .find(|p| object.contains_key(**p))
                .copied()
        }
    }
}
