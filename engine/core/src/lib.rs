//! drover's core: the typed model, its validation, and the planner.
//!
//! Architecture invariant: nothing in this crate does I/O, reads a clock or
//! draws a random number. Everything it needs (the evaluated workflow, the
//! provider and taskserv declarations, which scripts exist) is passed in by
//! the caller, so it is tested without a runtime or a file system.
//!
//! Layout:
//! - [`model`]: the workflow and declarations as typed data.
//! - [`inventory`]: group membership and server selection.
//! - [`validate`]: reference and constraint checks; collects every problem.
//! - [`plan`]: expansion into a DAG of tasks and gates.
//! - [`diagnostic`]: a problem, with the file and field it is about.
//! - [`failure`]: how a failure is classified (transient, permanent).

pub mod diagnostic;
pub mod failure;
mod graph;
pub mod inventory;
pub mod model;
pub mod plan;
pub mod validate;

pub use diagnostic::Diagnostic;
pub use failure::FailureKind;
pub use plan::Plan;

/// Validate `source` against `catalog` and, when it is valid, plan it.
/// Returns every problem found, not just the first.
pub fn compile(source: &model::Source, catalog: &model::Catalog) -> Result<Plan, Vec<Diagnostic>> {
    let diags = validate::validate(source, catalog);
    if !diags.is_empty() {
        return Err(diags);
    }
    plan::build(source, catalog)
}
