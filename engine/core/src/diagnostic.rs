//! Problems found in a workflow, each naming where it came from.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// One problem, located by file and field path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file the problem is in (the workflow, or a declaration file).
    pub file: PathBuf,
    /// Where in that file's value, e.g. `operations[2].depends_on[0]`.
    pub field: String,
    /// What is wrong, naming the thing involved.
    pub message: String,
    /// What to do about it, when there is something to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// The offending text as written in the file (a name or id), so a
    /// reporter can point at its line; not shown on its own.
    #[serde(skip)]
    pub needle: Option<String>,
    /// Text that comes before the needle in the file (the id of the
    /// operation or server the field belongs to), so the reporter finds
    /// the right occurrence of a name written several times.
    #[serde(skip)]
    pub anchor: Option<String>,
}

impl Diagnostic {
    /// A problem at `field` of `file`.
    pub fn new(file: impl Into<PathBuf>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            field: field.into(),
            message: message.into(),
            help: None,
            needle: None,
            anchor: None,
        }
    }

    /// Add advice.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Name the text the needle comes after, unless one is set already.
    pub fn within(mut self, anchor: impl Into<String>) -> Self {
        if self.anchor.is_none() {
            self.anchor = Some(anchor.into());
        }
        self
    }

    /// Name the text to point at.
    pub fn at(mut self, needle: impl Into<String>) -> Self {
        self.needle = Some(needle.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.field, self.message)?;
        if let Some(help) = &self.help {
            write!(f, " (help: {help})")?;
        }
        Ok(())
    }
}

/// "a, b, c" for a help text; "(none)" when empty.
pub(crate) fn known<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}
