use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = flockd::cli::Cli::parse();
    flockd::cli::init_logging(&cli.global);
    match flockd::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
