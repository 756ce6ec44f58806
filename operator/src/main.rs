//! `raftkv-operator`: run the controller, or print the CRD.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "raftkv-operator",
    version,
    about = "Kubernetes operator for raftkv RaftClusters"
)]
struct Cli {
    /// Log filter; RUST_LOG takes precedence.
    #[arg(long, global = true, env = "RAFTKV_OPERATOR_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format: text or json.
    #[arg(long, global = true, env = "RAFTKV_OPERATOR_LOG_FORMAT", default_value = "json")]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(Box<raftkv_operator::run::RunArgs>),
    /// Print the RaftCluster CRD as YAML.
    Crd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or_else(|| {
        // `raftkv-operator` alone runs with flags from the environment.
        match Cli::try_parse_from(["raftkv-operator", "run"]) {
            Ok(Cli { command: Some(c), .. }) => c,
            _ => Command::Crd,
        }
    });
    if let Command::Crd = command {
        return match raftkv_operator::crd::crd_yaml() {
            Ok(y) => {
                use std::io::Write;
                match std::io::stdout().write_all(y.as_bytes()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("raftkv-operator: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("raftkv-operator: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cli.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cli.log_format == "text" {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).with_current_span(true).try_init()
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftkv-operator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Command::Run(args) = command else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(raftkv_operator::run::run(*args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("raftkv-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
