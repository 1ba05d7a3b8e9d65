//! Decrypting the tree and computing its MAC in one pass, in file order, as
//! sops's `Tree.Decrypt` does (sops.go).
//!
//! - Each leaf's path is the list of map keys leading to it; list items
//!   add nothing, so every item of `a: [x, y]` has the path `a:`. The
//!   additional data of a value is its path joined with `:` plus a
//!   trailing `:` (`db:password:`).
//! - Whether a leaf is encrypted comes from the metadata rules, not from
//!   how the value looks: an encrypted position must hold an `ENC[...]`
//!   string (or the empty string, which sops never encrypts).
//! - The MAC is SHA-512 over every non-null leaf's plaintext bytes, or
//!   only over encrypted leaves after the fixed prefix
//!   [`MAC_ONLY_ENCRYPTED_INIT`] when `mac_only_encrypted` is set.
//!   Bytes per type (sops `ToBytes`): strings as they are, ints in
//!   decimal, floats as Go's `FormatFloat(f, 'f', -1, 64)`, booleans as
//!   `True`/`False`. Comments are not hashed; nulls are not visited.
//! - The stored MAC is the upper-case hex digest, encrypted like a value
//!   with `lastmodified` (re-formatted as Go RFC 3339) as additional data.

use std::path::Path;

use sha2::{Digest, Sha512};

use crate::cipher::{self, DataKey, Plain};
use crate::metadata::Rules;
use crate::node::Node;
use crate::{SecretsError, ValueKind};

/// `sha256("sops")`: the MAC's first bytes when `mac_only_encrypted` is set,
/// so that the two kinds of MAC always differ (sops.go).
pub(crate) const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b, 0x0b, 0x97, 0x5b,
    0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// One leaf of the decrypted tree, in file order.
pub(crate) struct Leaf {
    /// Map keys and list indices joined with `.`.
    pub(crate) key: String,
    /// The value as text (strings as they are, numbers in decimal,
    /// `true`/`false`, the empty string for null).
    pub(crate) text: String,
    pub(crate) encrypted: bool,
    pub(crate) kind: ValueKind,
}

/// The result of a walk.
pub(crate) struct Walked {
    pub(crate) tree: Node,
    pub(crate) leaves: Vec<Leaf>,
    /// Upper-case hex SHA-512, as sops formats it (`%X`).
    pub(crate) mac: String,
}

/// Decrypts every encrypted leaf of `tree` and computes the MAC.
pub(crate) fn decrypt_tree(
    file: &Path,
    tree: Node,
    key: &DataKey,
    rules: &Rules,
    mac_only_encrypted: bool,
) -> Result<Walked, SecretsError> {
    let mut walk = Walk {
        file,
        key,
        rules,
        mac_only_encrypted,
        hasher: Sha512::new(),
        leaves: Vec::new(),
    };
    if mac_only_encrypted {
        walk.hasher.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    let tree = walk.node(tree, &mut Vec::new(), &mut Vec::new())?.unwrap_or(Node::Null);
    let digest = walk.hasher.finalize();
    let mac = digest.iter().map(|b| format!("{b:02X}")).collect();
    Ok(Walked {
        tree,
        leaves: walk.leaves,
        mac,
    })
}

struct Walk<'a> {
    file: &'a Path,
    key: &'a DataKey,
    rules: &'a Rules,
    mac_only_encrypted: bool,
    hasher: Sha512,
    leaves: Vec<Leaf>,
}

impl Walk<'_> {
    /// Returns `None` for a node that is not data (an encrypted comment
    /// sops stored as a list item).
    fn node(
        &mut self,
        node: Node,
        path: &mut Vec<String>,
        flat: &mut Vec<String>,
    ) -> Result<Option<Node>, SecretsError> {
        match node {
            Node::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    path.push(k.clone());
                    flat.push(k.clone());
                    let v = self.node(v, path, flat);
                    path.pop();
                    flat.pop();
                    if let Some(v) = v? {
                        out.push((k, v));
                    }
                }
                Ok(Some(Node::Map(out)))
            }
            Node::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for v in items {
                    flat.push(out.len().to_string());
                    let v = self.node(v, path, flat);
                    flat.pop();
                    if let Some(v) = v? {
                        out.push(v);
                    }
                }
                Ok(Some(Node::List(out)))
            }
            Node::Null => {
                self.leaves.push(Leaf {
                    key: flat.join("."),
                    text: String::new(),
                    encrypted: false,
                    kind: ValueKind::Null,
                });
                Ok(Some(Node::Null))
            }
            scalar => self.leaf(scalar, path, flat),
        }
    }

    fn leaf(&mut self, node: Node, path: &[String], flat: &[String]) -> Result<Option<Node>, SecretsError> {
        let encrypted = self.rules.should_encrypt(path);
        let fail = |reason| SecretsError::ValueDecrypt {
            file: self.file.to_owned(),
            key_path: flat.join("."),
            reason,
        };
        let value = if encrypted {
            match node {
                // sops never encrypts the empty string.
                Node::Str(s) if s.is_empty() => Node::Str(s),
                Node::Str(s) => {
                    let aad = format!("{}:", path.join(":"));
                    match cipher::decrypt(self.key, &s, &aad).map_err(fail)? {
                        Plain::Str(s) | Plain::Time(s) => Node::Str(s),
                        Plain::Int(i) => Node::Int(i),
                        Plain::Float(f) => Node::Float(f),
                        Plain::Bool(b) => Node::Bool(b),
                        Plain::Comment => return Ok(None),
                    }
                }
                _ => return Err(fail("the file's rules say it is encrypted, but it is a plain value")),
            }
        } else {
            node
        };
        let (text, kind) = match &value {
            Node::Str(s) => (s.clone(), ValueKind::Str),
            Node::Int(i) => (i.to_string(), ValueKind::Int),
            Node::Float(f) if f.is_finite() => (go_format_float(*f), ValueKind::Float),
            Node::Float(_) => return Err(fail("it is an infinite or NaN float, which drover cannot represent")),
            Node::Bool(b) => (b.to_string(), ValueKind::Bool),
            Node::Null | Node::List(_) | Node::Map(_) => unreachable!("leaf() is only called with scalars"),
        };
        if !self.mac_only_encrypted || encrypted {
            match &value {
                Node::Bool(true) => self.hasher.update(b"True"),
                Node::Bool(false) => self.hasher.update(b"False"),
                _ => self.hasher.update(text.as_bytes()),
            }
        }
        self.leaves.push(Leaf {
            key: flat.join("."),
            text,
            encrypted,
            kind,
        });
        Ok(Some(value))
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)` for finite `f`: the shortest
/// text that reads back as `f`, never in exponent form. Rust's `Display`
/// for `f64` has exactly that contract.
pub(crate) fn go_format_float(f: f64) -> String {
    format!("{f}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_go() {
        assert_eq!(go_format_float(3.0), "3");
        assert_eq!(go_format_float(2.25), "2.25");
        assert_eq!(go_format_float(1e20), "100000000000000000000");
        assert_eq!(go_format_float(1e-7), "0.0000001");
        assert_eq!(go_format_float(-0.5), "-0.5");
    }
}
