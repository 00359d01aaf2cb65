use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tsbridge::config::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TSBRIDGE_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,str0m=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tsbridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsbridge: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Command) -> Result<(), String> {
    match cmd {
        Command::Serve(args) => tsbridge::cli::serve(args).await,
        Command::Replay(args) => {
            tsbridge::ingest::replay::push(&args.file, &args.to, args.looping).await
        }
        Command::Probe(args) => {
            let report = tsbridge::probe::run(&args.input, args.seconds).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
                );
            } else {
                print!("{}", report.text());
            }
            Ok(())
        }
        Command::Loadtest(args) => tsbridge::cli::loadtest(&args.args),
    }
}
