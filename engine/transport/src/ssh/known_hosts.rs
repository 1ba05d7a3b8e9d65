//! known_hosts files as OpenSSH reads them: plain and hashed (`|1|salt|hash`)
//! host names, `[host]:port` for other ports than 22, wildcard and negated
//! patterns, `@revoked` keys; lines numbered as an editor shows them.
//!
//! Lines are parsed with the `ssh-key` crate (through russh); matching a
//! name against a line is done here. russh's own known_hosts reader is not
//! used: it handles hashed names, but not patterns, tabs or markers, skips
//! comment lines in its numbering, and fails the whole file on one line it
//! cannot parse (OpenSSH skips such a line).

use std::io;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use russh::keys::PublicKey;
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use sha1::Sha1;

/// One line of a known_hosts file that names the host.
#[derive(Debug, Clone)]
pub(super) struct Record {
    /// The file.
    pub(super) file: PathBuf,
    /// Its line, counting from 1, comment lines included.
    pub(super) line: usize,
    /// The recorded key.
    pub(super) key: PublicKey,
    /// The line is `@revoked`: this key must never be accepted.
    pub(super) revoked: bool,
}

/// The name known_hosts records a server under: `address`, or
/// `[address]:port` for another port than 22.
pub(super) fn known_as(address: &str, port: u16) -> String {
    if port == 22 {
        address.to_ascii_lowercase()
    } else {
        format!("[{}]:{port}", address.to_ascii_lowercase())
    }
}

/// Every line of `files` (read in order; a missing file counts as empty)
/// that records a key for `name` (see [`known_as`]). Certificate
/// authority lines are left out: host certificates are not supported.
pub(super) fn records(name: &str, files: &[PathBuf]) -> Result<Vec<Record>, (PathBuf, io::Error)> {
    let mut found = Vec::new();
    for file in files {
        let Some(lines) = parsed(file).map_err(|e| (file.clone(), e))? else {
            continue;
        };
        for (line, entry, revoked) in lines.iter() {
            if matches(entry.host_patterns(), name) {
                found.push(Record {
                    file: file.clone(),
                    line: *line,
                    key: entry.public_key().clone(),
                    revoked: *revoked,
                });
            }
        }
    }
    Ok(found)
}

/// A file's usable lines: number, entry, `@revoked`.
type Lines = std::sync::Arc<Vec<(usize, Entry, bool)>>;

/// What identifies a version of a file: size, modification time, inode.
type Stamp = (u64, std::time::SystemTime, u64);

/// Files parsed by this process, with the version parsed. A run connects
/// to every host of a fleet at once, each looking up its own name in the
/// same file (a thousand hosts: a thousand lines); parsing it once per
/// connection made connecting quadratic in the fleet. A file that changed
/// (another tool, or [`learn`] adding a key) is parsed again.
static PARSED: std::sync::Mutex<Vec<(PathBuf, Stamp, Lines)>> = std::sync::Mutex::new(Vec::new());

/// The usable lines of `file`, `None` if it does not exist.
fn parsed(file: &Path) -> io::Result<Option<Lines>> {
    use std::os::unix::fs::MetadataExt;
    let stamp = |meta: &std::fs::Metadata| -> io::Result<Stamp> { Ok((meta.len(), meta.modified()?, meta.ino())) };
    let before = match std::fs::metadata(file) {
        Ok(meta) => stamp(&meta)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    {
        let cache = PARSED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, _, lines)) = cache.iter().find(|(path, at, _)| path == file && *at == before) {
            return Ok(Some(lines.clone()));
        }
    }
    let mut handle = std::fs::File::open(file)?;
    let opened = stamp(&handle.metadata()?)?;
    let mut text = String::new();
    io::Read::read_to_string(&mut handle, &mut text)?;
    let lines: Lines = std::sync::Arc::new(
        text.lines()
            .enumerate()
            .filter_map(|(index, line)| parse(line).map(|(entry, revoked)| (index + 1, entry, revoked)))
            .collect(),
    );
    // Kept only if nothing changed the file while it was read.
    if let Ok(after) = handle.metadata().and_then(|m| stamp(&m))
        && after == opened
    {
        let mut cache = PARSED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.retain(|(path, _, _)| path != file);
        cache.push((file.to_path_buf(), opened, lines.clone()));
    }
    Ok(Some(lines))
}

/// One line as an entry, and whether it is `@revoked`; `None` for
/// comments, blank lines, certificate authorities and lines that cannot
/// be parsed (which OpenSSH skips too).
fn parse(line: &str) -> Option<(Entry, bool)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    // The parser splits fields at single spaces; OpenSSH allows any run of
    // blanks.
    let normalized = line.split_whitespace().collect::<Vec<_>>().join(" ");
    let entry: Entry = normalized.parse().ok()?;
    match entry.marker() {
        Some(Marker::CertAuthority) => None,
        Some(Marker::Revoked) => Some((entry, true)),
        None => Some((entry, false)),
    }
}

/// Whether `patterns` name `name`. A hashed entry names exactly one host.
/// A pattern list matches when one of its patterns does and none of its
/// negated ones (`!pattern`) does. `@revoked` lines commonly use `*`.
fn matches(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(patterns) => {
            let mut matched = false;
            for pattern in patterns {
                let (negated, pattern) = match pattern.strip_prefix('!') {
                    Some(rest) => (true, rest),
                    None => (false, pattern.as_str()),
                };
                if wildcard(&pattern.to_ascii_lowercase(), name) {
                    if negated {
                        return false;
                    }
                    matched = true;
                }
            }
            matched
        }
    }
}

/// `*` (any run of characters) and `?` (one character) matching, as
/// OpenSSH's `match_pattern`.
fn wildcard(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it stood for.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// Serializes appends of this process, so that two transports learning
/// keys at once do not interleave their lines.
static LEARNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Appends `name key` to `file`, making the file and its directory if
/// needed (the directory owner-only, as ~/.ssh is).
///
/// Not russh's `learn_known_hosts_path`: it starts a new file with an
/// empty line, which shifts every line number an error would name.
pub(super) fn learn(file: &Path, name: &str, key: &PublicKey) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::DirBuilderExt;
    let text = key.to_openssh().map_err(|e| e.to_string())?;
    // The comment is the server's business, not a fact we checked.
    let mut fields = text.split_whitespace();
    let (Some(kind), Some(base64)) = (fields.next(), fields.next()) else {
        return Err("cannot encode the key".into());
    };
    let _serial = LEARNING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    }
    let mut out = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(file)
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    // A last line without its newline must not be glued to ours.
    if out.seek(SeekFrom::End(-1)).is_ok() {
        let mut last = [0u8; 1];
        if out.read_exact(&mut last).is_ok() && last[0] != b'\n' {
            line.push('\n');
        }
    }
    line.push_str(&format!("{name} {kind} {base64}\n"));
    out.write_all(line.as_bytes()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

    fn entry(line: &str) -> Entry {
        match parse(line) {
            Some((entry, _)) => entry,
            None => panic!("{line} does not parse"),
        }
    }

    #[test]
    fn wildcards_work_as_in_openssh() {
        assert!(wildcard("*", "anything"));
        assert!(wildcard("web-?.example.com", "web-1.example.com"));
        assert!(!wildcard("web-?.example.com", "web-10.example.com"));
        assert!(wildcard("*.example.com", "a.b.example.com"));
        assert!(wildcard("a*b*c", "axxbyyc"));
        assert!(!wildcard("a*b*c", "axxbyy"));
        assert!(wildcard("[10.0.0.*]:2222", "[10.0.0.7]:2222"));
        assert!(!wildcard("", "x"));
    }

    #[test]
    fn patterns_negations_and_ports() {
        let e = entry(&format!("web-*,!web-db,[10.0.0.1]:2222\t{KEY} comment"));
        assert!(matches(e.host_patterns(), "web-1"));
        assert!(!matches(e.host_patterns(), "web-db"));
        assert!(matches(e.host_patterns(), "[10.0.0.1]:2222"));
        assert!(!matches(e.host_patterns(), "10.0.0.1"));
        let e = entry(&format!("Web-1 {KEY}"));
        assert!(matches(e.host_patterns(), "web-1"), "case-insensitive");
    }

    #[test]
    fn hashed_names_match_exactly_their_host() {
        // `ssh-keygen -H` of "[127.0.0.1]:2222" with this salt.
        let salt = [7u8; 20];
        let mut mac = Hmac::<Sha1>::new_from_slice(&salt).expect("any key length");
        mac.update(b"[127.0.0.1]:2222");
        let hash = mac.finalize().into_bytes();
        use russh::keys::ssh_encoding::base64::{Base64, Encoding};
        let line = format!(
            "|1|{}|{} {KEY}",
            Base64::encode_string(&salt),
            Base64::encode_string(&hash)
        );
        let e = entry(&line);
        assert!(matches(e.host_patterns(), "[127.0.0.1]:2222"));
        assert!(!matches(e.host_patterns(), "[127.0.0.1]:2223"));
    }

    #[test]
    fn lines_are_numbered_as_in_the_file_and_bad_lines_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("known_hosts");
        std::fs::write(
            &file,
            format!("# comment\n\nhost-a garbage\nhost-a {KEY}\n@revoked * {KEY}\n@cert-authority * {KEY}\n"),
        )
        .expect("write");
        let found = records("host-a", &[dir.path().join("missing"), file.clone()]).expect("readable");
        let lines: Vec<(usize, bool)> = found.iter().map(|r| (r.line, r.revoked)).collect();
        assert_eq!(lines, [(4, false), (5, true)]);
    }
}
