//! age identities: where they come from and how they are parsed.
//!
//! The places looked in mirror sops (age/keysource.go): the text of
//! `SOPS_AGE_KEY`, the file named by `SOPS_AGE_KEY_FILE`, and the user
//! configuration file `$XDG_CONFIG_HOME/sops/age/keys.txt` (or
//! `$HOME/.config/sops/age/keys.txt`). Like sops, every source found is
//! used, not only the first. `SOPS_AGE_KEY_CMD`, SSH keys and age plugins
//! are not supported.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::x25519;

use crate::SecretsError;

/// The environment variable holding age identity text.
pub const SOPS_AGE_KEY: &str = "SOPS_AGE_KEY";
/// The environment variable naming an age identity file.
pub const SOPS_AGE_KEY_FILE: &str = "SOPS_AGE_KEY_FILE";

/// A set of age X25519 identities (secret keys) and a record of where they
/// were looked for, for error messages.
///
/// `Debug` shows only the public recipients and the sources, never a key.
pub struct Identities {
    keys: Vec<x25519::Identity>,
    searched: Vec<String>,
}

impl Identities {
    /// Reads an age identity file (as written by `age-keygen -o`).
    pub fn from_file(path: &Path) -> Result<Self, SecretsError> {
        let mut ids = Self::empty();
        ids.add_file(path, "explicit path")?;
        Ok(ids)
    }

    /// Parses identity text: `AGE-SECRET-KEY-1...` lines, `#` comments and
    /// blank lines.
    pub fn parse(text: &str) -> Result<Self, SecretsError> {
        let mut ids = Self::empty();
        let keys = parse_identities(text, "the given identity text")?;
        ids.searched
            .push(format!("the given identity text ({})", count(keys.len())));
        ids.keys.extend(keys);
        Ok(ids)
    }

    /// Loads identities the way sops does, from the process environment:
    /// `SOPS_AGE_KEY`, `SOPS_AGE_KEY_FILE` and the user configuration file.
    ///
    /// Finding nothing is not an error here: decryption then fails with a
    /// message listing where identities were looked for.
    pub fn from_env() -> Result<Self, SecretsError> {
        Self::from_env_with(|name| std::env::var_os(name))
    }

    /// [`Identities::from_env`] with the environment given as a lookup
    /// function (so callers and tests need not change the process
    /// environment). Reads `SOPS_AGE_KEY`, `SOPS_AGE_KEY_FILE`,
    /// `XDG_CONFIG_HOME` and `HOME`.
    pub fn from_env_with(var: impl Fn(&str) -> Option<OsString>) -> Result<Self, SecretsError> {
        let mut ids = Self::empty();
        let set = |name: &str| var(name).filter(|v| !v.is_empty());

        match set(SOPS_AGE_KEY) {
            Some(text) => {
                let text = text.into_string().map_err(|_| SecretsError::InvalidIdentities {
                    origin: SOPS_AGE_KEY.to_owned(),
                    reason: "the variable is not valid UTF-8".to_owned(),
                })?;
                let keys = parse_identities(&text, SOPS_AGE_KEY)?;
                ids.searched.push(format!("{SOPS_AGE_KEY} ({})", count(keys.len())));
                ids.keys.extend(keys);
            }
            None => ids.searched.push(format!("{SOPS_AGE_KEY} (not set)")),
        }

        match set(SOPS_AGE_KEY_FILE) {
            Some(path) => ids.add_file(Path::new(&path), SOPS_AGE_KEY_FILE)?,
            None => ids.searched.push(format!("{SOPS_AGE_KEY_FILE} (not set)")),
        }

        // Go's os.UserConfigDir: $XDG_CONFIG_HOME if set (and absolute),
        // else $HOME/.config.
        let config_dir = match set("XDG_CONFIG_HOME").map(PathBuf::from) {
            Some(dir) if dir.is_absolute() => Ok(dir),
            Some(_) => Err("XDG_CONFIG_HOME is a relative path, which sops ignores"),
            None => set("HOME")
                .map(|home| PathBuf::from(home).join(".config"))
                .ok_or("neither XDG_CONFIG_HOME nor HOME is set"),
        };
        match config_dir {
            Ok(dir) => {
                let path = dir.join("sops").join("age").join("keys.txt");
                if path.exists() {
                    ids.add_file(&path, "default location")?;
                } else {
                    ids.searched.push(format!("{} (not found)", path.display()));
                }
            }
            Err(why) => ids.searched.push(format!("the default sops/age/keys.txt ({why})")),
        }
        Ok(ids)
    }

    /// How many identities there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The public recipients (`age1...`) of these identities.
    pub fn recipients(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.to_public().to_string()).collect()
    }

    /// Where identities were looked for and what was found, one entry per
    /// source (for messages).
    pub fn searched(&self) -> &[String] {
        &self.searched
    }

    pub(crate) fn as_age(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.keys.iter().map(|k| k as &dyn age::Identity)
    }

    fn empty() -> Self {
        Self {
            keys: Vec::new(),
            searched: Vec::new(),
        }
    }

    fn add_file(&mut self, path: &Path, origin: &str) -> Result<(), SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretsError::IdentityFileUnreadable {
            path: path.to_owned(),
            origin: origin.to_owned(),
            source,
        })?;
        let label = if origin == "explicit path" {
            path.display().to_string()
        } else {
            format!("{} ({origin})", path.display())
        };
        let keys = parse_identities(&text, &label)?;
        self.searched.push(format!("{label}: {}", count(keys.len())));
        self.keys.extend(keys);
        Ok(())
    }
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identities")
            .field("recipients", &self.recipients())
            .field("searched", &self.searched)
            .finish()
    }
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 identity".to_owned()
    } else {
        format!("{n} identities")
    }
}

/// Parses age identity text. Error messages carry line numbers, never the
/// line: it may be a secret key with a typo.
fn parse_identities(text: &str, origin: &str) -> Result<Vec<x25519::Identity>, SecretsError> {
    let invalid = |reason: String| SecretsError::InvalidIdentities {
        origin: origin.to_owned(),
        reason,
    };
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        if line.starts_with("AGE-PLUGIN-") {
            return Err(invalid(format!(
                "line {n} is an age plugin identity; plugins are not supported"
            )));
        }
        if !line.starts_with("AGE-SECRET-KEY-1") {
            return Err(invalid(format!("line {n} is not an age secret key")));
        }
        let key = x25519::Identity::from_str(line)
            .map_err(|why| invalid(format!("line {n} is not a valid age secret key ({why})")))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(invalid("it contains no AGE-SECRET-KEY-1... line".to_owned()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A throwaway key made for this test with age-keygen.
    const KEY: &str = "AGE-SECRET-KEY-1509ZHX7DW9TZXUZ9PG8EVQLPC77S8LA0DP5HM6DUGA783995Z6HSUCRTLF";

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let text = format!("# created: today\n# public key: age1...\n\n{KEY}\n");
        let ids = Identities::parse(&text).expect("parses");
        assert_eq!(ids.len(), 1);
        assert!(ids.recipients()[0].starts_with("age1"));
    }

    #[test]
    fn a_bad_line_is_reported_by_number_without_its_text() {
        let text = format!("# ok\n{KEY}\nAGE-SECRET-KEY-1NOTAKEYATALL\n");
        let err = Identities::parse(&text).expect_err("bad line").to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(!err.contains("NOTAKEY"), "{err}");
    }

    #[test]
    fn empty_text_is_an_error() {
        assert!(Identities::parse("# nothing here\n").is_err());
    }

    #[test]
    fn debug_shows_no_secret() {
        let ids = Identities::parse(KEY).expect("parses");
        let shown = format!("{ids:?}");
        assert!(!shown.contains("AGE-SECRET-KEY"), "{shown}");
    }
}
