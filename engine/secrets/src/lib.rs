//! Decrypts SOPS files (YAML and JSON, as written by the `sops` tool 3.x)
//! with age identities, in memory only: nothing decrypted is written
//! anywhere, and decrypted strings are overwritten when dropped.
//!
//! Layout:
//! - [`identity`]: age identities from a file, text, or the environment
//!   variables sops reads.
//! - `metadata`: the `sops` block and its encryption rules.
//! - `cipher`: one `ENC[AES256_GCM,...]` value.
//! - `walk`: the tree walk that decrypts values and computes the MAC.
//! - [`Secrets`] / [`CheckReport`]: what callers get back.
//!
//! The algorithm, read from sops's source (sops.go, aes/cipher.go,
//! stores/) and checked against the real tool by `tests/interop.rs`:
//! 1. Each age stanza's `enc` is an armored age file holding the 32-byte
//!    data key. Every identity is tried against every stanza.
//! 2. Each value is AES-256-GCM with a 32-byte IV; the additional data is
//!    the value's path of map keys joined with `:` plus a trailing `:`
//!    (list items add nothing to the path).
//! 3. The MAC (SHA-512 over the plaintexts, see `walk`) is checked against
//!    the stored one, decrypted with `lastmodified` as additional data. A
//!    file that fails it is refused.
//!
//! Not supported, each with a clear error: PGP/KMS/Vault-only files,
//! Shamir key groups, `encrypted_comment_regex`/`unencrypted_comment_regex`,
//! several YAML documents in one file, dotenv/INI files, age plugins,
//! SSH identities and `SOPS_AGE_KEY_CMD`.
//!
//! Crates, and why:
//! - `age` (by str4d, the author of rage): the Rust implementation of age,
//!   for the armored data key. No age primitive is written here.
//! - `aes-gcm`, `sha2` (RustCrypto): AES-256-GCM with sops's 32-byte nonce
//!   (`AesGcm<Aes256, U32>`) and SHA-512; the same major versions `age`
//!   itself depends on, so no second copy is built.
//! - YAML: `serde_yaml_ng`. `serde_yaml` was marked deprecated by its
//!   author in 2024; `serde_yaml_ng` is a maintained fork with the same API
//!   and the same libyaml-based parser, and being a serde deserializer it
//!   lets one `Deserialize` impl (`node`) read YAML and JSON into one tree
//!   that keeps key order, which the MAC depends on. On what sops writes,
//!   its scalar typing matches Go's yaml.v3 that sops uses (`true`/`True`
//!   are booleans, `yes`/`on` strings, `0x1F` an int, `1.5` a float);
//!   exotic spellings only a hand edit of a value in clear could bring in
//!   (`1_000`, `017`) are strings here and numbers to yaml.v3, which would
//!   show as a MAC mismatch. `serde_norway` is a comparable fork;
//!   `yaml-rust2` is pure Rust and maintained but has no serde support, so
//!   JSON would need a second conversion path.
//! - `serde_json` reads JSON through the same `Deserialize` impl. Its
//!   `preserve_order` feature is deliberately not enabled: cargo unifies
//!   features across the workspace, so it would change the key order of
//!   every `serde_json::Value` in every other crate (loader, CLI output,
//!   snapshots). Order-sensitive work (the MAC, [`Secrets::flatten`])
//!   uses this crate's own ordered tree instead.

pub mod identity;

mod cipher;
mod error;
mod metadata;
mod node;
mod secrets;
mod walk;

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::Deserialize as _;
use zeroize::Zeroizing;

pub use error::SecretsError;
pub use identity::Identities;
pub use secrets::{CheckReport, KeyEntry, Secrets, ValueKind};

use crate::cipher::DataKey;
use crate::metadata::{Metadata, MetadataError};
use crate::node::Node;

/// The syntax of a SOPS file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML (one document).
    Yaml,
    /// JSON (an object at the top).
    Json,
}

impl Format {
    /// The format sops would pick for this file name: `.json` is JSON,
    /// `.yaml`/`.yml` YAML. `.env` and `.ini` are refused. Any other name
    /// is read as JSON if the content starts with `{` (sops's "binary"
    /// files are JSON), else as YAML.
    pub fn for_file(file: &Path, content: &[u8]) -> Result<Format, SecretsError> {
        let ext = file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("json") => Ok(Format::Json),
            Some("yaml" | "yml") => Ok(Format::Yaml),
            Some(other @ ("env" | "ini")) => Err(SecretsError::Unsupported {
                file: file.to_owned(),
                what: format!("`.{other}` SOPS files; convert the secrets to a YAML or JSON file"),
            }),
            _ if content.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') => Ok(Format::Json),
            _ => Ok(Format::Yaml),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        })
    }
}

/// Reads and decrypts a SOPS file, verifying its MAC. The format follows
/// the file name ([`Format::for_file`]).
pub fn decrypt_file(path: &Path, ids: &Identities) -> Result<Secrets, SecretsError> {
    let content = read(path)?;
    let format = Format::for_file(path, &content)?;
    decrypt_bytes(&content, format, path, ids)
}

/// Decrypts SOPS content already in memory. `origin` names it in errors.
pub fn decrypt_bytes(content: &[u8], format: Format, origin: &Path, ids: &Identities) -> Result<Secrets, SecretsError> {
    decrypt(content, format, origin, ids).map(|(secrets, _)| secrets)
}

/// Checks that a SOPS file decrypts with `ids` and that its MAC verifies,
/// and reports its keys and counts. The plaintext is dropped (and wiped)
/// before this returns; the report holds no value.
pub fn check_file(path: &Path, ids: &Identities) -> Result<CheckReport, SecretsError> {
    let content = read(path)?;
    let format = Format::for_file(path, &content)?;
    let (secrets, opened) = decrypt(&content, format, path, ids)?;
    let keys: Vec<KeyEntry> = secrets
        .leaves
        .iter()
        .map(|l| KeyEntry {
            path: l.key.clone(),
            encrypted: l.encrypted,
            kind: l.kind,
        })
        .collect();
    let encrypted = keys.iter().filter(|k| k.encrypted).count();
    Ok(CheckReport {
        file: path.to_owned(),
        format,
        sops_version: opened.version,
        last_modified: opened.last_modified,
        recipients: opened.recipients,
        decrypted_with: opened.decrypted_with,
        unencrypted: keys.len() - encrypted,
        encrypted,
        keys,
    })
}

/// What a successful decryption learned about the file besides its values.
struct Opened {
    version: String,
    last_modified: String,
    recipients: Vec<String>,
    decrypted_with: String,
}

fn read(path: &Path) -> Result<Vec<u8>, SecretsError> {
    std::fs::read(path).map_err(|source| SecretsError::FileUnreadable {
        file: path.to_owned(),
        source,
    })
}

fn decrypt(content: &[u8], format: Format, file: &Path, ids: &Identities) -> Result<(Secrets, Opened), SecretsError> {
    let mut doc = parse_document(content, format, file)?;
    let Node::Map(entries) = &mut doc else {
        return Err(SecretsError::NotSopsFile { file: file.to_owned() });
    };
    let Some(at) = entries.iter().position(|(k, _)| k == "sops") else {
        return Err(SecretsError::NotSopsFile { file: file.to_owned() });
    };
    let (_, block) = entries.remove(at);
    entries.retain(|(k, _)| k != "sops");

    let meta = metadata::parse(&block).map_err(|e| match e {
        MetadataError::Invalid(message) => SecretsError::InvalidMetadata {
            file: file.to_owned(),
            message,
        },
        MetadataError::Unsupported(what) => SecretsError::Unsupported {
            file: file.to_owned(),
            what,
        },
    })?;
    let (key, decrypted_with) = data_key(&meta, ids, file)?;

    let walked = walk::decrypt_tree(file, doc, &key, &meta.rules, meta.mac_only_encrypted)?;
    verify_mac(&meta, &key, &walked.mac, file)?;

    let tree = to_json(walked.tree);
    let secrets = Secrets {
        file: file.to_owned(),
        tree,
        leaves: walked.leaves,
    };
    let opened = Opened {
        version: meta.version.clone(),
        last_modified: meta.last_modified.clone(),
        recipients: meta.age.iter().map(|s| s.recipient.clone()).collect(),
        decrypted_with,
    };
    Ok((secrets, opened))
}

fn parse_document(content: &[u8], format: Format, file: &Path) -> Result<Node, SecretsError> {
    let malformed = |message: String| SecretsError::Malformed {
        file: file.to_owned(),
        format,
        message,
    };
    match format {
        Format::Json => {
            let mut node: Node = serde_json::from_slice(content).map_err(|e| malformed(e.to_string()))?;
            node.json_numbers_as_floats();
            Ok(node)
        }
        Format::Yaml => {
            let text = std::str::from_utf8(content).map_err(|e| malformed(format!("not UTF-8 ({e})")))?;
            let mut docs = serde_yaml_ng::Deserializer::from_str(text);
            let Some(first) = docs.next() else {
                return Ok(Node::Null);
            };
            let node = Node::deserialize(first).map_err(|e| malformed(e.to_string()))?;
            if docs.next().is_some() {
                return Err(SecretsError::Unsupported {
                    file: file.to_owned(),
                    what: "several YAML documents in one file; keep one document per secrets file".to_owned(),
                });
            }
            Ok(node)
        }
    }
}

/// Opens the data key with the first age stanza any identity matches.
fn data_key(meta: &Metadata, ids: &Identities, file: &Path) -> Result<(DataKey, String), SecretsError> {
    if meta.key_groups > 1 {
        return Err(SecretsError::Unsupported {
            file: file.to_owned(),
            what: format!(
                "the data key is split over {} key groups (Shamir secret sharing); re-encrypt the file with a \
                 single group of age recipients",
                meta.key_groups
            ),
        });
    }
    if meta.age.is_empty() {
        return Err(if meta.other_recipients.is_empty() {
            SecretsError::InvalidMetadata {
                file: file.to_owned(),
                message: "it lists no recipients".to_owned(),
            }
        } else {
            SecretsError::Unsupported {
                file: file.to_owned(),
                what: format!(
                    "it has no age recipient, only {}; drover decrypts with age keys only: add one with \
                     `sops --rotate --in-place --add-age <recipient> {}`",
                    meta.other_recipients.join(", "),
                    file.display()
                ),
            }
        });
    }

    let mut problems = Vec::new();
    if !ids.is_empty() {
        for stanza in &meta.age {
            match open_stanza(&stanza.enc, ids) {
                Ok(key) => return Ok((key, stanza.recipient.clone())),
                Err(None) => {}
                Err(Some(problem)) => problems.push(format!("{}: {problem}", stanza.recipient)),
            }
        }
    }
    let mut recipients: Vec<String> = meta.age.iter().map(|s| s.recipient.clone()).collect();
    recipients.extend(meta.other_recipients.iter().cloned());
    Err(SecretsError::NoMatchingIdentity {
        file: file.to_owned(),
        recipients,
        identities: ids.recipients(),
        searched: ids.searched().to_vec(),
        problems,
    })
}

/// `Err(None)`: no identity matches this stanza. `Err(Some(_))`: something
/// else went wrong with it.
fn open_stanza(enc: &str, ids: &Identities) -> Result<DataKey, Option<String>> {
    let armored = age::armor::ArmoredReader::new(enc.trim().as_bytes());
    let decryptor = age::Decryptor::new(armored).map_err(|e| Some(format!("its `enc` is not an age file ({e})")))?;
    let mut reader = match decryptor.decrypt(ids.as_age()) {
        Ok(reader) => reader,
        Err(age::DecryptError::NoMatchingKeys) => return Err(None),
        Err(e) => return Err(Some(format!("age could not open its `enc` ({e})"))),
    };
    let mut plain = Zeroizing::new(Vec::with_capacity(32));
    reader
        .read_to_end(&mut plain)
        .map_err(|e| Some(format!("age could not read its `enc` ({e})")))?;
    let mut key = Zeroizing::new([0u8; 32]);
    if plain.len() != key.len() {
        return Err(Some(format!("its data key is {} bytes, not 32", plain.len())));
    }
    key.copy_from_slice(&plain);
    Ok(key)
}

fn verify_mac(meta: &Metadata, key: &DataKey, computed: &str, file: &Path) -> Result<(), SecretsError> {
    let aad = metadata::go_rfc3339(&meta.last_modified).ok_or_else(|| SecretsError::InvalidMetadata {
        file: file.to_owned(),
        message: "`lastmodified` is not an RFC 3339 time".to_owned(),
    })?;
    match cipher::decrypt(key, &meta.mac, &aad) {
        Ok(cipher::Plain::Str(stored)) if stored == computed => Ok(()),
        _ => Err(SecretsError::MacMismatch { file: file.to_owned() }),
    }
}

/// The tree as JSON, numbers as `sops -d --output-type json` prints them:
/// Go writes a float64 below 1e21 as its shortest decimal text without
/// exponent, so an integral float (`3.0`, or a JSON integer, which sops
/// reads as a float64) reads back as that integer, digits and all
/// (`12345678901234567890` comes out as `12345678901234567000`).
fn to_json(node: Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::from(i),
        Node::Float(f) => {
            let text = walk::go_format_float(f);
            if let Ok(i) = text.parse::<i64>() {
                Value::from(i)
            } else if let Ok(u) = text.parse::<u64>() {
                Value::from(u)
            } else {
                // Non-finite floats were refused during the walk.
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
            }
        }
        Node::Str(s) => Value::String(s),
        Node::List(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Node::Map(entries) => Value::Object(entries.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
    }
}
