//! Errors that name the file, the JSON pointer and the fix.

use std::fmt;

/// One problem found in the contracts, located precisely enough to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Path of the offending file, relative to the workspace when possible.
    pub file: String,
    /// RFC 6901 JSON pointer into that file ("" is the document root).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// (line, column) of the pointer in the file, 1-based, once located.
    pub position: Option<(usize, usize)>,
}

impl Diagnostic {
    pub fn new(file: impl Into<String>, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            pointer: pointer.into(),
            message: message.into(),
            hint: None,
            position: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => {
                write!(f, "error: {}:{line}:{column}: #{}: {}", self.file, self.pointer, self.message)?
            }
            None => write!(f, "error: {}#{}: {}", self.file, self.pointer, self.message)?,
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  fix: {hint}")?;
        }
        Ok(())
    }
}

/// Every diagnostic of one run, in a stable order.
#[derive(Debug, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Ok when empty; otherwise the diagnostics sorted by file and pointer.
    pub fn into_result(mut self) -> Result<(), Diagnostics> {
        if self.0.is_empty() {
            Ok(())
        } else {
            self.0.sort_by(|a, b| (&a.file, &a.pointer, &a.message).cmp(&(&b.file, &b.pointer, &b.message)));
            self.0.dedup();
            Err(self)
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        write!(f, "{} contract error(s)", self.0.len())
    }
}

impl std::error::Error for Diagnostics {}

impl Diagnostics {
    /// Fills in each diagnostic's line and column from the files under
    /// `specs_dir` (`display_root` is how file names start).
    pub fn locate(&mut self, specs_dir: &std::path::Path, display_root: &str) {
        let mut cache: std::collections::BTreeMap<String, Option<crate::locate::LineIndex>> =
            Default::default();
        for d in &mut self.0 {
            let Some(rel) = d.file.strip_prefix(display_root).map(|r| r.trim_start_matches('/').to_string())
            else {
                continue;
            };
            let index = cache.entry(rel.clone()).or_insert_with(|| {
                std::fs::read_to_string(specs_dir.join(&rel)).ok().map(|t| crate::locate::LineIndex::new(&t))
            });
            if let Some(index) = index {
                d.position = Some(index.position_of(&d.pointer));
            }
        }
    }

    /// The diagnostics as JSON, SARIF 2.1.0 or GitHub workflow commands.
    pub fn render(&self, format: DiagnosticFormat) -> String {
        let pos = |d: &Diagnostic| d.position.unwrap_or((1, 1));
        match format {
            DiagnosticFormat::Human => format!("{self}\n"),
            DiagnosticFormat::Json => {
                let items: Vec<_> = self
                    .0
                    .iter()
                    .map(|d| {
                        serde_json::json!({"file": d.file, "line": pos(d).0, "column": pos(d).1, "pointer": d.pointer, "message": d.message, "fix": d.hint})
                    })
                    .collect();
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&serde_json::json!({"errors": items})).unwrap_or_default()
                )
            }
            DiagnosticFormat::Sarif => {
                let results: Vec<_> = self
                    .0
                    .iter()
                    .map(|d| {
                        let text = match &d.hint {
                            Some(h) => format!("{} (at #{}). Fix: {h}", d.message, d.pointer),
                            None => format!("{} (at #{})", d.message, d.pointer),
                        };
                        serde_json::json!({
                            "ruleId": "contract-rule",
                            "level": "error",
                            "message": {"text": text},
                            "locations": [{"physicalLocation": {
                                "artifactLocation": {"uri": d.file},
                                "region": {"startLine": pos(d).0, "startColumn": pos(d).1}
                            }}]
                        })
                    })
                    .collect();
                let doc = serde_json::json!({
                    "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
                    "version": "2.1.0",
                    "runs": [{"tool": {"driver": {"name": "oneprotect-codegen", "rules": [{"id": "contract-rule", "shortDescription": {"text": "A rule of the OneProtect contracts"}}]}}, "results": results}]
                });
                format!("{}\n", serde_json::to_string_pretty(&doc).unwrap_or_default())
            }
            DiagnosticFormat::Github => {
                let esc = |s: &str| s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A");
                let prop = |s: &str| esc(s).replace(':', "%3A").replace(',', "%2C");
                self.0
                    .iter()
                    .map(|d| {
                        let fix = d.hint.as_deref().map(|h| format!(" Fix: {h}")).unwrap_or_default();
                        format!(
                            "::error file={},line={},col={},title=contract rule::{}\n",
                            prop(&d.file),
                            pos(d).0,
                            pos(d).1,
                            esc(&format!("#{}: {}.{fix}", d.pointer, d.message))
                        )
                    })
                    .collect()
            }
        }
    }
}

/// How `validate` and `check` print contract errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DiagnosticFormat {
    #[default]
    Human,
    Json,
    Sarif,
    Github,
}

/// Escapes one reference token for use in a JSON pointer (RFC 6901).
pub fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Builds a JSON pointer from reference tokens.
pub fn pointer<I, S>(tokens: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    tokens.into_iter().fold(String::new(), |mut acc, t| {
        acc.push('/');
        acc.push_str(&escape_token(t.as_ref()));
        acc
    })
}
