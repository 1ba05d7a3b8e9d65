//! The `sops` metadata block (stores/stores.go `Metadata`) and the rules it
//! implies for which values are encrypted (sops.go `shouldBeEncrypted`).

use regex::Regex;

use crate::node::Node;

/// One age recipient stanza: the recipient and the data key encrypted to it
/// as an armored age file.
pub(crate) struct AgeStanza {
    pub(crate) recipient: String,
    pub(crate) enc: String,
}

/// What this crate uses of the metadata.
pub(crate) struct Metadata {
    pub(crate) age: Vec<AgeStanza>,
    /// Recipients of other kinds, named for messages (`pgp:<fp>`, `kms:<arn>`).
    pub(crate) other_recipients: Vec<String>,
    /// More than one key group: the data key is split with Shamir's scheme.
    pub(crate) key_groups: usize,
    pub(crate) last_modified: String,
    pub(crate) mac: String,
    pub(crate) version: String,
    pub(crate) mac_only_encrypted: bool,
    pub(crate) rules: Rules,
}

/// Which values are encrypted. Exactly one rule applies; with none given
/// sops uses `unencrypted_suffix: _unencrypted`.
pub(crate) enum Rules {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(Regex),
    EncryptedRegex(Regex),
}

impl Rules {
    /// sops's `shouldBeEncrypted` for a path of map keys (list items add
    /// nothing to the path). A rule matches when any key on the path
    /// matches; regexes are unanchored searches, as Go's `regexp.Match`.
    pub(crate) fn should_encrypt(&self, path: &[String]) -> bool {
        match self {
            Rules::UnencryptedSuffix(s) => !path.iter().any(|k| k.ends_with(s.as_str())),
            Rules::EncryptedSuffix(s) => path.iter().any(|k| k.ends_with(s.as_str())),
            Rules::UnencryptedRegex(re) => !path.iter().any(|k| re.is_match(k)),
            Rules::EncryptedRegex(re) => path.iter().any(|k| re.is_match(k)),
        }
    }
}

/// Reads the metadata block. `Err` is a message for `InvalidMetadata`, or
/// (`Unsupported`) for comment-based rules.
pub(crate) fn parse(block: &Node) -> Result<Metadata, MetadataError> {
    let Node::Map(entries) = block else {
        return Err(MetadataError::Invalid("`sops` is not a mapping".into()));
    };
    let get = |name: &str| entries.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let string = |name: &str| -> Result<Option<String>, MetadataError> {
        match get(name) {
            None | Some(Node::Null) => Ok(None),
            Some(Node::Str(s)) => Ok(Some(s.clone())),
            // `version: 3.7` unquoted in a hand-edited YAML file.
            Some(Node::Float(f)) => Ok(Some(f.to_string())),
            Some(Node::Int(i)) => Ok(Some(i.to_string())),
            Some(_) => Err(MetadataError::Invalid(format!("`{name}` is not a string"))),
        }
    };
    let nonempty = |name: &str| string(name).map(|s| s.filter(|s| !s.is_empty()));

    for name in ["encrypted_comment_regex", "unencrypted_comment_regex"] {
        if nonempty(name)?.is_some() {
            return Err(MetadataError::Unsupported(format!(
                "the file uses `{name}`, which decides encryption by YAML comments; drover does not read comments. \
                 Re-encrypt it with --encrypted-regex or a suffix rule instead"
            )));
        }
    }

    let mut rules = Vec::new();
    if let Some(s) = nonempty("unencrypted_suffix")? {
        rules.push(Rules::UnencryptedSuffix(s));
    }
    if let Some(s) = nonempty("encrypted_suffix")? {
        rules.push(Rules::EncryptedSuffix(s));
    }
    let regex = |name: &str| -> Result<Option<Regex>, MetadataError> {
        nonempty(name)?
            .map(|re| {
                Regex::new(&re).map_err(|e| MetadataError::Invalid(format!("`{name}` is not a valid regex: {e}")))
            })
            .transpose()
    };
    if let Some(re) = regex("unencrypted_regex")? {
        rules.push(Rules::UnencryptedRegex(re));
    }
    if let Some(re) = regex("encrypted_regex")? {
        rules.push(Rules::EncryptedRegex(re));
    }
    if rules.len() > 1 {
        return Err(MetadataError::Invalid(
            "more than one of encrypted_suffix, unencrypted_suffix, encrypted_regex and unencrypted_regex is set"
                .into(),
        ));
    }
    let rules = rules
        .pop()
        .unwrap_or_else(|| Rules::UnencryptedSuffix("_unencrypted".to_owned()));

    let mac_only_encrypted = match get("mac_only_encrypted") {
        None | Some(Node::Null) => false,
        Some(Node::Bool(b)) => *b,
        Some(_) => return Err(MetadataError::Invalid("`mac_only_encrypted` is not a boolean".into())),
    };

    let last_modified = string("lastmodified")?.ok_or_else(|| MetadataError::Invalid("no `lastmodified`".into()))?;
    let mac = string("mac")?.unwrap_or_default();
    let version = string("version")?.unwrap_or_default();

    // A single key group is written at the top level; several go under
    // `key_groups`, each with the same recipient lists.
    let mut age = Vec::new();
    let mut other_recipients = Vec::new();
    let mut key_groups = 1;
    match get("key_groups") {
        Some(Node::List(groups)) if !groups.is_empty() => {
            key_groups = groups.len();
            for group in groups {
                let Node::Map(group) = group else {
                    return Err(MetadataError::Invalid("a `key_groups` entry is not a mapping".into()));
                };
                recipients(group, &mut age, &mut other_recipients)?;
            }
        }
        _ => recipients(entries, &mut age, &mut other_recipients)?,
    }

    Ok(Metadata {
        age,
        other_recipients,
        key_groups,
        last_modified,
        mac,
        version,
        mac_only_encrypted,
        rules,
    })
}

/// Why the metadata cannot be used.
pub(crate) enum MetadataError {
    Invalid(String),
    Unsupported(String),
}

/// Collects the recipients of one key group.
fn recipients(
    group: &[(String, Node)],
    age: &mut Vec<AgeStanza>,
    others: &mut Vec<String>,
) -> Result<(), MetadataError> {
    let list = |name: &str| match group.iter().find(|(k, _)| k == name).map(|(_, v)| v) {
        Some(Node::List(items)) => items.as_slice(),
        _ => &[],
    };
    let field = |entry: &Node, name: &str| -> Option<String> {
        match entry {
            Node::Map(fields) => fields.iter().find(|(k, _)| k == name).and_then(|(_, v)| match v {
                Node::Str(s) => Some(s.clone()),
                _ => None,
            }),
            _ => None,
        }
    };
    for entry in list("age") {
        let recipient = field(entry, "recipient")
            .ok_or_else(|| MetadataError::Invalid("an `age` entry has no `recipient`".into()))?;
        let enc = field(entry, "enc").ok_or_else(|| {
            MetadataError::Invalid(format!(
                "the `age` entry for {recipient} has no `enc` (encrypted data key)"
            ))
        })?;
        age.push(AgeStanza { recipient, enc });
    }
    for (kind, id_field) in [
        ("pgp", "fp"),
        ("kms", "arn"),
        ("gcp_kms", "resource_id"),
        ("azure_kv", "vault_url"),
        ("hc_vault", "key_name"),
    ] {
        for entry in list(kind) {
            others.push(format!(
                "{kind}:{}",
                field(entry, id_field).unwrap_or_else(|| "?".into())
            ));
        }
    }
    Ok(())
}

/// The additional data sops authenticates the MAC with: `lastmodified`
/// parsed and re-formatted by Go's `time.RFC3339` layout, which drops
/// fractional seconds and writes a zero offset as `Z`.
pub(crate) fn go_rfc3339(stamp: &str) -> Option<String> {
    let b = stamp.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let shape_ok = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape_ok {
        return None;
    }
    let mut rest = &stamp[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let zone = match rest {
        "Z" => "Z".to_owned(),
        _ => {
            let z = rest.as_bytes();
            let ok = z.len() == 6
                && (z[0] == b'+' || z[0] == b'-')
                && z[1..3].iter().all(u8::is_ascii_digit)
                && z[3] == b':'
                && z[4..6].iter().all(u8::is_ascii_digit);
            if !ok {
                return None;
            }
            if &rest[1..] == "00:00" {
                "Z".to_owned()
            } else {
                rest.to_owned()
            }
        }
    };
    Some(format!("{}{zone}", &stamp[..19]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lastmodified_is_reformatted_like_go() {
        assert_eq!(
            go_rfc3339("2024-05-01T10:11:12Z").as_deref(),
            Some("2024-05-01T10:11:12Z")
        );
        assert_eq!(
            go_rfc3339("2024-05-01T10:11:12.123456Z").as_deref(),
            Some("2024-05-01T10:11:12Z")
        );
        assert_eq!(
            go_rfc3339("2024-05-01T10:11:12+00:00").as_deref(),
            Some("2024-05-01T10:11:12Z")
        );
        assert_eq!(
            go_rfc3339("2024-05-01T10:11:12.5+02:00").as_deref(),
            Some("2024-05-01T10:11:12+02:00")
        );
        assert_eq!(go_rfc3339("2024-05-01 10:11:12Z"), None);
        assert_eq!(go_rfc3339("yesterday"), None);
    }

    #[test]
    fn rules_match_any_key_on_the_path() {
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let default = Rules::UnencryptedSuffix("_unencrypted".into());
        assert!(default.should_encrypt(&path(&["db", "password"])));
        assert!(!default.should_encrypt(&path(&["db_unencrypted", "password"])));
        let re = Rules::EncryptedRegex(Regex::new("^(password|token)$").expect("regex"));
        assert!(re.should_encrypt(&path(&["db", "password"])));
        assert!(re.should_encrypt(&path(&["token", "x"])));
        assert!(!re.should_encrypt(&path(&["db", "user"])));
    }
}
