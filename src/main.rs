use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tsbridge::config::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let args = match tsbridge::config::file::with_config_file(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tsbridge: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    let json = matches!(&cli.command, Command::Serve(a) if a.log_format == LogFormat::Json);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TSBRIDGE_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,str0m=warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into files or journald.
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
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
        Command::Health(args) => tsbridge::cli::health(&args).await,
    }
}
