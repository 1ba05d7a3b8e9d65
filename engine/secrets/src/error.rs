//! The one error type of this crate.
//!
//! Every variant names the file (or identity source) it is about and says
//! what to do. No variant ever carries a decrypted value: the places that
//! build them only pass key paths, recipients and fixed reasons.

use std::path::PathBuf;

/// Why a SOPS file could not be decrypted or identities could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// The secrets file could not be read from disk.
    #[error("cannot read secrets file {}: {source}; check that it exists and is readable", file.display())]
    FileUnreadable {
        /// The file.
        file: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// The file is not valid YAML or JSON.
    #[error("{} is not valid {format}: {message}; fix the syntax or re-create it with `sops --encrypt`", file.display())]
    Malformed {
        /// The file.
        file: PathBuf,
        /// The format it was read as.
        format: crate::Format,
        /// The parser's message (positions, never values).
        message: String,
    },

    /// The file has no top-level `sops` metadata block.
    #[error(
        "{} is not a SOPS file: it has no top-level `sops` metadata; encrypt it with \
         `sops --encrypt --age <recipient> --in-place {}`",
        file.display(),
        file.display()
    )]
    NotSopsFile {
        /// The file.
        file: PathBuf,
    },

    /// The `sops` metadata block is present but not usable.
    #[error("{}: invalid `sops` metadata: {message}; re-encrypt the file with the sops tool", file.display())]
    InvalidMetadata {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// The file uses something this crate does not implement (PGP/KMS-only
    /// recipients, Shamir key groups, comment-based encryption rules, other
    /// file formats, several YAML documents).
    #[error("{}: unsupported: {what}", file.display())]
    Unsupported {
        /// The file.
        file: PathBuf,
        /// What is not supported and what to do instead.
        what: String,
    },

    /// None of the available age identities opens any of the file's age
    /// recipient stanzas (or there were no identities at all).
    #[error(
        "{}: no age identity can decrypt this file. The file is encrypted to: {}. {}. \
         Identities were looked for in: {}.{} Provide the identity (AGE-SECRET-KEY-1...) of one \
         of those recipients, e.g. with SOPS_AGE_KEY_FILE, or ask someone who holds one to add your \
         recipient: `sops --rotate --in-place --add-age <your age1...> FILE`",
        file.display(),
        list(recipients),
        tried(identities),
        list(searched),
        other_problems(problems)
    )]
    NoMatchingIdentity {
        /// The file.
        file: PathBuf,
        /// The file's age recipients (public keys).
        recipients: Vec<String>,
        /// The public keys of the identities that were tried.
        identities: Vec<String>,
        /// Where identities were looked for, with what was found there.
        searched: Vec<String>,
        /// Errors other than "not for this identity" met on the way (a
        /// malformed `enc` block, say).
        problems: Vec<String>,
    },

    /// The file's MAC does not match its content.
    #[error(
        "{}: MAC mismatch: the file was modified outside sops or is corrupt (its integrity check \
         failed); restore it from version control or re-create it with sops",
        file.display()
    )]
    MacMismatch {
        /// The file.
        file: PathBuf,
    },

    /// One value could not be decrypted.
    #[error(
        "{}: cannot decrypt the value at `{key_path}`: {reason}; restore the file from version \
         control or set that value again with `sops set`",
        file.display()
    )]
    ValueDecrypt {
        /// The file.
        file: PathBuf,
        /// The value's key path (`a.b.0.c`), never its content.
        key_path: String,
        /// A fixed description of what failed.
        reason: &'static str,
    },

    /// An identity file could not be read.
    #[error("cannot read age identity file {} ({origin}): {source}; check the path and its permissions", path.display())]
    IdentityFileUnreadable {
        /// The file.
        path: PathBuf,
        /// How it was named (an explicit path, SOPS_AGE_KEY_FILE, the default location).
        origin: String,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// Identity text could not be parsed.
    #[error(
        "invalid age identities in {origin}: {reason}; expected lines `AGE-SECRET-KEY-1...` as \
         written by `age-keygen`, with `#` comments and blank lines allowed"
    )]
    InvalidIdentities {
        /// Where the text came from (a path, SOPS_AGE_KEY, ...).
        origin: String,
        /// What is wrong, with a line number; never the line itself.
        reason: String,
    },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(nothing)".to_owned()
    } else {
        items.join(", ")
    }
}

fn tried(identities: &[String]) -> String {
    if identities.is_empty() {
        "No age identities were found".to_owned()
    } else {
        format!("Tried the identities of: {}", identities.join(", "))
    }
}

fn other_problems(problems: &[String]) -> String {
    if problems.is_empty() {
        String::new()
    } else {
        format!(" Other problems: {}.", problems.join("; "))
    }
}
