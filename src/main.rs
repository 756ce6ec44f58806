//! The `raftkv` binary: a node (`serve`), a local cluster (`dev`), and the tools around them.

use std::process::ExitCode;

use clap::Parser;
use raftkv::config::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    raftkv::logging::init(&cli.log_level, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftkv: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let node = raftkv::node::Node::start(&args).await?;
                node.run_until_signal().await
            }
            Command::Dev(args) => raftkv::dev::run(args, &cli.log_level).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("raftkv: {e:#}");
            ExitCode::FAILURE
        }
    }
}
