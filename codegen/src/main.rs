//! `oneprotect-codegen`: validate the contracts, generate Rust from them, and
//! check that the checked-in generated code is current.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use oneprotect_codegen::compat::{self, Spec, output::Format};
use oneprotect_codegen::config::Config;
use oneprotect_codegen::diagnostics::DiagnosticFormat;

/// Exit code when the contracts break a rule.
const EXIT_INVALID: u8 = 1;
/// Exit code when generated/ is stale.
const EXIT_DRIFT: u8 = 3;
/// Exit code when the generator itself cannot run (I/O, rustfmt missing).
const EXIT_TOOL: u8 = 2;

#[derive(Parser)]
#[command(
    name = "oneprotect-codegen",
    version,
    about = "Validate the OneProtect contracts and generate Rust from them"
)]
#[command(
    after_help = "Exit codes: 0 ok, 1 contract errors or a refused incompatible change, 2 tool failure, 3 generated code is stale (run `make generate`)."
)]
struct Cli {
    /// The contract's layout and conventions (default: ./codegen.toml when
    /// it exists, else the OneProtect defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Directory holding openapi.yaml, asyncapi.yaml, events/ and examples/ (overrides the config's `specs`).
    #[arg(long, global = true)]
    specs: Option<PathBuf>,
    /// Directory the generated sources live in (overrides the config's `out`).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// rustfmt configuration used for generated code (overrides the config's `rustfmt_config`).
    #[arg(long, global = true)]
    rustfmt_config: Option<PathBuf>,
    /// How contract errors are printed: human (stderr), or json, sarif or github (stdout).
    #[arg(long, global = true, value_enum, default_value = "human")]
    error_format: DiagnosticFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the contracts: OpenAPI 3.0.x, refs, operationIds, documented
    /// statuses, generator constraints, AsyncAPI ↔ event schemas, examples.
    Validate,
    /// Validate, then write generated/src (deterministic, rustfmt'd).
    Generate,
    /// Validate, then fail if generated/src differs from a fresh generation.
    Check,
    /// Classify every change from a base version of specs/ to this one
    /// (breaking, unclassified, non-breaking, informational). Reports only.
    Diff {
        /// The base: a directory holding a specs/ layout, or a git revision.
        #[arg(long)]
        base: String,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
    },
    /// Print the compatibility rule catalogue as Markdown (docs/compat-rules.md).
    Rules,
    /// `diff`, then fail (exit 1) on a breaking or unclassified change the
    /// contract does not declare: a raised OpenAPI/AsyncAPI major version,
    /// or a new event version file.
    CheckCompat {
        /// The base: a directory holding a specs/ layout, or a git revision.
        #[arg(long)]
        base: String,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
    },
}

/// `diff` and `check-compat`: nothing is generated, and the base need not
/// pass today's validator (it is what was released).
fn compat(config: &Config, base: &str, format: Format, gate: bool) -> ExitCode {
    let base_spec = match Spec::from_dir_or_git(base, &config.specs) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: base: {e}");
            return ExitCode::from(EXIT_TOOL);
        }
    };
    let rev_spec = match Spec::from_dir(&config.specs) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_TOOL);
        }
    };
    let report = compat::diff(&base_spec, &rev_spec);
    let root = config.specs.to_string_lossy().trim_end_matches('/').to_string();
    let refusals = gate.then(|| compat::gate::judge(&report, &base_spec, &rev_spec));
    print!("{}", compat::output::render(format, &report, &root, refusals.as_deref()));
    match refusals {
        Some(r) if !r.is_empty() => {
            eprintln!(
                "error: {} contract change(s) break existing clients or consumers without a declared version; see `refused:` above",
                r.len()
            );
            ExitCode::from(EXIT_INVALID)
        }
        _ => ExitCode::SUCCESS,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::resolve(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_TOOL);
        }
    };
    if let Some(p) = &cli.specs {
        config.specs = p.clone();
    }
    if let Some(p) = &cli.out {
        config.out = p.clone();
    }
    if let Some(p) = &cli.rustfmt_config {
        config.rustfmt_config = p.clone();
    }
    match &cli.command {
        Cmd::Diff { base, format } => return compat(&config, base, *format, false),
        Cmd::CheckCompat { base, format } => return compat(&config, base, *format, true),
        Cmd::Rules => {
            print!("{}", compat::rules::markdown());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let display = config.specs.to_string_lossy().trim_end_matches('/').to_string();
    let contracts = match oneprotect_codegen::validate_with(&config, &display) {
        Ok(c) => c,
        Err(diags) => {
            match cli.error_format {
                DiagnosticFormat::Human => eprint!("{}", diags.render(DiagnosticFormat::Human)),
                other => print!("{}", diags.render(other)),
            }
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let summary = format!(
        "{} operations, {} schemas, {} event types, {} examples",
        contracts.api.operations.len(),
        contracts.api.schema_names.len(),
        contracts.events.len(),
        contracts.raw.openapi_examples.len() + contracts.raw.event_examples.len()
    );
    if matches!(cli.command, Cmd::Validate) {
        println!("contracts valid: {summary}");
        return ExitCode::SUCCESS;
    }
    let files = match oneprotect_codegen::generate::generate(&contracts, &config.rustfmt_config) {
        Ok(f) => f,
        Err(diags) => {
            eprintln!("{diags}");
            return ExitCode::from(EXIT_TOOL);
        }
    };
    match cli.command {
        Cmd::Generate => match oneprotect_codegen::generate::write(&config.out, &files) {
            Ok(changed) => {
                println!(
                    "generated {} files into {} ({changed} changed): {summary}",
                    files.len(),
                    config.out.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", config.out.display());
                ExitCode::from(EXIT_TOOL)
            }
        },
        _ => {
            let drift = oneprotect_codegen::generate::drift(&config.out, &files);
            if drift.is_empty() {
                println!("contracts valid and {} is current: {summary}", config.out.display());
                ExitCode::SUCCESS
            } else {
                for d in &drift {
                    eprintln!("drift: {}/{d}", config.out.display());
                }
                eprintln!(
                    "error: generated code is stale relative to specs/; run `make generate` and commit the result"
                );
                ExitCode::from(EXIT_DRIFT)
            }
        }
    }
}
