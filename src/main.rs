//! The `raftkv` binary: a node (`serve`), a local cluster (`dev`), and the tools around them.

use std::process::ExitCode;

use clap::Parser;
use raftkv::config::{Cli, Command};

/// A loaded node allocates and frees small buffers on every request and log entry; glibc's
/// allocator spends much of its time consolidating them across threads (perf shows
/// `_int_malloc`, `free`), while mimalloc's per-thread free lists do the same work locally.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How many tasks a runtime worker runs between looks at the queue of tasks woken from other
/// threads. The log writer's "flushed" wakes the Raft core from its own thread, so that wake
/// waits in this queue; tokio's default looks about every 200 µs of polling, so on a node busy
/// with client connections every Raft round could wait up to that long at each fsync. Looking
/// every second task lets a finished fsync reach the Raft core at once (the runs before and
/// after this change: `bench/results/2026-12-03T091225Z.md`, `2026-12-03T101709Z.md`).
const GLOBAL_QUEUE_INTERVAL: u32 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    raftkv::logging::init(&cli.log_level, cli.log_format);
    let is_node = matches!(cli.command, Command::Serve(_) | Command::Dev(_));
    if is_node {
        no_huge_pages();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if is_node {
        builder.global_queue_interval(GLOBAL_QUEUE_INTERVAL);
    }
    if let Command::Serve(args) = &cli.command {
        if args.worker_threads > 0 {
            builder.worker_threads(args.worker_threads);
        }
    }
    let runtime = match builder.enable_all().build() {
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
            Command::Admin(args) => raftkv::cli::admin::run(args).await,
            Command::Kv(args) => raftkv::cli::kv::run(args).await,
            Command::Auth(args) => raftkv::cli::auth::run_auth(args).await,
            Command::User(args) => raftkv::cli::auth::run_user(args).await,
            Command::Role(args) => raftkv::cli::auth::run_role(args).await,
            Command::Restore(args) => raftkv::cli::restore::run(args).await,
            Command::Bench(args) => raftkv::bench::run(args).await,
            Command::NoopServer { http_addr } => raftkv::bench::noop_server(http_addr).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<raftkv::node::RemovedAtStart>().is_some() => {
            eprintln!("raftkv: {e}");
            ExitCode::SUCCESS
        }
        Err(e) if e.downcast_ref::<raftkv::cli::UsageError>().is_some() => {
            eprintln!("raftkv: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            if is_node {
                tracing::error!("{e:#}");
            }
            eprintln!("raftkv: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process. A node takes memory and gives it back
/// all the time (request buffers, log entries until their checkpoint, the state machine's
/// layer until its flush); where THP is `always`, every fresh 2 MiB of heap is one fault that
/// zeroes all of it at once, on the request thread or the state flusher, which shows in the
/// tail latency. Databases ask for the same (Redis, MongoDB); an error only means the kernel
/// keeps its setting.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(error = %e, "cannot turn transparent huge pages off");
    }
}
