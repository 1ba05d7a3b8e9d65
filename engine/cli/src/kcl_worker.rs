//! `drover kcl-worker` (hidden): a KCL worker process of `drover serve`.
//! The server starts these itself (see `drover_kcl::pool`); the worker
//! evaluates submitted workflows one at a time, confined
//! (`drover_kcl::worker`). Not for people: its one argument is the
//! configuration the server writes.

use std::process::ExitCode;

/// Arguments of `drover kcl-worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The worker's configuration as JSON (written by `drover serve`).
    config: String,
}

/// Serve evaluations on stdin/stdout until stdin closes.
pub fn main(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let status = drover_kcl::worker::main(&args.config);
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(3)))
}
