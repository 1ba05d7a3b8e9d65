//! The bridge to the official KCL engine.
//!
//! Architecture invariant: this crate is the only place that evaluates
//! KCL. It calls the real engine (the `kcl-lib` package's shared library)
//! through its C API, in the calling process (the CLI; the server's own
//! declarations) or in a confined worker process ([`worker`], for
//! workflows submitted to the server); it never parses KCL itself.
//!
//! Layout:
//! - [`engine`]: loading the engine (checking it is kcl-lib
//!   [`engine::EXPECTED_VERSION`]) and calling `KclService.ExecProgram`.
//! - [`diagnostics`]: the engine's error text as located diagnostics.
//! - [`locate`]: finding drover's home and the engine library.
//! - [`load`]: workflow file + declarations → typed model.
//! - [`worker`]: the worker process that evaluates submitted workflows
//!   for `drover serve`, confined (Landlock, memory, stack), one engine
//!   each.
//! - [`pool`]: the server's side of the workers: start them, hand each
//!   request to a free one, enforce the time limit, replace the dead.

pub mod diagnostics;
pub mod engine;
pub mod load;
pub mod locate;
pub mod pool;
pub mod problems;
pub mod worker;

pub use diagnostics::{KclDiagnostic, KclLocation};
pub use engine::{Engine, ExternalPackage, KclError};
pub use load::{LoadError, LoadTimings, Loader};
pub use locate::{EngineLocation, Home};
pub use pool::{EvalError, Evaluation, Limit, Pool, PoolConfig};
