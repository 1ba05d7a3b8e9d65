//! How failures are classified: whether trying again can help.

use serde::{Deserialize, Serialize};

/// Whether a failed attempt is worth another one.
///
/// Every failure in the engine carries its kind from where it happened (a
/// transport, a provider, the scheduler) to the journal and the report:
/// retry policies apply to transient failures only, so a changed host key
/// or a refused login fails its task at once, with the reason, instead of
/// after minutes of backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Another attempt may succeed: a refused or reset connection, a
    /// timeout, a script that exited non-zero.
    Transient,
    /// No attempt will succeed until someone changes something:
    /// authentication refused, a host key unknown or changed, sudo refused,
    /// a script missing, an operation the provider does not support.
    Permanent,
    /// Stopped on purpose (cancel, abort, shutdown), not failed.
    Cancelled,
}

impl FailureKind {
    /// The name shown in reports and stored in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Permanent => "permanent",
            FailureKind::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
