//! The bridge to the official KCL engine.
//!
//! Architecture invariant: this crate is the only place that evaluates
//! KCL. It calls the real engine (the `kcl-lib` package's shared library)
//! in-process; it never parses KCL itself.
//!
//! Layout:
//! - [`engine`]: loading the engine (checking it is kcl-lib
//!   [`engine::EXPECTED_VERSION`]) and calling `KclService.ExecProgram`.
//! - [`diagnostics`]: the engine's error text as located diagnostics.
//! - [`locate`]: finding drover's home and the engine library.
//! - [`load`]: workflow file + declarations → typed model.

pub mod diagnostics;
pub mod engine;
pub mod load;
pub mod locate;
pub mod problems;

pub use diagnostics::{KclDiagnostic, KclLocation};
pub use engine::{Engine, ExternalPackage, KclError};
pub use load::{LoadError, LoadTimings, Loader};
pub use locate::{EngineLocation, Home};
