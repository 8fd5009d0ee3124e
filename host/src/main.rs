use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let mut cli = flockd::cli::Cli::parse();
    // The demo narrates on stdout; routine log lines would drown it.
    if matches!(cli.command, flockd::cli::Command::Dev { demo: true, .. })
        && std::env::var_os("RUST_LOG").is_none()
        && cli.global.log == "info"
    {
        cli.global.log = "warn".into();
    }
    flockd::cli::init_logging(&cli.global);
    match flockd::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
