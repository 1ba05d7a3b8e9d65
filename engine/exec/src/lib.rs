//! drover's executor: carries out a plan, durably.
//!
//! Layout:
//! - [`scheduler`]: the event loop that owns a run's state; limits,
//!   retries, conditions, halts, rollback.
//! - [`runner`]: one attempt of one task (provider call or script), and the
//!   run's connections to its servers.
//! - [`run`]: start, resume, retry and roll back runs.
//! - [`fleet`]: `drover exec` as a run, its answers grouped; commands
//!   on open connections for watch, tail and snapshots.
//! - [`snapshot`]: files and command outputs of servers recorded, and
//!   what changed between two records (snapshots, drift).
//! - [`report`]: the end-of-run report.
//! - [`mask`]: secret values replaced wherever text leaves the engine.
//! - [`template`]: taskserv templates rendered per server.
//!
//! Architecture invariants: the journal (drover-state) is the source of
//! truth; every transition is journaled before it is acted on. Only
//! transports (drover-transport) start processes or open connections.
//! This crate names no provider: it drives the registry it is given
//! ([`Options::providers`]).

pub mod fleet;
pub mod ping;
pub mod report;
pub mod run;
pub mod runner;
pub mod scheduler;
pub mod snapshot;
pub mod template;

pub use drover_transport::mask;

pub use run::{ExecError, Inputs, Options, RunHandle, default_state_path};
pub use scheduler::{Control, Progress, Status};
