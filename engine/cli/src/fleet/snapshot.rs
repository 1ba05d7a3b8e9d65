//! `drover snapshot` and `drover drift`: files and command outputs of the
//! selected servers recorded in the state store, and what changed since,
//! per server.
//!
//! A snapshot is read by [`drover_exec::snapshot::take`] (each server's
//! files in one round trip, then each command) and stored whole
//! ([`drover_state::SnapshotRecord`]); `drift` reads the same files and
//! commands again and compares, storing nothing unless asked (`--save`).
//! Comparing ([`drover_exec::snapshot::diff`]) is the same for two stored
//! snapshots and for a snapshot and now.
//!
//! Taking a snapshot writes the state store, so it opens it as its owner,
//! as `drover run` does (refused while `drover serve` or a run holds it);
//! listing, showing and comparing only read it, beside any owner.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use drover_exec::fleet::Fleet;
use drover_exec::snapshot::{self, Change, ServerState, SnapshotSpec};
use drover_state::{SnapshotRecord, StateError, Store};

use super::Selection;

/// Exit status of invalid input (an unknown snapshot, a bad name).
const INVALID: u8 = 1;
/// Exit status of a snapshot taken with servers that could not be read
/// (as `drover ping` for a server that did not answer).
const UNREACHABLE: u8 = 4;
/// Exit status of a comparison that found changes.
pub const DRIFT: u8 = 6;

const AFTER_HELP: &str = "\
Exit status: 0 success (diff, drift: no changes), 1 invalid input (an unknown snapshot, a name taken),
2 usage, 3 environment (the state store owned by another process), 4 take: a server could not be read
(the snapshot is stored, the server recorded as unreachable), 6 diff, drift: changes found.";

/// Arguments of `drover snapshot`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// `drover snapshot` commands.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Record files and command outputs of the selected servers.
    #[command(after_help = AFTER_HELP)]
    Take(TakeArgs),
    /// Every snapshot, newest first.
    List {
        #[command(flatten)]
        state: crate::StateArgs,
    },
    /// What a snapshot recorded on each server.
    Show {
        /// The snapshot's id or name.
        snapshot: String,
        /// Output format (json: every file's content and command's output).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        state: crate::StateArgs,
    },
    /// What changed from snapshot A to snapshot B, per server.
    #[command(after_help = AFTER_HELP)]
    Diff {
        /// The earlier snapshot (id or name).
        a: String,
        /// The later snapshot (id or name).
        b: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        state: crate::StateArgs,
    },
}

/// Arguments of `drover snapshot take`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("items").required(true).multiple(true).args(["files", "commands"])))]
pub struct TakeArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Files to record: absolute, or relative to the login user's home
    /// (`~/app.conf`, `app.conf`); repeatable or comma-separated. Text is
    /// kept up to 64 KiB, every file is hashed (SHA-256).
    #[arg(long = "files", value_name = "PATHS", value_delimiter = ',')]
    pub files: Vec<String>,
    /// A shell command whose exit status and output to record; repeatable
    /// (not split at commas).
    #[arg(long = "commands", visible_alias = "command", value_name = "CMD")]
    pub commands: Vec<String>,
    /// A name for the snapshot (letters, digits, `.`, `_`, `-`): unique, it
    /// can be given wherever an id can.
    #[arg(long, value_name = "NAME", value_parser = snapshot_name)]
    pub name: Option<String>,
    #[command(flatten)]
    pub state: crate::StateArgs,
}

/// Arguments of `drover drift`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct DriftArgs {
    /// The servers to compare (default: every server of FILE). With a
    /// filter, servers of the snapshot outside it are not compared.
    #[command(flatten)]
    pub selection: Selection,
    /// The snapshot (id or name) to compare with: its files and commands
    /// are read again.
    #[arg(long, value_name = "SNAPSHOT")]
    pub against: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Store what was read now as a snapshot of this name.
    #[arg(long, value_name = "NAME", value_parser = snapshot_name)]
    pub save: Option<String>,
    #[command(flatten)]
    pub state: crate::StateArgs,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people: per server, what changed, with unified diffs.
    Text,
    /// For programs: one JSON document.
    Json,
}

/// A snapshot name: 1 to 64 of letters, digits, `.`, `_`, `-`, starting
/// with a letter or digit.
fn snapshot_name(s: &str) -> Result<String, String> {
    let valid = (1..=64).contains(&s.len())
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a snapshot name: give 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

/// `drover snapshot`.
pub fn main(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match args.command {
        SnapshotCommand::Take(args) => take(args, out),
        SnapshotCommand::List { state } => list(&state.target().state, out),
        SnapshotCommand::Show {
            snapshot,
            format,
            state,
        } => show(&state.target().state, &snapshot, format, out),
        SnapshotCommand::Diff { a, b, format, state } => compare(&state.target().state, &a, &b, format, out),
    }
}

/// `drover snapshot take`.
fn take(args: TakeArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let state = args.state.target().state;
    // The owner's lock first: refused now, before any server is read, if
    // another process owns the store.
    let store = Store::open(&state)?;
    if let Some(name) = &args.name
        && let Some(code) = name_taken(&store, name)?
    {
        return Ok(code);
    }
    let (_, servers) = match args.selection.load() {
        Ok(x) => x,
        Err(refusal) => return refusal.report(&args.selection.file, out),
    };
    let spec = SnapshotSpec {
        files: args.files,
        commands: args.commands,
    };
    let states = read(&args.selection, servers, &spec, &state)?;
    let record = SnapshotRecord {
        id: drover_exec::run::new_run_id(),
        name: args.name,
        created_at_ms: drover_exec::scheduler::now_ms(),
        file: file_name(&args.selection.file),
        selector: serde_json::to_value(args.selection.selector())?,
        spec: serde_json::to_value(&spec)?,
        servers: serde_json::to_value(&states)?,
    };
    match store.save_snapshot(&record) {
        Ok(()) => {}
        Err(StateError::SnapshotExists(name)) => {
            eprintln!("drover: {}", StateError::SnapshotExists(name));
            return Ok(ExitCode::from(INVALID));
        }
        Err(e) => return Err(e.into()),
    }
    let unreachable: Vec<&ServerState> = states.iter().filter(|s| s.error.is_some()).collect();
    writeln!(
        out,
        "snapshot {}{}: {} of {} server(s) read, {} file(s) and {} command(s) each",
        record.id,
        record.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
        states.len() - unreachable.len(),
        states.len(),
        spec.files.len(),
        spec.commands.len()
    )?;
    for s in &unreachable {
        writeln!(
            out,
            "unreachable: {}: {}",
            s.server,
            s.error.as_deref().unwrap_or_default()
        )?;
    }
    let unreadable = unreadable_files(&states);
    for (server, path, why) in &unreadable {
        writeln!(out, "unreadable: {server}: {path}: {why}")?;
    }
    Ok(if unreachable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(UNREACHABLE)
    })
}

/// The files that exist but could not be read, on each server.
fn unreadable_files(states: &[ServerState]) -> Vec<(&str, &str, &str)> {
    states
        .iter()
        .flat_map(|s| {
            s.files
                .iter()
                .filter_map(move |(p, f)| f.error.as_deref().map(|e| (s.server.as_str(), p.as_str(), e)))
        })
        .collect()
}

/// The exit status to end with if `name` is taken (saying so), or None.
fn name_taken(store: &Store, name: &str) -> anyhow::Result<Option<ExitCode>> {
    match store.snapshot(name) {
        Ok(_) => {
            eprintln!("drover: {}", StateError::SnapshotExists(name.to_string()));
            Ok(Some(ExitCode::from(INVALID)))
        }
        Err(StateError::UnknownSnapshot(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The file as recorded: absolute when it can be made so.
fn file_name(file: &Path) -> String {
    std::fs::canonicalize(file)
        .unwrap_or_else(|_| file.to_path_buf())
        .display()
        .to_string()
}

/// Read `spec` on `servers`, stopping on Ctrl-C.
fn read(
    selection: &Selection,
    servers: Vec<drover_core::model::Server>,
    spec: &SnapshotSpec,
    state: &Path,
) -> anyhow::Result<Vec<ServerState>> {
    let opts = drover_exec::Options::for_state(state, drover_registry::providers());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    Ok(rt.block_on(async {
        let fleet = Fleet::new(servers, selection.base_dir(), &opts, "snapshot");
        let stop = async {
            if tokio::signal::ctrl_c().await.is_err() {
                // No signal handler: never stop early.
                std::future::pending::<()>().await;
            }
        };
        let states = snapshot::take_until(&fleet, spec, stop).await;
        fleet.finish().await;
        states
    }))
}

/// The store to read, or the exit status to end with (saying why) when
/// there is none yet.
fn reader(state: &Path, wanted: &str) -> anyhow::Result<Result<Store, ExitCode>> {
    if !state.exists() {
        eprintln!(
            "drover: no snapshot {wanted:?}: the state store {} does not exist yet (`drover snapshot take` makes it)",
            state.display()
        );
        return Ok(Err(ExitCode::from(INVALID)));
    }
    Ok(Ok(Store::open_read_only(state)?))
}

/// The snapshot `wanted`, or the exit status to end with (saying why).
fn find(store: &Store, wanted: &str) -> anyhow::Result<Result<SnapshotRecord, ExitCode>> {
    match store.snapshot(wanted) {
        Ok(r) => Ok(Ok(r)),
        Err(e @ StateError::UnknownSnapshot(_)) => {
            eprintln!("drover: {e}");
            Ok(Err(ExitCode::from(INVALID)))
        }
        Err(e) => Err(e.into()),
    }
}

/// A stored snapshot's spec and servers, decoded.
fn contents(r: &SnapshotRecord) -> anyhow::Result<(SnapshotSpec, Vec<ServerState>)> {
    let spec = serde_json::from_value(r.spec.clone()).map_err(|e| {
        anyhow::anyhow!(
            "snapshot {}: its spec does not decode ({e}); was it written by another version of drover?",
            r.id
        )
    })?;
    let servers = serde_json::from_value(r.servers.clone()).map_err(|e| {
        anyhow::anyhow!(
            "snapshot {}: its servers do not decode ({e}); was it written by another version of drover?",
            r.id
        )
    })?;
    Ok((spec, servers))
}

/// How a snapshot is named in output: its name, or else its id.
fn label(r: &SnapshotRecord) -> String {
    r.name.clone().unwrap_or_else(|| r.id.clone())
}

/// How long ago `at_ms` was, roughly.
fn ago(at_ms: i64) -> String {
    let s = (drover_exec::scheduler::now_ms() - at_ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// `drover snapshot list`.
fn list(state: &Path, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    if !state.exists() {
        writeln!(out, "no snapshots in {} (it does not exist yet)", state.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open_read_only(state)?;
    let snaps = store.snapshots()?;
    if snaps.is_empty() {
        writeln!(out, "no snapshots in {}", state.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    let name_width = snaps
        .iter()
        .filter_map(|s| s.name.as_ref().map(String::len))
        .max()
        .unwrap_or(0)
        .max(4);
    writeln!(
        out,
        "{:<22}  {:<name_width$}  {:<14}  {:<5}  {:<8}  file",
        "snapshot", "name", "taken", "files", "commands"
    )?;
    for s in &snaps {
        let count = |k: &str| s.spec[k].as_array().map(Vec::len).unwrap_or(0);
        writeln!(
            out,
            "{:<22}  {:<name_width$}  {:<14}  {:<5}  {:<8}  {}",
            s.id,
            s.name.as_deref().unwrap_or("-"),
            ago(s.created_at_ms),
            count("files"),
            count("commands"),
            s.file
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `drover snapshot show`.
fn show(state: &Path, wanted: &str, format: Format, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let store = match reader(state, wanted)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let r = match find(&store, wanted)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    if format == Format::Json {
        serde_json::to_writer_pretty(&mut *out, &r)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (spec, servers) = contents(&r)?;
    writeln!(
        out,
        "snapshot {}{}, taken {} of {}",
        r.id,
        r.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
        ago(r.created_at_ms),
        r.file
    )?;
    writeln!(
        out,
        "files: {}; commands: {}",
        if spec.files.is_empty() {
            "-".into()
        } else {
            spec.files.join(", ")
        },
        if spec.commands.is_empty() {
            "-".into()
        } else {
            spec.commands.join(" | ")
        }
    )?;
    for s in &servers {
        if let Some(e) = &s.error {
            writeln!(out, "{}: unreachable: {e}", s.server)?;
            continue;
        }
        writeln!(out, "{}", s.server)?;
        for (path, f) in &s.files {
            let what = match (&f.error, f.exists) {
                (Some(e), _) => format!("unreadable: {e}"),
                (None, false) => "absent".into(),
                (None, true) => format!(
                    "{} bytes, {}, sha256 {}",
                    f.size,
                    if f.binary {
                        "binary"
                    } else if f.truncated {
                        "text (first 64 KiB kept)"
                    } else {
                        "text"
                    },
                    f.sha256.as_deref().unwrap_or("unknown")
                ),
            };
            writeln!(out, "  file {path}: {what}")?;
        }
        for (command, c) in &s.commands {
            let exit = c
                .exit_code
                .map_or("no exit status".to_string(), |code| format!("exit {code}"));
            let first = c.stdout.lines().next().unwrap_or_default();
            let more = c.stdout.lines().count().saturating_sub(1);
            writeln!(
                out,
                "  command {command}: {exit}: {first}{}",
                if more > 0 {
                    format!(" (+{more} lines)")
                } else {
                    String::new()
                }
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `drover snapshot diff A B`.
fn compare(state: &Path, a: &str, b: &str, format: Format, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let store = match reader(state, a)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (ra, rb) = match (find(&store, a)?, find(&store, b)?) {
        (Ok(ra), Ok(rb)) => (ra, rb),
        (Err(code), _) | (_, Err(code)) => return Ok(code),
    };
    let ((_, before), (_, after)) = (contents(&ra)?, contents(&rb)?);
    let (old, new) = (label(&ra), label(&rb));
    let changes = snapshot::diff_labeled(&before, &after, &old, &new);
    let compared = servers_compared(&before, &after);
    let sides = (side(&ra), side(&rb));
    print_changes(out, format, &changes, compared, sides)
}

/// A side of a comparison in JSON.
fn side(r: &SnapshotRecord) -> serde_json::Value {
    serde_json::json!({"id": r.id, "name": r.name, "created_at_ms": r.created_at_ms})
}

/// How many servers are on either side.
fn servers_compared(before: &[ServerState], after: &[ServerState]) -> usize {
    let mut names: Vec<&str> = before.iter().chain(after).map(|s| s.server.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.len()
}

/// Print `changes` grouped by server; the exit status: 0 when there are
/// none, [`DRIFT`] otherwise.
fn print_changes(
    out: &mut impl Write,
    format: Format,
    changes: &[Change],
    compared: usize,
    (before, after): (serde_json::Value, serde_json::Value),
) -> anyhow::Result<ExitCode> {
    let mut servers: Vec<&str> = Vec::new();
    for c in changes {
        if !servers.contains(&c.server.as_str()) {
            servers.push(&c.server);
        }
    }
    match format {
        Format::Json => {
            let doc = serde_json::json!({
                "before": before,
                "after": after,
                "servers_compared": compared,
                "servers_changed": servers,
                "changes": changes,
            });
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        }
        Format::Text => {
            for server in &servers {
                let mine: Vec<&Change> = changes.iter().filter(|c| c.server == *server).collect();
                writeln!(out, "{server}: {} change(s)", mine.len())?;
                for c in mine {
                    if c.kind == "server" {
                        writeln!(out, "  {}", c.summary)?;
                    } else {
                        writeln!(out, "  {} {}: {}", c.kind, c.item, c.summary)?;
                    }
                    for line in c.diff.lines() {
                        writeln!(out, "    {line}")?;
                    }
                }
            }
            if changes.is_empty() {
                writeln!(out, "no changes ({compared} server(s) compared)")?;
            } else {
                writeln!(
                    out,
                    "{} change(s) on {} of {compared} server(s)",
                    changes.len(),
                    servers.len()
                )?;
            }
        }
    }
    Ok(if changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(DRIFT)
    })
}

/// `drover drift FILE --against SNAPSHOT`.
pub fn drift(args: DriftArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let state: PathBuf = args.state.target().state;
    // Saving needs the store as its owner (as `drover run`); only reading
    // it does not.
    let store = if args.save.is_some() {
        Store::open(&state)?
    } else {
        match reader(&state, &args.against)? {
            Ok(s) => s,
            Err(code) => return Ok(code),
        }
    };
    let r = match find(&store, &args.against)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    if let Some(name) = &args.save
        && let Some(code) = name_taken(&store, name)?
    {
        return Ok(code);
    }
    let (spec, mut before) = contents(&r)?;
    let (_, servers) = match args.selection.load() {
        Ok(x) => x,
        Err(refusal) => return refusal.report(&args.selection.file, out),
    };
    if args.selection.selector() != drover_core::model::Selector::default() {
        before.retain(|b| servers.iter().any(|s| s.hostname == b.server));
    }
    let now = read(&args.selection, servers, &spec, &state)?;
    let taken_at = drover_exec::scheduler::now_ms();
    let mut saved = None;
    if let Some(name) = args.save {
        let record = SnapshotRecord {
            id: drover_exec::run::new_run_id(),
            name: Some(name),
            created_at_ms: taken_at,
            file: file_name(&args.selection.file),
            selector: serde_json::to_value(args.selection.selector())?,
            spec: serde_json::to_value(&spec)?,
            servers: serde_json::to_value(&now)?,
        };
        store.save_snapshot(&record)?;
        eprintln!("saved as snapshot {} ({})", record.id, label(&record));
        saved = Some(record);
    }
    let changes = snapshot::diff_labeled(&before, &now, &label(&r), "now");
    let compared = servers_compared(&before, &now);
    let after = match &saved {
        Some(s) => side(s),
        None => serde_json::json!({"id": null, "name": null, "created_at_ms": taken_at}),
    };
    print_changes(out, args.format, &changes, compared, (side(&r), after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_words() {
        assert_eq!(snapshot_name("before-1.2_x"), Ok("before-1.2_x".into()));
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(snapshot_name(bad).is_err(), "{bad:?}");
        }
    }
}
