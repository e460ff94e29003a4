//! The `tandem` command: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    cli::init_logging(args.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tandem: cannot start the async runtime: {error}");
            return ExitCode::from(cli::EXIT_CANNOT_RUN);
        }
    };
    ExitCode::from(runtime.block_on(cli::dispatch(args)))
}
