//! Reporting problems: each with the file, line and column it is about.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::KclDiagnostic;
use drover_core::Diagnostic;
use serde::Serialize;

/// Problems from one of the two stages.
#[derive(Debug)]
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
            Problems::Kcl(mut ds) => {
                // The engine may report a syntax error's consequences before
                // its cause; the earliest position is the one to read first.
                ds.sort_by_key(|d| d.location.as_ref().map(|l| (l.file.clone(), l.line, l.column)));
                ds.into_iter().map(kcl_located).collect()
            }
            Problems::Model(ds) => ds.into_iter().map(model_located).collect(),
        }
    }
}

fn kcl_located(d: KclDiagnostic) -> Located {
    let loc = d.location.as_ref();
    Located {
        file: loc.map(|l| relative(Path::new(&l.file))).unwrap_or_else(|| "-".into()),
        line: loc.map(|l| l.line),
        column: loc.map(|l| l.column),
        field: None,
        kind: Some(d.kind.clone()),
        message: relative_text(&d.message),
        notes: d
            .related
            .iter()
            .map(|(l, m)| format!("{}:{}:{}: {m}", relative(Path::new(&l.file)), l.line, l.column))
            .collect(),
        help: None,
    }
}

fn model_located(d: Diagnostic) -> Located {
    let (line, column) = d
        .needle
        .as_deref()
        .and_then(|n| find(&d.file, n, d.anchor.as_deref()))
        .unzip();
    Located {
        file: relative(&d.file),
        line,
        column,
        field: Some(d.field),
        kind: None,
        message: relative_text(&d.message),
        notes: Vec::new(),
        help: d.help.as_deref().map(relative_text),
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

/// Paths below the working directory, written relative to it.
fn relative_text(s: &str) -> String {
    match std::env::current_dir() {
        Ok(cwd) => s.replace(&format!("{}/", cwd.display()), ""),
        Err(_) => s.to_string(),
    }
}

/// Line and column of `needle` in `file`: the first quoted occurrence
/// (else the first bare word) outside comments, after `anchor` when one is
/// given and found.
fn find(file: &Path, needle: &str, anchor: Option<&str>) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    let from = anchor
        .and_then(|a| find_code(&text, a, 0))
        .map_or(0, |(at, len)| at + len);
    let (at, _) = find_code(&text, needle, from).or_else(|| find_code(&text, needle, 0))?;
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(at, |nl| at - nl - 1) + 1;
    Some((u32::try_from(line).ok()?, u32::try_from(column).ok()?))
}

/// Where `needle` is written, from byte `from` on, outside comments: as a
/// quoted string (the position of its first character), else as a word.
fn find_code(text: &str, needle: &str, from: usize) -> Option<(usize, usize)> {
    let quoted = format!("\"{needle}\"");
    let mut at = from;
    while let Some(i) = text.get(at..).and_then(|t| t.find(&quoted)) {
        let pos = at + i;
        if !in_comment(text, pos) {
            return Some((pos + 1, needle.len()));
        }
        at = pos + quoted.len();
    }
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut at = from;
    while let Some(i) = text.get(at..).and_then(|t| t.find(needle)) {
        let pos = at + i;
        let ok_before = text[..pos].chars().next_back().is_none_or(|c| !is_ident(c));
        let ok_after = text[pos + needle.len()..].chars().next().is_none_or(|c| !is_ident(c));
        if ok_before && ok_after && !in_comment(text, pos) {
            return Some((pos, needle.len()));
        }
        at = pos + needle.len();
    }
    None
}

/// Whether byte `pos` is inside a `#` comment of its line.
fn in_comment(text: &str, pos: usize) -> bool {
    let start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let mut quoted = false;
    for c in text[start..pos].chars() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return true,
            _ => {}
        }
    }
    false
}
