//! Snapshots: what files hold and what commands print on a set of
//! servers, recorded at one moment, and what changed between two such
//! records (`drover snapshot`, `drover drift`).
//!
//! Layout:
//! - [`take`] reads every server in parallel over [`Fleet`] connections:
//!   all of a server's files in one round trip (a generated `/bin/sh`
//!   script, see [`files_script`]), then each command on its own.
//! - [`diff`] compares two takes, per server and per item, into
//!   [`Change`]s; pure, no I/O.
//!
//! File contents travel base64-encoded (hex with `od` where there is no
//! `base64`) between framing lines no content can contain, so any byte
//! of a file, and any name, is carried intact. Contents are never
//! logged: the script's output goes to the caller only (the transport's
//! log is `/dev/null`).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use drover_transport::{LogLine, Outcome, Stream};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::fleet::{Fleet, unified_diff};

/// At most this much of a file's content is kept (and compared line by
/// line); the whole file is compared by its SHA-256.
pub const TEXT_KEPT: usize = 64 * 1024;

/// Servers read at once.
pub const PARALLEL: usize = 64;

/// How long reading a server's files may take.
pub const FILES_TIMEOUT: Duration = Duration::from_secs(60);

/// How long each command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a snapshot records on each server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    /// Files: absolute, relative to the login user's home, or `~/...`.
    #[serde(default)]
    pub files: Vec<String>,
    /// Shell commands (run by /bin/sh in the login user's home).
    #[serde(default)]
    pub commands: Vec<String>,
}

/// One file as found on one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// Whether it exists.
    pub exists: bool,
    /// SHA-256 of the whole file, hex (none when it is absent or
    /// unreadable, or the server has neither `sha256sum` nor `shasum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Its size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Its content, up to [`TEXT_KEPT`] bytes, when it is text (UTF-8
    /// without NUL bytes); none for a binary file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Whether `text` holds only the first [`TEXT_KEPT`] bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Whether the content is binary (compared by hash and size only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub binary: bool,
    /// Why it could not be read (a directory, permission denied, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one command printed on one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandState {
    /// Its exit status; none when it was killed, timed out or could not
    /// run (stderr then says why, in a line starting `drover: `).
    pub exit_code: Option<i32>,
    /// Standard output (up to 64 KiB).
    pub stdout: String,
    /// Standard error (up to 64 KiB).
    pub stderr: String,
}

/// Everything recorded of one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerState {
    /// The server's hostname.
    pub server: String,
    /// Why it could not be read at all (unreachable); its files and
    /// commands are then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Each file of the spec, by the path as given.
    #[serde(default)]
    pub files: BTreeMap<String, FileState>,
    /// Each command of the spec, by the command as given.
    #[serde(default)]
    pub commands: BTreeMap<String, CommandState>,
}

/// One difference between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The server.
    pub server: String,
    /// `file`, `command` or `server`.
    pub kind: String,
    /// The file's path, the command, or (kind `server`) the server.
    pub item: String,
    /// What changed, in a few words: `content changed`, `appeared`,
    /// `removed`, `exit 0 -> 1`, `output changed`, `unreachable`, ...
    pub summary: String,
    /// A unified diff of the text (file content, command output); empty
    /// when there is no text to show (binary files, a server's change).
    pub diff: String,
}

/// Take a snapshot of every server of `fleet`, [`PARALLEL`] at a time:
/// their states in the fleet's order. A server that cannot be reached
/// has its `error` set; nothing here fails as a whole.
pub async fn take(fleet: &Fleet, spec: &SnapshotSpec, cancel: CancellationToken) -> Vec<ServerState> {
    let limit = Semaphore::new(PARALLEL);
    let script = files_script(&spec.files);
    let reads = fleet
        .servers()
        .iter()
        .map(|s| {
            let (limit, script, cancel) = (&limit, &script, cancel.clone());
            async move {
                let Ok(_permit) = limit.acquire().await else {
                    return unreachable_state(&s.hostname, "the snapshot was stopped".into());
                };
                if cancel.is_cancelled() {
                    return unreachable_state(&s.hostname, "the snapshot was cancelled".into());
                }
                take_one(fleet, &s.hostname, spec, script, cancel).await
            }
        })
        .collect();
    join_all(reads).await
}

/// [`take`], stopped (commands killed, servers not yet read left
/// unread) when `stop` resolves: Ctrl-C for a command-line tool.
pub async fn take_until(fleet: &Fleet, spec: &SnapshotSpec, stop: impl Future<Output = ()>) -> Vec<ServerState> {
    let cancel = CancellationToken::new();
    let taking = take(fleet, spec, cancel.clone());
    tokio::pin!(taking);
    tokio::pin!(stop);
    let mut stopped = false;
    loop {
        tokio::select! {
            states = &mut taking => return states,
            () = &mut stop, if !stopped => {
                stopped = true;
                cancel.cancel();
            }
        }
    }
}

fn unreachable_state(server: &str, error: String) -> ServerState {
    ServerState {
        server: server.to_string(),
        error: Some(error),
        ..ServerState::default()
    }
}

/// One server: its files in one script, then each command.
async fn take_one(
    fleet: &Fleet,
    server: &str,
    spec: &SnapshotSpec,
    script: &str,
    cancel: CancellationToken,
) -> ServerState {
    let mut state = ServerState {
        server: server.to_string(),
        ..ServerState::default()
    };
    if !spec.files.is_empty() {
        let (tx, mut rx) = mpsc::unbounded_channel::<LogLine>();
        // Every line is kept here (the fleet's own capture stops at 64
        // KiB per stream, less than a few files' encoded content).
        let collect = async move {
            let mut out = Vec::new();
            while let Some(l) = rx.recv().await {
                if l.stream == Stream::Stdout {
                    out.push(l.line);
                }
            }
            out
        };
        let run = fleet.run(server, script, Some(FILES_TIMEOUT), Some(tx), cancel.clone());
        let (result, lines) = tokio::join!(run, collect);
        match result {
            Err(e) => {
                fleet.forget(server).await;
                state.error = Some(e);
                return state;
            }
            Ok((outcome, captured)) => {
                let why_cut = match outcome {
                    Outcome::Exited(0) => None,
                    other => Some(format!(
                        "the file-reading script {}{}",
                        ended(&other, FILES_TIMEOUT),
                        first_line(&captured.stderr)
                    )),
                };
                state.files = parse_files(&spec.files, &lines, why_cut.as_deref());
            }
        }
    }
    for command in &spec.commands {
        let answer = match fleet
            .run(server, command, Some(COMMAND_TIMEOUT), None, cancel.clone())
            .await
        {
            Ok((Outcome::Exited(code), c)) => CommandState {
                exit_code: Some(code),
                stdout: c.stdout,
                stderr: c.stderr,
            },
            Ok((other, c)) => CommandState {
                exit_code: None,
                stdout: c.stdout,
                stderr: format!("{}drover: the command {}\n", c.stderr, ended(&other, COMMAND_TIMEOUT)),
            },
            Err(e) if state.files.is_empty() && state.commands.is_empty() => {
                // Nothing was read: the server is unreachable.
                fleet.forget(server).await;
                return unreachable_state(server, e);
            }
            Err(e) => CommandState {
                exit_code: None,
                stdout: String::new(),
                stderr: format!("drover: the command could not run: {e}\n"),
            },
        };
        state.commands.insert(command.clone(), answer);
    }
    state
}

/// How a command that did not exit 0 ended, in words.
fn ended(outcome: &Outcome, timeout: Duration) -> String {
    match outcome {
        Outcome::Exited(code) => format!("exited {code}"),
        Outcome::Signaled(sig) => format!("was killed by signal {sig}"),
        Outcome::TimedOut => format!("timed out after {} s", timeout.as_secs()),
        Outcome::Cancelled => "was cancelled".into(),
    }
}

fn first_line(stderr: &str) -> String {
    match stderr.lines().find(|l| !l.trim().is_empty()) {
        Some(l) => format!(": {}", l.trim()),
        None => String::new(),
    }
}

/// Run every future to its end, at most as many at once as they let
/// each other (they share a semaphore): their outputs in order. The
/// futures borrow the fleet, so they are polled here rather than
/// spawned.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// The marker starting every framing line. Base64 and hex lines never
/// start with `@`.
const MARK: &str = "@@drover-snapshot";

/// `word` quoted for /bin/sh: in single quotes, each `'` as `'\''`.
fn quote(word: &str) -> String {
    let mut s = String::with_capacity(word.len() + 2);
    s.push('\'');
    for c in word.chars() {
        if c == '\'' {
            s.push_str("'\\''");
        } else {
            s.push(c);
        }
    }
    s.push('\'');
    s
}

/// A path as a shell word: `~` and `~/...` are the login user's home
/// (`"$home"/...`, see [`files_script`]); anything else is quoted as it
/// is (relative paths are relative to where commands start: the login
/// user's home over SSH).
fn path_word(path: &str) -> String {
    if path == "~" {
        return "\"$home\"".into();
    }
    match path.strip_prefix("~/") {
        Some(rest) => format!("\"$home\"/{}", quote(rest)),
        None => quote(path),
    }
}

/// The script that reads `files` on a server: for the file at index i,
/// one framing line `MARK i absent`, `MARK i error WHY`, or `MARK i file
/// SIZE SHA256 ENCODING` followed by the first [`TEXT_KEPT`] bytes
/// encoded (`b64` or `hex`) and `MARK i end`.
///
/// `~` is the login user's home even when commands run as root (a server
/// whose ssh access declares `become`): sudo's `SUDO_USER`'s home then,
/// not root's `$HOME`.
pub fn files_script(files: &[String]) -> String {
    let mut s = format!(
        r#"m={mark}
home=$HOME
case "${{SUDO_USER:-}}" in
  ''|root|*[!A-Za-z0-9._-]*) ;;
  *) eval "u=~$SUDO_USER"; case "$u" in /*) home=$u ;; esac ;;
esac
if command -v base64 >/dev/null 2>&1; then enc=b64; else enc=hex; fi
if command -v sha256sum >/dev/null 2>&1; then sum() {{ sha256sum | cut -d' ' -f1; }}
elif command -v shasum >/dev/null 2>&1; then sum() {{ shasum -a 256 | cut -d' ' -f1; }}
else sum() {{ cat >/dev/null; echo -; }}; fi
one() {{
  if [ -d "$2" ]; then echo "$m $1 error is a directory"; return; fi
  if [ ! -e "$2" ]; then
    if [ -L "$2" ]; then echo "$m $1 error is a dangling symbolic link"; else echo "$m $1 absent"; fi
    return
  fi
  if [ ! -f "$2" ]; then echo "$m $1 error is not a regular file"; return; fi
  if [ ! -r "$2" ]; then echo "$m $1 error cannot be read by $(id -un 2>/dev/null || echo the login user) (permission denied)"; return; fi
  size=$(wc -c < "$2" 2>/dev/null | tr -d ' ')
  if [ -z "$size" ]; then echo "$m $1 error cannot be read"; return; fi
  h=$(sum < "$2" 2>/dev/null)
  echo "$m $1 file $size ${{h:--}} $enc"
  if [ $enc = b64 ]; then head -c {kept} < "$2" | base64; else head -c {kept} < "$2" | od -An -v -tx1; fi
  echo "$m $1 end"
}}
"#,
        mark = MARK,
        kept = TEXT_KEPT
    );
    for (i, f) in files.iter().enumerate() {
        s.push_str(&format!("one {i} {}\n", path_word(f)));
    }
    s.push_str("exit 0\n");
    s
}

/// The files' states from the script's output lines; `cut` says why the
/// script stopped early, for files it did not get to.
fn parse_files(files: &[String], lines: &[String], cut: Option<&str>) -> BTreeMap<String, FileState> {
    let mut found: BTreeMap<usize, FileState> = BTreeMap::new();
    // The file being read: its index, state, encoding and encoded lines.
    let mut open: Option<(usize, FileState, String, String)> = None;
    for line in lines {
        let Some(rest) = line.strip_prefix(MARK).and_then(|r| r.strip_prefix(' ')) else {
            if let Some((_, _, _, body)) = open.as_mut() {
                body.push_str(line.trim());
            }
            continue;
        };
        let mut words = rest.splitn(3, ' ');
        let (Some(index), Some(what)) = (words.next().and_then(|w| w.parse::<usize>().ok()), words.next()) else {
            continue;
        };
        let detail = words.next().unwrap_or_default();
        match what {
            "absent" => {
                found.insert(index, FileState::default());
            }
            "error" => {
                found.insert(
                    index,
                    FileState {
                        exists: true,
                        error: Some(detail.to_string()),
                        ..FileState::default()
                    },
                );
            }
            "file" => {
                let mut parts = detail.split(' ');
                let size = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                let sha256 = parts.next().filter(|h| *h != "-").map(str::to_string);
                let encoding = parts.next().unwrap_or("b64").to_string();
                let state = FileState {
                    exists: true,
                    sha256,
                    size,
                    ..FileState::default()
                };
                open = Some((index, state, encoding, String::new()));
            }
            "end" => {
                if let Some((i, mut state, encoding, body)) = open.take()
                    && i == index
                {
                    let bytes = if encoding == "hex" {
                        decode_hex(&body)
                    } else {
                        decode_base64(&body)
                    };
                    match bytes {
                        Some(bytes) => fill_content(&mut state, &bytes),
                        None => state.error = Some(format!("its content arrived garbled ({encoding})")),
                    }
                    found.insert(index, state);
                }
            }
            _ => {}
        }
    }
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let state = found.remove(&i).unwrap_or_else(|| FileState {
                error: Some(match cut {
                    Some(why) => format!("not read: {why}"),
                    None => "not read: the server's script gave no answer for it".into(),
                }),
                ..FileState::default()
            });
            (f.clone(), state)
        })
        .collect()
}

/// Text or binary, from the first [`TEXT_KEPT`] bytes of a file of
/// `state.size` bytes.
fn fill_content(state: &mut FileState, bytes: &[u8]) {
    state.truncated = state.size > bytes.len() as u64;
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => Some(t),
        // A cut may fall inside a character: what comes before it is text.
        Err(e) if state.truncated && e.error_len().is_none() => std::str::from_utf8(&bytes[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    match text {
        Some(t) if !t.contains('\0') => state.text = Some(t.to_string()),
        _ => state.binary = true,
    }
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let digits: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let body = digits
        .strip_suffix(b"==")
        .or_else(|| digits.strip_suffix(b"="))
        .unwrap_or(&digits);
    if !digits.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut n = 0u32;
        for (k, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * k);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    s.split_ascii_whitespace()
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}

/// What changed from `before` to `after`: per server (in `before`'s
/// order, then servers only in `after`), the server itself (only on one
/// side, unreachable on one side), then its files, then its commands.
/// Diffs are headed `SERVER:ITEM (before)` and `(after)`.
pub fn diff(before: &[ServerState], after: &[ServerState]) -> Vec<Change> {
    diff_labeled(before, after, "before", "after")
}

/// [`diff`], with the sides named `old` and `new` in the diffs' headers
/// and summaries (a snapshot's name, `now`).
pub fn diff_labeled(before: &[ServerState], after: &[ServerState], old: &str, new: &str) -> Vec<Change> {
    let mut out = Vec::new();
    let find = |side: &[ServerState], name: &str| side.iter().position(|s| s.server == name);
    for b in before {
        match find(after, &b.server) {
            Some(i) => server_changes(b, &after[i], (old, new), &mut out),
            None => out.push(server_change(&b.server, format!("only in {old}, not in {new}"))),
        }
    }
    for a in after {
        if find(before, &a.server).is_none() {
            out.push(server_change(&a.server, format!("only in {new}, not in {old}")));
        }
    }
    out
}

fn server_change(server: &str, summary: String) -> Change {
    Change {
        server: server.to_string(),
        kind: "server".into(),
        item: server.to_string(),
        summary,
        diff: String::new(),
    }
}

fn server_changes(b: &ServerState, a: &ServerState, (old, new): (&str, &str), out: &mut Vec<Change>) {
    match (&b.error, &a.error) {
        // Nothing known on one side: nothing to compare item by item.
        (None, Some(e)) => {
            out.push(server_change(&b.server, format!("unreachable: {e}")));
            return;
        }
        (Some(e), None) => {
            out.push(server_change(
                &b.server,
                format!("reachable again (unreachable in {old}: {e})"),
            ));
            return;
        }
        // Unknown on both sides is not a change.
        (Some(_), Some(_)) => return,
        (None, None) => {}
    }
    let header = |item: &str, side: &str| format!("{}:{item} ({side})", b.server);
    for path in union(b.files.keys(), a.files.keys()) {
        let summary_diff = match (b.files.get(path), a.files.get(path)) {
            (Some(x), Some(y)) => file_change(x, y).map(|summary| {
                let d = match (&x.text, &y.text) {
                    (Some(t1), Some(t2)) => unified_diff(t1, t2, &header(path, old), &header(path, new)),
                    (None, Some(t2)) if !x.exists => unified_diff("", t2, &header(path, old), &header(path, new)),
                    (Some(t1), None) if !y.exists => unified_diff(t1, "", &header(path, old), &header(path, new)),
                    _ => String::new(),
                };
                (summary, d)
            }),
            (Some(_), None) => Some((format!("recorded in {old} only"), String::new())),
            (None, Some(_)) => Some((format!("recorded in {new} only"), String::new())),
            (None, None) => None,
        };
        if let Some((summary, diff)) = summary_diff {
            out.push(Change {
                server: b.server.clone(),
                kind: "file".into(),
                item: path.clone(),
                summary,
                diff,
            });
        }
    }
    for command in union(b.commands.keys(), a.commands.keys()) {
        let summary_diff = match (b.commands.get(command), a.commands.get(command)) {
            (Some(x), Some(y)) => command_change(x, y).map(|summary| {
                let d = unified_diff(&body(x), &body(y), &header(command, old), &header(command, new));
                (summary, d)
            }),
            (Some(_), None) => Some((format!("run in {old} only"), String::new())),
            (None, Some(_)) => Some((format!("run in {new} only"), String::new())),
            (None, None) => None,
        };
        if let Some((summary, diff)) = summary_diff {
            out.push(Change {
                server: b.server.clone(),
                kind: "command".into(),
                item: command.clone(),
                summary,
                diff,
            });
        }
    }
}

/// The keys of both maps, each once, sorted.
fn union<'a>(a: impl Iterator<Item = &'a String>, b: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut keys: Vec<&String> = a.chain(b).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// How a file changed, in a few words; none when it did not.
fn file_change(x: &FileState, y: &FileState) -> Option<String> {
    match (x.exists, y.exists) {
        (false, false) => return None,
        (false, true) => return Some("appeared".into()),
        (true, false) => return Some("removed".into()),
        (true, true) => {}
    }
    match (&x.error, &y.error) {
        (None, None) => {}
        (Some(e1), Some(e2)) if e1 == e2 => return None,
        (_, Some(e)) => return Some(format!("unreadable: {e}")),
        (Some(e), None) => return Some(format!("readable again (was: {e})")),
    }
    let same = match (&x.sha256, &y.sha256) {
        (Some(h1), Some(h2)) => h1 == h2,
        // No hash on a side: the size and what was kept of the content.
        _ => x.size == y.size && x.text == y.text && x.binary == y.binary,
    };
    if same {
        return None;
    }
    let hashes = match (&x.sha256, &y.sha256) {
        (Some(h1), Some(h2)) => format!(", sha256 {} -> {}", short(h1), short(h2)),
        _ => String::new(),
    };
    Some(if x.binary || y.binary {
        format!("content changed (binary, {} -> {} bytes{hashes})", x.size, y.size)
    } else if x.truncated || y.truncated {
        format!("content changed (the first {} KiB shown)", TEXT_KEPT / 1024)
    } else {
        "content changed".into()
    })
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// How a command's answer changed; none when it did not.
fn command_change(x: &CommandState, y: &CommandState) -> Option<String> {
    let exit = |c: &CommandState| match c.exit_code {
        Some(code) => code.to_string(),
        None => "none".into(),
    };
    let mut parts = Vec::new();
    if x.exit_code != y.exit_code {
        parts.push(format!("exit {} -> {}", exit(x), exit(y)));
    }
    if x.stdout != y.stdout || x.stderr != y.stderr {
        parts.push("output changed".into());
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// A command's output as compared and shown: stdout, then each line of
/// stderr marked `stderr| `.
fn body(c: &CommandState) -> String {
    let mut s = c.stdout.clone();
    for line in c.stderr.lines() {
        s.push_str("stderr| ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_file(t: &str) -> FileState {
        FileState {
            exists: true,
            sha256: Some(format!(
                "{:064x}",
                t.len() * 7919 + t.bytes().map(usize::from).sum::<usize>()
            )),
            size: t.len() as u64,
            text: Some(t.into()),
            ..FileState::default()
        }
    }

    fn server(name: &str, files: &[(&str, FileState)], commands: &[(&str, i32, &str)]) -> ServerState {
        ServerState {
            server: name.into(),
            error: None,
            files: files.iter().map(|(p, f)| (p.to_string(), f.clone())).collect(),
            commands: commands
                .iter()
                .map(|(c, code, out)| {
                    (
                        c.to_string(),
                        CommandState {
                            exit_code: Some(*code),
                            stdout: out.to_string(),
                            stderr: String::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn paths_are_quoted_for_the_shell_and_tilde_is_the_home() {
        assert_eq!(path_word("/etc/app.conf"), "'/etc/app.conf'");
        assert_eq!(path_word("~/it's $x"), "\"$home\"/'it'\\''s $x'");
        assert_eq!(path_word("~"), "\"$home\"");
        assert_eq!(path_word("~root/x"), "'~root/x'");
        let script = files_script(&["~/a b".into(), "/etc/x".into()]);
        assert!(
            script.contains("one 0 \"$home\"/'a b'\none 1 '/etc/x'\nexit 0\n"),
            "{script}"
        );
    }

    #[test]
    fn the_scripts_output_is_read_back_whatever_the_content() {
        let files: Vec<String> = ["a", "b", "c", "d", "e", "f"].iter().map(|s| s.to_string()).collect();
        let lines: Vec<String> = [
            "@@drover-snapshot 0 file 15 abc b64",
            // "hello\n@@drover\n": content lines that look like framing
            // arrive encoded.
            "aGVsbG8KQEBkcm92ZXIK",
            "@@drover-snapshot 0 end",
            "@@drover-snapshot 1 absent",
            "@@drover-snapshot 2 error is a directory",
            "@@drover-snapshot 3 file 3 - hex",
            " 00 ff 41",
            "@@drover-snapshot 3 end",
            "@@drover-snapshot 4 file 70000 def b64",
            "w6k=",
            "@@drover-snapshot 4 end",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got = parse_files(&files, &lines, Some("the file-reading script timed out after 60 s"));
        assert_eq!(got["a"].text.as_deref(), Some("hello\n@@drover\n"));
        assert_eq!((got["a"].size, got["a"].sha256.as_deref()), (15, Some("abc")));
        assert_eq!(got["b"], FileState::default());
        assert_eq!(got["c"].error.as_deref(), Some("is a directory"));
        assert!(got["d"].binary && got["d"].text.is_none() && got["d"].sha256.is_none());
        assert!(got["e"].truncated && got["e"].text.as_deref() == Some("é"));
        assert_eq!(
            got["f"].error.as_deref(),
            Some("not read: the file-reading script timed out after 60 s")
        );
    }

    /// The script run by a real /bin/sh on files of every kind.
    #[test]
    fn the_script_reads_files_of_every_kind_with_a_real_shell() -> Result<(), String> {
        let home = tempfile::tempdir().map_err(|e| e.to_string())?;
        let h = home.path();
        let write = |name: &str, content: &[u8]| std::fs::write(h.join(name), content).map_err(|e| e.to_string());
        write("app.conf", b"hello\n")?;
        write("it's $odd", b"x")?;
        write("blob", &[0u8, 159, 146, 150, 255])?;
        write("big", "é".repeat(TEXT_KEPT).as_bytes())?;
        std::fs::create_dir(h.join("dir")).map_err(|e| e.to_string())?;
        let files: Vec<String> = ["~/app.conf", "~/it's $odd", "~/blob", "~/big", "~/absent", "~/dir"]
            .iter()
            .map(|s| s.to_string())
            .chain([h.join("app.conf").display().to_string()])
            .collect();
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &files_script(&files)])
            .env("HOME", h)
            .env_remove("SUDO_USER")
            .output()
            .map_err(|e| e.to_string())?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        let got = parse_files(&files, &lines, None);
        let conf = &got["~/app.conf"];
        assert_eq!(
            (conf.exists, conf.size, conf.text.as_deref(), conf.sha256.as_deref()),
            (
                true,
                6,
                Some("hello\n"),
                Some("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
            )
        );
        assert_eq!(got[&files[6]], *conf, "an absolute path reads the same file");
        assert_eq!(got["~/it's $odd"].text.as_deref(), Some("x"));
        let blob = &got["~/blob"];
        assert!(
            blob.binary && blob.text.is_none() && blob.size == 5 && blob.sha256.is_some(),
            "{blob:?}"
        );
        let big = &got["~/big"];
        assert!(
            big.truncated && !big.binary && big.size == 2 * TEXT_KEPT as u64,
            "{:?}",
            big.size
        );
        assert_eq!(big.text.as_ref().map(String::len), Some(TEXT_KEPT));
        assert_eq!(got["~/absent"], FileState::default());
        assert_eq!(got["~/dir"].error.as_deref(), Some("is a directory"));
        Ok(())
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(decode_base64("aGVs\nbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("YWJj").as_deref(), Some(&b"abc"[..]));
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        assert!(decode_base64("a!==").is_none());
        assert!(decode_base64("abc").is_none());
    }

    #[test]
    fn changes_are_reported_per_server_and_item() {
        let absent = FileState::default();
        let binary = |h: &str| FileState {
            exists: true,
            sha256: Some(h.repeat(64)),
            size: 4,
            binary: true,
            ..FileState::default()
        };
        let before = vec![
            server(
                "h1",
                &[("~/app.conf", text_file("port=1\n")), ("~/new", absent.clone())],
                &[("uname", 0, "Linux\n")],
            ),
            server(
                "h2",
                &[("~/app.conf", text_file("port=1\n")), ("~/bin", binary("a"))],
                &[("uname", 0, "Linux\n")],
            ),
            server("h3", &[], &[]),
            server("gone", &[], &[]),
        ];
        let mut after = vec![
            server(
                "h1",
                &[("~/app.conf", text_file("port=2\n")), ("~/new", text_file("x\n"))],
                &[("uname", 1, "Linux\n")],
            ),
            server(
                "h2",
                &[("~/app.conf", text_file("port=1\n")), ("~/bin", binary("b"))],
                &[("uname", 0, "Linux\n")],
            ),
            unreachable_state("h3", "connection refused".into()),
            server("fresh", &[], &[]),
        ];
        let c = diff(&before, &after);
        let rows: Vec<(&str, &str, &str, &str)> = c
            .iter()
            .map(|c| (c.server.as_str(), c.kind.as_str(), c.item.as_str(), c.summary.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("h1", "file", "~/app.conf", "content changed"),
                ("h1", "file", "~/new", "appeared"),
                ("h1", "command", "uname", "exit 0 -> 1"),
                (
                    "h2",
                    "file",
                    "~/bin",
                    "content changed (binary, 4 -> 4 bytes, sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb)"
                ),
                ("h3", "server", "h3", "unreachable: connection refused"),
                ("gone", "server", "gone", "only in before, not in after"),
                ("fresh", "server", "fresh", "only in after, not in before"),
            ]
        );
        assert_eq!(
            c[0].diff,
            "--- h1:~/app.conf (before)\n+++ h1:~/app.conf (after)\n@@ -1 +1 @@\n-port=1\n+port=2\n"
        );
        assert_eq!(
            c[1].diff,
            "--- h1:~/new (before)\n+++ h1:~/new (after)\n@@ -0,0 +1 @@\n+x\n"
        );
        assert!(c[3].diff.is_empty(), "no text diff of a binary file");
        // The same states: nothing changed; unreachable on both sides is
        // not a change either.
        after.truncate(3);
        assert!(diff(&after, &after).is_empty());
    }
}
