//! Turning the engine's error text into diagnostics with file, line and
//! column.
//!
//! The engine reports errors as rendered text (the same text `kcl run`
//! prints): a title such as `error[E1001]: InvalidSyntax` or
//! `EvaluationError`, then one or more ` --> file:line:column` locations,
//! each with a source excerpt and a label. The text is parsed here rather
//! than re-derived, so what the user sees is the engine's own wording.

use serde::Serialize;

/// One error reported by the KCL engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KclDiagnostic {
    /// The engine's error kind, e.g. `InvalidSyntax`, `TypeError`.
    pub kind: String,
    /// Where the error is, when the engine said.
    pub location: Option<KclLocation>,
    /// The engine's message for the primary location.
    pub message: String,
    /// Further locations the engine named (e.g. the failing `check:` line).
    pub related: Vec<(KclLocation, String)>,
}

/// A place in a KCL source file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KclLocation {
    /// The file, as the engine named it.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

impl std::fmt::Display for KclLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl std::fmt::Display for KclDiagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "{loc}: {}: {}", self.kind, self.message)?,
            None => write!(f, "{}: {}", self.kind, self.message)?,
        }
        for (loc, msg) in &self.related {
            write!(f, "\n  {loc}: {msg}")?;
        }
        Ok(())
    }
}

/// Parse the engine's rendered error text. Never fails: text that does not
/// look like a located error becomes one diagnostic without a location.
pub fn parse_kcl_errors(text: &str) -> Vec<KclDiagnostic> {
    let text = strip_ansi(text);
    let mut out: Vec<KclDiagnostic> = Vec::new();
    let mut current: Option<KclDiagnostic> = None;
    // The location whose label we are waiting for, and whether it is the
    // primary one.
    let mut pending: Option<KclLocation> = None;
    let mut saw_source_line = false;

    let flush = |d: Option<KclDiagnostic>, out: &mut Vec<KclDiagnostic>| {
        if let Some(d) = d
            && !out.contains(&d)
        {
            out.push(d);
        }
    };

    for raw in text.lines() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if let Some(kind) = title(trimmed) {
            flush(current.take(), &mut out);
            current = Some(KclDiagnostic {
                kind,
                location: None,
                message: String::new(),
                related: Vec::new(),
            });
            pending = None;
            continue;
        }
        if let Some(loc) = trimmed.strip_prefix("--> ").and_then(parse_location) {
            let d = current.get_or_insert_with(|| KclDiagnostic {
                kind: "Error".into(),
                location: None,
                message: String::new(),
                related: Vec::new(),
            });
            if d.location.is_none() {
                d.location = Some(loc.clone());
            }
            pending = Some(loc);
            saw_source_line = false;
            continue;
        }
        if let Some((gutter, rest)) = line.split_once('|') {
            let gutter = gutter.trim();
            if !gutter.is_empty() && gutter.chars().all(|c| c.is_ascii_digit()) {
                saw_source_line = true;
                continue;
            }
            let label = rest.trim().trim_start_matches(['^', '~', '-']).trim();
            if saw_source_line
                && !label.is_empty()
                && let (Some(loc), Some(d)) = (pending.take(), current.as_mut())
            {
                if Some(&loc) == d.location.as_ref() && d.message.is_empty() {
                    d.message = label.to_string();
                } else {
                    d.related.push((loc, label.to_string()));
                }
            }
            continue;
        }
        if !trimmed.is_empty() {
            // Unlocated text, e.g. "Cannot find the kcl file, please check
            // the file path ...".
            let d = current.get_or_insert_with(|| KclDiagnostic {
                kind: "Error".into(),
                location: None,
                message: String::new(),
                related: Vec::new(),
            });
            if d.message.is_empty() {
                d.message = trimmed.to_string();
            } else if d.location.is_none() {
                d.message.push(' ');
                d.message.push_str(trimmed);
            }
        }
    }
    flush(current, &mut out);
    for d in &mut out {
        if d.message.is_empty() {
            d.message = d.kind.clone();
        }
        // "Instance check failed" says nothing on its own; the failing
        // `check:` condition's message is what the user needs to read.
        const CHECK: &str = "Check failed on the condition: ";
        if d.message == "Instance check failed"
            && let Some(reason) = d.related.iter().find_map(|(_, m)| m.strip_prefix(CHECK))
        {
            d.message = format!("check failed: {reason}");
        }
    }
    if out.is_empty() {
        out.push(KclDiagnostic {
            kind: "Error".into(),
            location: None,
            message: text.trim().to_string(),
            related: Vec::new(),
        });
    }
    out
}

/// `error[E1001]: InvalidSyntax` → `InvalidSyntax`; `EvaluationError` →
/// `EvaluationError`.
fn title(line: &str) -> Option<String> {
    if let Some(rest) = line.strip_prefix("error[")
        && let Some((_, kind)) = rest.split_once("]: ")
    {
        return Some(kind.trim().to_string());
    }
    let is_kind = line.ends_with("Error") && !line.contains(' ') && line.chars().all(|c| c.is_ascii_alphanumeric());
    is_kind.then(|| line.to_string())
}

fn parse_location(s: &str) -> Option<KclLocation> {
    let mut parts = s.trim().rsplitn(3, ':');
    let column = parts.next()?.parse().ok()?;
    let line = parts.next()?.parse().ok()?;
    let file = parts.next()?.to_string();
    Some(KclLocation { file, line, column })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVAL: &str = "EvaluationError\n \x1b[1;38;5;12m-->\x1b[0m /tmp/kt/bad.k:5:6\n\x1b[1;38;5;12m  |\x1b[0m\n\x1b[1;38;5;12m5 |\x1b[0m app: AppConfig {\n\x1b[1;38;5;12m  |\x1b[0m\x1b[1;38;5;9m      ^\x1b[0m \x1b[1;38;5;9mInstance check failed\x1b[0m\n\x1b[1;38;5;12m  |\x1b[0m\n\n \x1b[1;38;5;12m-->\x1b[0m /tmp/kt/bad.k:4:1\n\x1b[1;38;5;12m  |\x1b[0m\n\x1b[1;38;5;12m4 |\x1b[0m         replicas >= 1, \"replicas must be >= 1\"\n\x1b[1;38;5;12m  |\x1b[0m\x1b[1;38;5;9m \x1b[0m \x1b[1;38;5;9mCheck failed on the condition: replicas must be >= 1\x1b[0m\n\x1b[1;38;5;12m  |\x1b[0m\n\n";

    #[test]
    fn evaluation_error_has_primary_and_related_locations() {
        let d = parse_kcl_errors(EVAL);
        assert_eq!(d.len(), 1);
        let d = &d[0];
        assert_eq!(d.kind, "EvaluationError");
        assert_eq!(d.message, "check failed: replicas must be >= 1");
        let loc = d.location.as_ref().expect("located");
        assert_eq!((loc.file.as_str(), loc.line, loc.column), ("/tmp/kt/bad.k", 5, 6));
        assert_eq!(d.related.len(), 1);
        assert_eq!(d.related[0].0.line, 4);
        assert_eq!(d.related[0].1, "Check failed on the condition: replicas must be >= 1");
    }

    #[test]
    fn duplicated_syntax_errors_are_reported_once() {
        let one = "error[E1001]: InvalidSyntax\n --> /w/a.k:2:17\n  |\n2 |     replicas: 0 +\n  |                 ^ expected one of [\"identifier\"] got newline\n  |\n\n";
        let d = parse_kcl_errors(&format!("{one}\n{one}"));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, "InvalidSyntax");
        assert_eq!(d[0].message, "expected one of [\"identifier\"] got newline");
    }

    #[test]
    fn unlocated_text_is_kept() {
        let d = parse_kcl_errors("Cannot find the kcl file, please check the file path /x.k");
        assert_eq!(d.len(), 1);
        assert!(d[0].location.is_none());
        assert!(d[0].message.contains("/x.k"));
    }
}
