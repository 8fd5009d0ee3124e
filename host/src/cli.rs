//! The command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "flockd", version, about = "An autoscaler for ML job queues with WebAssembly policies")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Log format: human-readable text, or one JSON object per line for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `flockd=debug` (also RUST_LOG).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the autoscaler against a ClearML server and real clouds.
    Run {
        /// The flockd config (default ./flockd.toml, or FLOCKD_CONFIG).
        #[arg(long, short, env = "FLOCKD_CONFIG", default_value = "flockd.toml")]
        config: PathBuf,
        /// Record what would be done in the journal; launch and terminate nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate a config and its policies without any network call (exit 2 on error).
    Check {
        /// The flockd config (default ./flockd.toml, or FLOCKD_CONFIG).
        #[arg(long, short, env = "FLOCKD_CONFIG", default_value = "flockd.toml")]
        config: PathBuf,
        /// `text` for people, `json` for CI pipelines (exit codes are the same).
        #[arg(long, value_enum, default_value_t = crate::check::CheckFormat::Text)]
        format: crate::check::CheckFormat,
    },
    /// Everything on one machine: the built-in ClearML-compatible server, a
    /// simulated cloud in real time and the HTTP dashboard. No cloud account.
    Dev {
        /// A config to use instead of the embedded default (examples/dev.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where the ClearML-compatible API listens; beyond loopback only with --clearml-secret.
        #[arg(long, default_value = "127.0.0.1:8008")]
        clearml_listen: std::net::SocketAddr,
        /// Secret key of the ClearML-compatible API, by reference (`env:NAME` or `file:PATH`); a built-in dev secret, loopback only, when absent.
        #[arg(long)]
        clearml_secret: Option<String>,
        /// Where the dashboard and the status API listen, instead of the config's [http] listen (port 0: any free port).
        #[arg(long)]
        http_listen: Option<std::net::SocketAddr>,
        /// Enqueue a sample workload, show the fleet scale up and down, print a summary and exit.
        #[arg(long)]
        demo: bool,
        /// How long each task runs on a simulated machine, in seconds.
        #[arg(long, default_value_t = 4.0)]
        task_secs: f64,
    },
    /// Serve the built-in ClearML-compatible API server.
    DevServer {
        /// Where to listen; beyond loopback only with --secret-key.
        #[arg(long, default_value = "127.0.0.1:8008")]
        listen: std::net::SocketAddr,
        /// Access key clients log in with.
        #[arg(long, default_value = "flockd-dev")]
        access_key: String,
        /// Secret key reference (`env:NAME` or `file:PATH`); a built-in dev secret, loopback only, when absent.
        #[arg(long)]
        secret_key: Option<String>,
        /// Keep queues and tasks in this file across restarts.
        #[arg(long)]
        persist: Option<PathBuf>,
    },
    /// Replay a task trace through the real controller and policies against a simulated cloud; report cost and waits.
    Simulate(crate::simulate::SimulateArgs),
    /// Why an instance was launched or terminated: every tick that acted on it, from the journal.
    Why(crate::journal_cli::WhyArgs),
    /// The latest decisions from the journal (what each tick did and why).
    Decisions(crate::journal_cli::DecisionsArgs),
    /// Work with policy components: inspect, test against case files, export a built-in.
    #[command(subcommand)]
    Policy(crate::policy_cli::PolicyCommand),
    /// Print a shell completion script, e.g. `flockd completions bash > /etc/bash_completion.d/flockd`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

pub fn init_logging(args: &GlobalArgs) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = args.log_format == LogFormat::Json;
    // Colour codes only for a person at a terminal, never into a file or pipe.
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let stderr: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> =
        if json { Box::new(stderr.json()) } else { Box::new(stderr) };
    // The dashboard's log tail gets the same lines as stderr.
    let tail = crate::http::logs::global().layer(json);
    let _ = tracing_subscriber::registry().with(filter).with(stderr).with(tail).try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, dry_run } => runtime()?.block_on(crate::run::run(&config, dry_run)),
        Command::Check { config, format } => Ok(crate::check::command(&config, format)),
        Command::Dev { config, clearml_listen, clearml_secret, http_listen, demo, task_secs } => {
            let clearml_secret = secret_ref("--clearml-secret", clearml_secret)?;
            // A demo must not fail because a dev server already holds 8008.
            let clearml_listen =
                if demo && clearml_listen.port() == 8008 { ([127, 0, 0, 1], 0).into() } else { clearml_listen };
            runtime()?.block_on(crate::dev::dev(crate::dev::DevOptions {
                config,
                clearml_listen,
                clearml_secret,
                http_listen,
                demo,
                task_secs,
            }))
        }
        Command::DevServer { listen, access_key, secret_key, persist } => {
            let secret_key = secret_ref("--secret-key", secret_key)?;
            runtime()?.block_on(crate::dev::dev_server(listen, access_key, secret_key, persist))
        }
        Command::Simulate(args) => crate::simulate::command(args, &cli.global),
        Command::Policy(cmd) => crate::policy_cli::run(cmd),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "flockd",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Why(args) => runtime()?.block_on(crate::journal_cli::why(args)),
        Command::Decisions(args) => runtime()?.block_on(crate::journal_cli::decisions(args)),
    }
}

/// Parsed here, not by clap: clap's error would echo the value, which may be
/// a secret pasted where its reference belongs.
fn secret_ref(option: &str, value: Option<String>) -> anyhow::Result<Option<flockd_clearml::secret::SecretRef>> {
    use anyhow::Context;
    value.map(|v| v.parse().with_context(|| format!("{option} takes a reference, not a secret"))).transpose()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Issue 16, item 10: `--help` explains every option and argument of
    /// every command.
    #[test]
    fn every_option_has_help_text() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (the command itself)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "flockd", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
