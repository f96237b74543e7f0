//! `gatescope`: see `gatescope --help`. The work is in the library; this maps results to exit
//! codes (0 clean, 1 error findings, 2 the run failed).

use clap::Parser;
use gatescope::cli::{self, Cli, Command, Outcome};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Writing to a closed pipe must end the run quietly, not kill it with SIGPIPE halfway
    // through a write; Rust ignores SIGPIPE already, so broken pipes surface as errors that
    // `cli` turns into a clean exit.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            };
        }
    };
    let outcome = match &cli.command {
        Command::Analyze(a) => cli::analyze(a),
        Command::Live(l) => cli::live(l),
    };
    match outcome {
        Outcome::Clean => ExitCode::SUCCESS,
        Outcome::Findings => ExitCode::from(1),
        Outcome::Failed => ExitCode::from(2),
    }
}
