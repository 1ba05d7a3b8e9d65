//! The decrypted content of a file, and the value-free report about it.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroize;

use crate::Format;
use crate::walk::Leaf;

/// The decrypted content of one SOPS file, held in memory only.
///
/// There is no `Display`, and `Debug` prints the key paths with
/// `<redacted>` in place of every value. Strings are overwritten when the
/// value is dropped.
pub struct Secrets {
    pub(crate) file: PathBuf,
    pub(crate) tree: serde_json::Value,
    pub(crate) leaves: Vec<Leaf>,
}

impl Secrets {
    /// The file this was decrypted from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The decrypted document without its `sops` block, as `sops -d
    /// --output-type json` prints it: ints stay ints, floats floats,
    /// booleans booleans. (A float with an integral value, such as `3.0`,
    /// is an integer here, as in sops's output.)
    ///
    /// Object keys are in `serde_json`'s order (sorted: the workspace does
    /// not enable `preserve_order`); [`Secrets::flatten`] keeps file order.
    pub fn tree(&self) -> &serde_json::Value {
        &self.tree
    }

    /// Every leaf as `(path, text)` in file order. Paths join map keys and
    /// list indices with `.` (`db.password`, `hosts.0.name`); texts are
    /// strings as they are, numbers in decimal, `true`/`false`, and the
    /// empty string for null. Empty maps and lists have no entry.
    pub fn flatten(&self) -> Vec<(String, String)> {
        self.leaves.iter().map(|l| (l.key.clone(), l.text.clone())).collect()
    }

    /// The plaintext of every value that was encrypted in the file, for
    /// masking: empty strings left out, duplicates removed, longest first
    /// (so that a masker replacing in this order never leaves part of a
    /// longer secret behind). Values the file keeps in clear are not
    /// secrets and are not included.
    pub fn values(&self) -> Vec<String> {
        let mut values: Vec<String> = self
            .leaves
            .iter()
            .filter(|l| l.encrypted && !l.text.is_empty())
            .map(|l| l.text.clone())
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        values
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Redacted;
        impl fmt::Debug for Redacted {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("<redacted>")
            }
        }
        struct Keys<'a>(&'a [Leaf]);
        impl fmt::Debug for Keys<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|l| (&l.key, Redacted)))
                    .finish()
            }
        }
        f.debug_struct("Secrets")
            .field("file", &self.file)
            .field("values", &Keys(&self.leaves))
            .finish()
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        wipe(&mut self.tree);
        for leaf in &mut self.leaves {
            leaf.text.zeroize();
        }
    }
}

fn wipe(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(wipe),
        serde_json::Value::Object(map) => map.values_mut().for_each(wipe),
        _ => {}
    }
}

/// The type of a value, as the check report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A string.
    Str,
    /// An integer.
    Int,
    /// A floating-point number.
    Float,
    /// A boolean.
    Bool,
    /// Null (never encrypted).
    Null,
}

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueKind::Str => "str",
            ValueKind::Int => "int",
            ValueKind::Float => "float",
            ValueKind::Bool => "bool",
            ValueKind::Null => "null",
        })
    }
}

/// One key of a checked file: where it is and whether it was encrypted,
/// never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// The key path, as in [`Secrets::flatten`].
    pub path: String,
    /// Whether the file holds it encrypted.
    pub encrypted: bool,
    /// Its type.
    pub kind: ValueKind,
}

/// What `drover secrets check FILE` reports: the file decrypts with the
/// identities at hand and its MAC verifies. Holds key paths and counts,
/// never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The file.
    pub file: PathBuf,
    /// How it was read.
    pub format: Format,
    /// The sops version that last wrote it.
    pub sops_version: String,
    /// Its `lastmodified` stamp.
    pub last_modified: String,
    /// Its age recipients.
    pub recipients: Vec<String>,
    /// The recipient whose stanza one of the identities opened.
    pub decrypted_with: String,
    /// Every leaf, in file order.
    pub keys: Vec<KeyEntry>,
    /// How many leaves are encrypted.
    pub encrypted: usize,
    /// How many leaves are in clear (nulls included).
    pub unencrypted: usize,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: OK ({}, sops {}, last modified {}); {} values: {} encrypted, {} in clear",
            self.file.display(),
            self.format,
            self.sops_version,
            self.last_modified,
            self.keys.len(),
            self.encrypted,
            self.unencrypted
        )?;
        writeln!(
            f,
            "recipients: {} (opened with {})",
            self.recipients.join(", "),
            self.decrypted_with
        )?;
        for key in &self.keys {
            writeln!(
                f,
                "  {} {} {}",
                if key.encrypted { "enc  " } else { "clear" },
                key.kind,
                key.path
            )?;
        }
        Ok(())
    }
}
