//! `oneprotect-conformance`: run the catalogue against a deployment, the
//! server in-process, or the agent binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use oneprotect_conformance::checks::CATALOGUE;
use oneprotect_conformance::ctx::{Ctx, LocalPowers};
use oneprotect_conformance::report::Report;
use oneprotect_conformance::{Target, evidence, local, preflight, profile, runner};
use secrecy::SecretString;

#[derive(Parser)]
#[command(
    name = "oneprotect-conformance",
    version,
    about = "Checks that a OneProtect deployment and agent keep the contract's security promises"
)]
#[command(
    after_help = "Exit codes: 0 every applicable check passed, 1 a check failed (or cleanup failed), 2 could not run (usage, preflight), 130 interrupted (after cleanup)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the catalogue: id, family, targets and promise.
    List,
    /// Run the applicable checks against a target.
    Run(Box<RunArgs>),
    /// Re-check an evidence bundle's digests: exit 0 intact, 1 changed, 2 unreadable.
    Verify {
        /// The bundle written by `run --evidence DIR`.
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum TargetArg {
    Http,
    Local,
    Agent,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
    Junit,
}

#[derive(Args)]
struct RunArgs {
    /// What to check (or `target:` in the profile).
    #[arg(long, value_enum)]
    target: Option<TargetArg>,
    /// A YAML run profile: target, base URL, CA bundle, credential files,
    /// and the failures the deployment is known to have, each with a reason.
    /// Flags given on the command line win over the profile.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Certify: fail unless every check the target can run ran, and every
    /// failure is declared in the profile.
    #[arg(long)]
    certified: bool,
    /// Run the checks that wait in real time (about a minute, beside the others).
    #[arg(long)]
    allow_waits: bool,
    /// Run only these families or check ids (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Print the selected checks instead of running them.
    #[arg(long)]
    list: bool,
    #[arg(long, value_enum, default_value = "human")]
    format: Format,
    /// Write the report here instead of stdout.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write an evidence bundle into this new directory: redacted
    /// transcripts, JSON and HTML reports, and a manifest of digests.
    #[arg(long)]
    evidence: Option<PathBuf>,
    /// http: the deployment's base URL.
    #[arg(long, env = "ONEPROTECT_CONFORMANCE_BASE_URL")]
    base_url: Option<String>,
    /// http: tenant-admin bearer for tenant A (prefer the _FILE or env forms).
    #[arg(long, env = "ONEPROTECT_CONFORMANCE_ADMIN_TOKEN_A", hide_env_values = true)]
    admin_token_a: Option<String>,
    #[arg(long)]
    admin_token_a_file: Option<PathBuf>,
    /// http: tenant-admin bearer for a second tenant B.
    #[arg(long, env = "ONEPROTECT_CONFORMANCE_ADMIN_TOKEN_B", hide_env_values = true)]
    admin_token_b: Option<String>,
    #[arg(long)]
    admin_token_b_file: Option<PathBuf>,
    /// http: a PEM CA bundle to trust for the deployment.
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
    /// http: the NATS server the deployment relays its events to; the
    /// broker check reads the run's events there (the local target runs
    /// its own broker).
    #[arg(long, env = "ONEPROTECT_CONFORMANCE_NATS_URL")]
    nats_url: Option<String>,
    /// http: the JetStream stream of the deployment's events.
    #[arg(long, default_value = oneprotect_server::relay::DEFAULT_STREAM)]
    nats_stream: String,
    /// local: `postgres://…` of a role that may create databases and roles;
    /// the harness creates a throwaway database. Default: SQLite.
    #[arg(long)]
    database: Option<String>,
    /// agent: the agent binary (default: oneprotect-agent next to this binary).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
}

fn secret(value: Option<String>, file: Option<PathBuf>, name: &str) -> Result<SecretString, String> {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        return Ok(SecretString::from(v.trim().to_owned()));
    }
    if let Some(path) = file {
        return std::fs::read_to_string(&path)
            .map(|t| SecretString::from(t.trim().to_owned()))
            .map_err(|e| format!("{}: {e}", path.display()));
    }
    Err(format!("the http target needs --{name} (or --{name}-file, or the environment variable)"))
}

fn target(t: TargetArg) -> Target {
    match t {
        TargetArg::Http => Target::Http,
        TargetArg::Local => Target::Local,
        TargetArg::Agent => Target::Agent,
    }
}

fn emit(report: &Report, format: Format, output: Option<&PathBuf>) -> Result<(), String> {
    let text = match format {
        Format::Human => report.human(),
        Format::Json => report.json(),
        Format::Junit => report.junit(),
    };
    match output {
        Some(path) => std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display())),
        None => {
            let _ = out(&text);
            Ok(())
        }
    }
}

/// What a run works against: the in-process platform (kept alive for the
/// run) or a context for a deployment or the agent.
enum Running {
    Local(Box<local::LocalPlatform>),
    Remote(Box<Ctx>),
}

impl Running {
    fn ctx(&self) -> &Ctx {
        match self {
            Self::Local(p) => &p.ctx,
            Self::Remote(c) => c,
        }
    }
}

async fn build_ctx(args: &RunArgs, target: TargetArg) -> Result<Running, String> {
    match target {
        TargetArg::Local => {
            let platform = local::start(args.database.as_deref(), None)
                .await
                .map_err(|e| format!("cannot start the local platform: {e}"))?;
            Ok(Running::Local(Box::new(platform)))
        }
        TargetArg::Http => {
            let base = args.base_url.clone().ok_or("the http target needs --base-url")?;
            preflight::parse_base_url(&base)?;
            let a = secret(args.admin_token_a.clone(), args.admin_token_a_file.clone(), "admin-token-a")?;
            let b = secret(args.admin_token_b.clone(), args.admin_token_b_file.clone(), "admin-token-b")?;
            let roots_pem = match &args.ca_bundle {
                Some(ca) => Some(std::fs::read_to_string(ca).map_err(|e| format!("{}: {e}", ca.display()))?),
                None => None,
            };
            let tls = oneprotect_conformance::ctx::AgentTls { roots_pem };
            let http = tls
                .builder()
                .map_err(|e| {
                    let path = args.ca_bundle.as_deref().unwrap_or(std::path::Path::new("--ca-bundle"));
                    format!("{}: {e}", path.display())
                })?
                .tls_info(true)
                .build()
                .map_err(|e| e.to_string())?;
            let mut ctx = Ctx::new(&base, http, a, b, LocalPowers::default());
            // Over https, agent calls present the enrolled agent's certificate.
            if base.starts_with("https://") {
                ctx.agent_tls = Some(tls);
            }
            ctx.allow_waits = args.allow_waits;
            ctx.nats = args.nats_url.clone().map(|url| oneprotect_conformance::nats::NatsTarget {
                url,
                stream: args.nats_stream.clone(),
            });
            preflight::preflight(&ctx).await.map_err(|e| format!("preflight: {e}"))?;
            Ok(Running::Remote(Box::new(ctx)))
        }
        TargetArg::Agent => {
            let bin = args.agent_bin.clone().or_else(|| {
                std::env::current_exe().ok().and_then(|e| {
                    e.parent().map(|d| d.join(format!("oneprotect-agent{}", std::env::consts::EXE_SUFFIX)))
                })
            });
            let bin = bin
                .filter(|b| b.exists())
                .ok_or("the agent target needs --agent-bin (no oneprotect-agent next to this binary)")?;
            let powers = LocalPowers { agent_bin: Some(bin), ..LocalPowers::default() };
            let ctx = Ctx::new(
                "http://127.0.0.1:9",
                reqwest::Client::new(),
                SecretString::from(String::new()),
                SecretString::from(String::new()),
                powers,
            );
            Ok(Running::Remote(Box::new(ctx)))
        }
    }
}

/// Writes to stdout; a reader that went away (`| head`) ends the output
/// quietly instead of a panic.
fn out(text: &str) -> Result<(), ()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).map_err(|_| ())
}

/// Fills what the command line left open from the profile.
fn merge_profile(args: &mut RunArgs, profile: &profile::Profile) -> Result<(), String> {
    if args.target.is_none()
        && let Some(t) = &profile.target
    {
        args.target = Some(
            TargetArg::from_str(t, true)
                .map_err(|_| format!("profile: unknown target {t:?} (http, local or agent)"))?,
        );
    }
    args.base_url = args.base_url.take().or_else(|| profile.base_url.clone());
    args.ca_bundle = args.ca_bundle.take().or_else(|| profile.ca_bundle.clone());
    if args.admin_token_a.is_none() {
        args.admin_token_a_file =
            args.admin_token_a_file.take().or_else(|| profile.admin_token_a_file.clone());
    }
    if args.admin_token_b.is_none() {
        args.admin_token_b_file =
            args.admin_token_b_file.take().or_else(|| profile.admin_token_b_file.clone());
    }
    args.database = args.database.take().or_else(|| profile.database.clone());
    args.nats_url = args.nats_url.take().or_else(|| profile.nats_url.clone());
    if let Some(stream) = &profile.nats_stream
        && args.nats_stream == oneprotect_server::relay::DEFAULT_STREAM
    {
        args.nats_stream = stream.clone();
    }
    args.agent_bin = args.agent_bin.take().or_else(|| profile.agent_bin.clone());
    args.allow_waits |= profile.allow_waits;
    Ok(())
}

async fn run(mut args: RunArgs) -> ExitCode {
    let profile = match &args.profile {
        Some(path) => match profile::Profile::load(path, &CATALOGUE) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if let Some(p) = &profile
        && let Err(e) = merge_profile(&mut args, p)
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let Some(target_arg) = args.target else {
        eprintln!("error: no target: pass --target http|local|agent or set `target:` in the profile");
        return ExitCode::from(2);
    };
    let t = target(target_arg);
    let checks = runner::selected(&CATALOGUE, t, &args.only);
    if args.list {
        let text: String = checks.iter().map(|c| format!("{:<55} {}\n", c.id, c.promise)).collect();
        let _ = out(&text);
        return ExitCode::SUCCESS;
    }
    if checks.is_empty() {
        eprintln!("error: no check matches --only {:?} for this target", args.only);
        return ExitCode::from(2);
    }
    if let Some(dir) = &args.evidence
        && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
    {
        eprintln!(
            "error: --evidence {} is not empty; the evidence bundle goes into a new directory",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let running = match build_ctx(&args, target_arg).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = running.ctx();
    if args.evidence.is_some() {
        ctx.record_exchanges();
    }
    let mut report = tokio::select! {
        r = runner::run(ctx, t, &checks, true) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted; revoking what this run created");
            for failure in ctx.cleanup().await {
                eprintln!("cleanup failed: {failure}");
            }
            return ExitCode::from(130);
        }
    };
    let expected = profile.as_ref().map(profile::Profile::expected).unwrap_or_default();
    profile::apply_expected_failures(&mut report, &expected);
    if args.certified {
        report.certification = profile::certification_problems(&report, t, &expected);
    }
    if let Err(e) = emit(&report, args.format, args.output.as_ref()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Some(dir) = &args.evidence {
        let facts = evidence::RunFacts {
            target_url: (t != Target::Agent).then(|| ctx.base.clone()),
            tls_certificate_sha256: ctx
                .tls_certificate_sha256
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            profile: profile.as_ref().and_then(|p| serde_json::to_value(p).ok()),
        };
        if let Err(e) = evidence::write(dir, &report, &ctx.secrets(), &facts) {
            eprintln!("error: evidence: {e}");
            return ExitCode::from(2);
        }
        eprintln!(
            "evidence written to {} (check it with `oneprotect-conformance verify {}`)",
            dir.display(),
            dir.display()
        );
    }
    if args.output.is_some() || !matches!(args.format, Format::Human) {
        let total = report.total();
        eprintln!("{} passed, {} failed, {} skipped", total.passed, total.failed, total.skipped);
    }
    if !report.run_errors.is_empty() && report.total().failed == 0 {
        return ExitCode::from(2);
    }
    if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::List => {
            let mut text = String::new();
            for c in CATALOGUE.iter() {
                let targets: Vec<String> =
                    c.targets.iter().map(|t| format!("{t:?}").to_lowercase()).collect();
                text.push_str(&format!(
                    "{:<55} {:<17} {:<12} {}\n",
                    c.id,
                    c.family.as_str(),
                    targets.join(","),
                    c.promise
                ));
            }
            let _ = out(&text);
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(*args).await,
        Command::Verify { dir } => match evidence::verify(&dir) {
            Ok(problems) if problems.is_empty() => {
                let _ = out(&format!("{}: every file matches the manifest\n", dir.display()));
                ExitCode::SUCCESS
            }
            Ok(problems) => {
                for p in problems {
                    eprintln!("{p}");
                }
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
