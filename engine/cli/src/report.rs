//! Reporting problems: each with the file, line and column it is about.

use std::fmt;
use std::path::{Path, PathBuf};

use drover_core::Diagnostic;
use drover_kcl::KclDiagnostic;
use serde::Serialize;

/// Problems from one of the two stages.
pub enum Problems {
    /// The KCL engine rejected a file.
    Kcl(Vec<KclDiagnostic>),
    /// The evaluated configuration is wrong.
    Model(Vec<Diagnostic>),
}

/// A problem with its place resolved, ready to print.
#[derive(Debug, Serialize)]
pub struct Located {
    /// The file.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub column: Option<u32>,
    /// The field path inside the evaluated value, for model problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The KCL error kind, for engine problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// What is wrong.
    pub message: String,
    /// Further notes (the engine's related locations, advice).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Problems {
    /// Resolve every problem's place.
    pub fn locate(self) -> Vec<Located> {
        match self {
            Problems::Kcl(ds) => ds
                .into_iter()
                .map(|d| Located {
                    file: d
                        .location
                        .as_ref()
                        .map(|l| relative(Path::new(&l.file)))
                        .unwrap_or_else(|| "-".into()),
                    line: d.location.as_ref().map(|l| l.line),
                    column: d.location.as_ref().map(|l| l.column),
                    field: None,
                    kind: Some(d.kind.clone()),
                    message: d.message.clone(),
                    notes: d
                        .related
                        .iter()
                        .map(|(l, m)| format!("{}:{}:{}: {m}", relative(Path::new(&l.file)), l.line, l.column))
                        .collect(),
                    help: None,
                })
                .collect(),
            Problems::Model(ds) => ds
                .into_iter()
                .map(|d| {
                    let (line, column) = d.needle.as_deref().and_then(|n| find(&d.file, n)).unzip();
                    Located {
                        file: relative(&d.file),
                        line,
                        column,
                        field: Some(d.field),
                        kind: None,
                        message: d.message,
                        notes: Vec::new(),
                        help: d.help,
                    }
                })
                .collect(),
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Some(kind) => writeln!(f, "error[{kind}]: {}", self.message)?,
            None => writeln!(f, "error: {}", self.message)?,
        }
        match (self.line, self.column) {
            (Some(l), Some(c)) => writeln!(f, "  --> {}:{l}:{c}", self.file)?,
            _ => writeln!(f, "  --> {}", self.file)?,
        }
        if let Some(field) = &self.field {
            writeln!(f, "  = in: {field}")?;
        }
        for n in &self.notes {
            writeln!(f, "  = note: {n}")?;
        }
        if let Some(h) = &self.help {
            writeln!(f, "  = help: {h}")?;
        }
        writeln!(f)
    }
}

/// `path` relative to the working directory when it is below it.
fn relative(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    let abs: PathBuf = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    match cwd.as_deref().and_then(|c| abs.strip_prefix(c).ok()) {
        Some(rel) => rel.display().to_string(),
        None => path.display().to_string(),
    }
}

/// Line and column of the first quoted occurrence of `needle` in `file`
/// (or, failing that, of the bare word).
fn find(file: &Path, needle: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    let quoted = format!("\"{needle}\"");
    let (at, offset) = match text.find(&quoted) {
        Some(i) => (i, 1),
        None => (find_word(&text, needle)?, 0),
    };
    let at = at + offset;
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(at, |nl| at - nl - 1) + 1;
    Some((u32::try_from(line).ok()?, u32::try_from(column).ok()?))
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut from = 0;
    while let Some(i) = text[from..].find(word) {
        let at = from + i;
        let ok_before = text[..at].chars().next_back().is_none_or(|c| !is_ident(c));
        let ok_after = text[at + word.len()..].chars().next().is_none_or(|c| !is_ident(c));
        if ok_before && ok_after {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}
