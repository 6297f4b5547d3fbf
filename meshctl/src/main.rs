//! meshctl: parse the command line, run it, report errors with their causes.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = meshctl::cli::Cli::parse();
    match meshctl::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshctl: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
