//! `raftkv-nemesis`: a nemesis run from the command line (the long run; the test suite runs a
//! short one). Needs root (network namespaces) and Go (the checker).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use raftkv_nemesis::{run, Config};

#[derive(Debug, Parser)]
#[command(about = "Inject faults into a real raftkv cluster and check the client history")]
struct Args {
    /// Seed of the fault schedule and the clients' choices (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of fault injection.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(3..=7))]
    nodes: u64,
    #[arg(long, default_value_t = 8)]
    clients: u32,
    #[arg(long, default_value_t = 6)]
    keys: usize,
    /// The raftkv binary (default: the one beside this program).
    #[arg(long)]
    raftkv: Option<PathBuf>,
    /// Output directory: history, node logs, checker output (default: a new temp directory).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("seed {seed} (replay with --seed {seed})");
    let raftkv = args.raftkv.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("raftkv")))
            .unwrap_or_else(|| PathBuf::from("raftkv"))
    });
    let out = match args.out {
        Some(o) => o,
        None => match tempfile::Builder::new().prefix("raftkv-nemesis-").tempdir() {
            Ok(d) => d.keep(),
            Err(e) => {
                eprintln!("error: cannot create an output directory: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let cfg = Config {
        seed,
        duration: Duration::from_secs(args.duration),
        nodes: args.nodes as usize,
        clients: args.clients,
        keys: args.keys,
        raftkv,
        out,
    };
    match run(&cfg).await {
        Ok(report) => {
            println!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
