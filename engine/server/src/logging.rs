//! Structured logs for `drover serve`.
//!
//! Layout:
//! - [`init`] installs the process's one subscriber with two layers:
//!   - stdout: JSON lines from tracing-subscriber's formatter, each with the
//!     list of its enclosing spans (`spans`), so a run's `run_id` and
//!     `trace_id` are on every line logged inside it; or text for people;
//!   - [`RunFileLayer`]: every event inside a span that carries [`RUN_ID`] is
//!     also appended to that run's own file, [`JSON_FILE`] (or [`TEXT_FILE`]
//!     for a run whose workflow asks for text) in the run's directory.
//! - [`register_run`] / [`unregister_run`]: a run's own level and format,
//!   from its workflow's `logging`, kept in a process-wide registry.
//! - [`trace_id`]: a new random trace id for a run.
//!
//! Architecture invariant: a span that carries one of the context fields
//! ([`RUN_ID`], [`TASK`], [`SERVER`], [`TRACE_ID`]) is enabled whatever the
//! level filter says. Without that, `info_span!("run", run_id = ..)` under
//! `level: warn` would be disabled, and the run's warnings would lose their
//! run: they would reach neither the run's file nor carry `run_id` on stdout.
//! Events are filtered as configured.
//!
//! A run's level can only narrow the server's: an event that the server's
//! filter (`RUST_LOG`, else the configured level) drops is never built, so
//! it reaches no file either.
//!
//! Field values are written only to stdout and to the run's file; the
//! orchestrator logs text that is already masked.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_core::model::LoggingConfig;
use drover_exec::Progress;
use drover_state::Event as JournalEvent;
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

pub use drover_core::model::{LogFormat, LogLevel};

/// Span field naming the run; an event inside a span with it goes to the
/// run's file.
pub const RUN_ID: &str = "run_id";
/// Span field naming the task.
pub const TASK: &str = "task";
/// Span field naming the server a task runs on.
pub const SERVER: &str = "server";
/// Span field carrying the run's trace id (see [`trace_id`]).
pub const TRACE_ID: &str = "trace_id";

/// The span fields copied onto every line of a run's file, innermost first
/// wins.
const CONTEXT_FIELDS: [&str; 4] = [RUN_ID, TASK, SERVER, TRACE_ID];

/// A run's file in the JSON format: one object a line.
pub const JSON_FILE: &str = "drover.jsonl";
/// A run's file in the text format.
pub const TEXT_FILE: &str = "drover.log";

/// At most this many run files are open at once; past it the least recently
/// written one is closed (and opened again if its run logs once more).
pub const MAX_OPEN_FILES: usize = 64;

/// How `drover serve` logs: the resolved settings, from the server's
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The format of stdout.
    pub format: LogFormat,
    /// The least severe level logged anywhere, unless `RUST_LOG` is set.
    pub level: LogLevel,
    /// The directory holding one directory per run.
    pub logs_dir: PathBuf,
    /// At most this many days a finished run (its journal and directory)
    /// is kept; 0: as long as its workflow's `logging.retention_days`.
    /// Applied by `drover_exec::run::prune`, which the caller schedules.
    pub retention_days: u32,
}

impl LogSettings {
    /// The settings a `logging` block asks for; `dir` is taken as given
    /// (relative to the working directory when it is relative).
    pub fn from_config(config: &LoggingConfig) -> LogSettings {
        LogSettings {
            format: config.format,
            level: config.level,
            logs_dir: PathBuf::from(&config.dir),
            retention_days: config.retention_days,
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `RUST_LOG` does not parse as a filter.
    #[error("RUST_LOG={value:?} is not a log filter: {source}; fix it (e.g. RUST_LOG=info) or unset it")]
    Filter {
        /// What `RUST_LOG` says.
        value: String,
        /// Why it does not parse.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The logs directory cannot be created.
    #[error("cannot create the logs directory {}: {source}", path.display())]
    LogsDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Something already installed a global subscriber.
    #[error("a logger is already installed in this process; call logging::init once, at start: {0}")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
}

/// Keeps the per-run files written; dropping it (at the end of `main`)
/// closes them, and events after that reach stdout only.
#[derive(Debug)]
#[must_use = "dropping the guard stops the per-run log files"]
pub struct LogGuard {
    closed: Arc<AtomicBool>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        lock(&FILES).entries.clear();
    }
}

/// The tracing level of a configured level.
pub fn level_filter(level: LogLevel) -> LevelFilter {
    LevelFilter::from_level(tracing_level(level))
}

fn tracing_level(level: LogLevel) -> Level {
    match level {
        LogLevel::Trace => Level::TRACE,
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Info => Level::INFO,
        LogLevel::Warn => Level::WARN,
        LogLevel::Error => Level::ERROR,
    }
}

/// Install the global subscriber: stdout in `settings.format`, and the
/// per-run files under `settings.logs_dir` (created here). `RUST_LOG`, when
/// set and not blank, replaces `settings.level`. Call once, first thing in
/// `drover serve`, and keep the guard until the process ends.
pub fn init(settings: &LogSettings) -> Result<LogGuard, LogError> {
    fs::create_dir_all(&settings.logs_dir).map_err(|source| LogError::LogsDir {
        path: settings.logs_dir.clone(),
        source,
    })?;
    let rust_log = std::env::var("RUST_LOG").ok();
    let (subscriber, closed) = subscriber(settings, rust_log.as_deref(), io::stdout, io::stdout().is_terminal())?;
    subscriber.try_init().map_err(LogError::AlreadyInstalled)?;
    Ok(LogGuard { closed })
}

/// For `drover run`, whose terminal shows the live view: install a global
/// subscriber writing only the per-run files (each run at its own
/// registered level and format, see [`register_run_in`]), nothing to
/// stdout. `RUST_LOG` is not consulted: a run's `logging.level` decides.
pub fn init_run_files(logs_dir: &Path) -> Result<LogGuard, LogError> {
    let files = RunFileLayer::new(logs_dir.to_path_buf());
    let closed = files.closed.clone();
    let subscriber = tracing_subscriber::registry().with(files.with_filter(layer_filter(None, LogLevel::Trace)?));
    subscriber.try_init().map_err(LogError::AlreadyInstalled)?;
    Ok(LogGuard { closed })
}

/// The subscriber [`init`] installs, writing stdout to `stdout`; also the
/// flag that stops its per-run files.
fn subscriber<W>(
    settings: &LogSettings,
    rust_log: Option<&str>,
    stdout: W,
    ansi: bool,
) -> Result<(impl Subscriber + Send + Sync + 'static, Arc<AtomicBool>), LogError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let files = RunFileLayer::new(settings.logs_dir.clone());
    let closed = files.closed.clone();
    let stdout = match settings.format {
        // The span list rather than the current span: the current one may
        // be a task's, and the run's id is on the span around it.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(stdout)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(stdout)
            .boxed(),
    };
    // Each layer gets its own copy of the filter: an EnvFilter cannot be
    // shared, and per-layer filters are what let context spans through.
    let subscriber = tracing_subscriber::registry()
        .with(stdout.with_filter(layer_filter(rust_log, settings.level)?))
        .with(files.with_filter(layer_filter(rust_log, settings.level)?));
    Ok((subscriber, closed))
}

/// The configured filter, or `RUST_LOG`'s, widened to the context spans.
fn layer_filter<S>(rust_log: Option<&str>, level: LogLevel) -> Result<impl Filter<S> + Send + Sync + 'static, LogError>
where
    S: Subscriber + 'static,
{
    Ok(env_filter(rust_log, level)?.or(ContextSpans))
}

fn env_filter(rust_log: Option<&str>, level: LogLevel) -> Result<EnvFilter, LogError> {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(value) => EnvFilter::builder().parse(value).map_err(|source| LogError::Filter {
            value: value.to_owned(),
            source,
        }),
        None => Ok(EnvFilter::default().add_directive(level_filter(level).into())),
    }
}

/// Enables the spans that carry context fields, at any level; nothing else.
#[derive(Debug, Clone, Copy)]
struct ContextSpans;

fn is_context_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && CONTEXT_FIELDS.iter().any(|f| meta.fields().field(f).is_some())
}

impl<S> Filter<S> for ContextSpans {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        is_context_span(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if is_context_span(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn event_enabled(&self, _: &Event<'_>, _: &Context<'_, S>) -> bool {
        false
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }
}

// ---------------------------------------------------------------------------
// The registry of runs and their open files.

/// A registered run's own logging.
#[derive(Debug, Clone)]
struct RunConfig {
    level: LevelFilter,
    format: LogFormat,
    /// The run's directory, when it is not `<logs_dir>/<run_id>`.
    dir: Option<PathBuf>,
}

/// Runs registered by the orchestrator. Process-wide because the
/// orchestrator registers a run with a free function and the subscriber is
/// global; the lock is held only to copy one small entry.
static RUNS: LazyLock<Mutex<HashMap<String, RunConfig>>> = LazyLock::new(Default::default);

/// The open run files, at most [`MAX_OPEN_FILES`]. The map's lock is held
/// to find or open a file, never while writing to it: each file has its own
/// lock, so runs do not wait for one another's writes, and a line is written
/// whole under its file's lock.
static FILES: LazyLock<Mutex<OpenFiles>> = LazyLock::new(Default::default);

/// Lines that could not be written to a run's file.
static FAILED_WRITES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Default)]
struct OpenFiles {
    entries: HashMap<PathBuf, OpenFile>,
    /// Counts uses, to find the least recently used entry.
    clock: u64,
}

#[derive(Debug)]
struct OpenFile {
    run_id: String,
    file: Arc<Mutex<File>>,
    last_used: u64,
}

/// Set a run's own level and format (its workflow's `logging`), before it
/// starts: its file takes events at `level` and above, as JSON lines in
/// `<logs_dir>/<run_id>/drover.jsonl` or as text in `drover.log`. A run
/// never registered logs JSON at the server's level.
pub fn register_run(run_id: &str, level: LogLevel, format: LogFormat) {
    register(run_id, level, format, None);
}

/// Like [`register_run`], with the run's file in `run_dir` (the directory
/// of the run's task logs, when its workflow's `logging.dir` is not the
/// server's).
pub fn register_run_in(run_id: &str, run_dir: &Path, level: LogLevel, format: LogFormat) {
    register(run_id, level, format, Some(run_dir.to_path_buf()));
}

fn register(run_id: &str, level: LogLevel, format: LogFormat, dir: Option<PathBuf>) {
    let config = RunConfig {
        level: level_filter(level),
        format,
        dir,
    };
    lock(&RUNS).insert(run_id.to_owned(), config);
}

/// Forget a run once it has ended, and close its file. Events still logged
/// in its span afterwards are written as for a run never registered.
pub fn unregister_run(run_id: &str) {
    lock(&RUNS).remove(run_id);
    lock(&FILES).entries.retain(|_, open| open.run_id != run_id);
}

/// How many lines could not be written to a run's file since the process
/// started (a full disk, a run id that cannot name a directory); for the
/// metrics.
pub fn failed_writes() -> u64 {
    FAILED_WRITES.load(Ordering::Relaxed)
}

/// Whether `id` can name a directory under the logs directory: one path
/// component, nothing a reader could misread.
fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent whatever a panicking holder did: every
    // change is one insert or remove.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn append(run_id: &str, path: &Path, line: &[u8]) -> io::Result<()> {
    let file = open_file(run_id, path)?;
    let mut file = lock(&file);
    file.write_all(line)
}

fn open_file(run_id: &str, path: &Path) -> io::Result<Arc<Mutex<File>>> {
    let mut files = lock(&FILES);
    files.clock += 1;
    let now = files.clock;
    if let Some(open) = files.entries.get_mut(path) {
        open.last_used = now;
        return Ok(open.file.clone());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let file = Arc::new(Mutex::new(OpenOptions::new().create(true).append(true).open(path)?));
    while files.entries.len() >= MAX_OPEN_FILES {
        let oldest = files
            .entries
            .iter()
            .min_by_key(|(_, open)| open.last_used)
            .map(|(p, _)| p.clone());
        match oldest {
            // A writer still holding the evicted file finishes its line;
            // the file closes when it lets go.
            Some(p) => files.entries.remove(&p),
            None => break,
        };
    }
    files.entries.insert(
        path.to_path_buf(),
        OpenFile {
            run_id: run_id.to_owned(),
            file: file.clone(),
            last_used: now,
        },
    );
    Ok(file)
}

// ---------------------------------------------------------------------------
// The layer.

/// Appends every event inside a run's span to the run's file: JSON lines
/// with `timestamp` (RFC 3339, UTC, milliseconds), `level`, `target`,
/// `message`, the span fields `run_id`, `task`, `server`, `trace_id`, and
/// the event's own fields (one whose name is taken is written as
/// `field.<name>`); or text lines
/// `2026-11-23T10:00:00.123Z INFO message task=.. key=value`.
///
/// The run's id comes from the innermost span with a `run_id` field, as do
/// the other context fields. [`init`] installs it; tests and tools can
/// compose it with `tracing_subscriber::registry()` themselves.
#[derive(Debug)]
pub struct RunFileLayer {
    logs_dir: PathBuf,
    /// Set by the [`LogGuard`]'s drop; shared because the layer itself is
    /// owned by the global subscriber.
    closed: Arc<AtomicBool>,
}

impl RunFileLayer {
    /// A layer writing the runs that were not registered with a directory
    /// of their own to `<logs_dir>/<run_id>/`.
    pub fn new(logs_dir: impl Into<PathBuf>) -> RunFileLayer {
        RunFileLayer {
            logs_dir: logs_dir.into(),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn file_of(&self, run_id: &str, config: &RunConfig) -> Option<PathBuf> {
        let dir = match &config.dir {
            Some(dir) => dir.clone(),
            None if valid_run_id(run_id) => self.logs_dir.join(run_id),
            None => return None,
        };
        Some(dir.join(match config.format {
            LogFormat::Json => JSON_FILE,
            LogFormat::Text => TEXT_FILE,
        }))
    }
}

impl<S> Layer<S> for RunFileLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !is_context_span(attrs.metadata()) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanContext::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<SpanContext>() {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else { return };
        let mut context = SpanContext::default();
        for span in scope {
            if let Some(fields) = span.extensions().get::<SpanContext>() {
                context.inherit(fields);
            }
        }
        let Some(run_id) = context.run_id.clone() else { return };
        let config = lock(&RUNS).get(&run_id).cloned().unwrap_or(RunConfig {
            level: LevelFilter::TRACE,
            format: LogFormat::Json,
            dir: None,
        });
        let meta = event.metadata();
        if *meta.level() > config.level {
            return;
        }
        let Some(path) = self.file_of(&run_id, &config) else {
            FAILED_WRITES.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let now = SystemTime::now();
        let line = match config.format {
            LogFormat::Json => json_line(now, meta, &context, &fields),
            LogFormat::Text => text_line(now, meta, &context, &fields),
        };
        if append(&run_id, &path, line.as_bytes()).is_err() {
            FAILED_WRITES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The context fields of one span, kept in its extensions.
#[derive(Debug, Clone, Default)]
struct SpanContext {
    run_id: Option<String>,
    task: Option<String>,
    server: Option<String>,
    trace_id: Option<String>,
}

impl SpanContext {
    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        match name {
            RUN_ID => Some(&mut self.run_id),
            TASK => Some(&mut self.task),
            SERVER => Some(&mut self.server),
            TRACE_ID => Some(&mut self.trace_id),
            _ => None,
        }
    }

    fn set(&mut self, name: &str, value: String) {
        if let Some(slot) = self.slot(name) {
            // An empty value (e.g. a task without a server) says nothing.
            *slot = Some(value).filter(|v| !v.is_empty());
        }
    }

    /// Take the fields of an enclosing span that an inner one did not set.
    fn inherit(&mut self, outer: &SpanContext) {
        for (mine, theirs) in [
            (&mut self.run_id, &outer.run_id),
            (&mut self.task, &outer.task),
            (&mut self.server, &outer.server),
            (&mut self.trace_id, &outer.trace_id),
        ] {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        }
    }

    fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (RUN_ID, &self.run_id),
            (TASK, &self.task),
            (SERVER, &self.server),
            (TRACE_ID, &self.trace_id),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }
}

impl Visit for SpanContext {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.slot(field.name()).is_some() {
            self.set(field.name(), format!("{value:?}"));
        }
    }
}

/// An event's message and fields, in the order they were given.
#[derive(Debug, Default)]
struct EventFields {
    message: String,
    fields: Vec<(&'static str, Value)>,
}

impl EventFields {
    fn push(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.fields.push((field.name(), value));
        }
    }
}

impl Visit for EventFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity.
        let v = serde_json::Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.push(field, v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = i64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.push(field, v);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = u64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.push(field, v);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::String(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, Value::String(format!("{value:?}")));
    }
}

/// One JSON object, keys in the order written, each key once.
struct JsonLine {
    out: String,
    keys: Vec<String>,
}

impl JsonLine {
    fn new() -> JsonLine {
        JsonLine {
            out: String::from("{"),
            keys: Vec::new(),
        }
    }

    fn field(&mut self, key: &str, value: &Value) {
        let key = if self.keys.iter().any(|k| k == key) {
            format!("field.{key}")
        } else {
            key.to_owned()
        };
        if !self.keys.is_empty() {
            self.out.push(',');
        }
        // Value's Display is its compact JSON; it cannot fail.
        self.out.push_str(&Value::String(key.clone()).to_string());
        self.out.push(':');
        self.out.push_str(&value.to_string());
        self.keys.push(key);
    }

    fn finish(mut self) -> String {
        self.out.push_str("}\n");
        self.out
    }
}

fn json_line(time: SystemTime, meta: &Metadata<'_>, context: &SpanContext, event: &EventFields) -> String {
    let mut line = JsonLine::new();
    line.field("timestamp", &Value::String(rfc3339_millis(time)));
    line.field("level", &Value::from(meta.level().as_str()));
    line.field("target", &Value::from(meta.target()));
    line.field("message", &Value::from(event.message.as_str()));
    for (key, value) in context.pairs() {
        line.field(key, &Value::from(value));
    }
    for (key, value) in &event.fields {
        line.field(key, value);
    }
    line.finish()
}

fn text_line(time: SystemTime, meta: &Metadata<'_>, context: &SpanContext, event: &EventFields) -> String {
    let mut out = rfc3339_millis(time);
    out.push(' ');
    out.push_str(meta.level().as_str());
    out.push(' ');
    // One event, one line: control characters are escaped.
    for c in event.message.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    // The run's id is the file's directory; the rest says where in the run.
    for (key, value) in context.pairs().filter(|(k, _)| *k != RUN_ID) {
        push_text_pair(&mut out, key, value);
    }
    for (key, value) in &event.fields {
        match value {
            Value::String(s) => push_text_pair(&mut out, key, s),
            other => push_text_pair(&mut out, key, &other.to_string()),
        }
    }
    out.push('\n');
    out
}

/// ` key=value`, the value quoted when it would not read back as one word.
fn push_text_pair(out: &mut String, key: &str, value: &str) {
    out.push(' ');
    out.push_str(key);
    out.push('=');
    if value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=')
    {
        out.push_str(&format!("{value:?}"));
    } else {
        out.push_str(value);
    }
}

/// `time` as RFC 3339 in UTC with milliseconds: `2026-11-23T10:00:00.123Z`.
pub(crate) fn rfc3339_millis(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a civil date (H. Hinnant's algorithm), for days
/// on or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

// ---------------------------------------------------------------------------
// Trace ids and retention.

/// A new random trace id: 128 bits as 32 lowercase hex digits (the W3C
/// trace-context form; never all zeros, which that format reserves).
pub fn trace_id() -> String {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return format!("{id:032x}");
        }
    }
}

/// One structured log line per notable transition of a run (the journal
/// has all), emitted in the caller's span: inside a run's span it goes to
/// the run's file. `operation_of` and `server_of` map task ids.
pub fn log_transition(p: &Progress, operation_of: &HashMap<String, String>, server_of: &HashMap<String, String>) {
    let task = p.node.as_deref().unwrap_or("");
    let server = server_of.get(task).map(String::as_str).unwrap_or("");
    let operation = operation_of.get(task).map(String::as_str).unwrap_or("");
    match &p.event {
        JournalEvent::TaskStarted { attempt, .. } => {
            tracing::debug!(task, server, operation, attempt, "task started")
        }
        JournalEvent::TaskSucceeded { duration_ms, .. } => {
            tracing::info!(task, server, operation, duration_ms, "task succeeded")
        }
        JournalEvent::TaskFailed {
            error,
            will_retry,
            attempt,
            ..
        } => {
            tracing::warn!(task, server, operation, attempt, will_retry, error = %error, "task failed")
        }
        JournalEvent::TaskSkipped { reason } => {
            tracing::info!(task, server, operation, reason = %reason, "task skipped")
        }
        JournalEvent::TaskCancelled { reason } => {
            tracing::info!(task, server, operation, reason = %reason, "task cancelled")
        }
        JournalEvent::RollbackStarted { reason, by_hand } => {
            tracing::warn!(reason = %reason, by_hand, "rollback started")
        }
        JournalEvent::UndoFailed { error, kind } => {
            tracing::warn!(task, server, error = %error, kind = kind.as_str(), "undo failed")
        }
        JournalEvent::RunFinished { status, .. } => tracing::info!(status = status.as_str(), "run finished"),
        JournalEvent::RunPaused => tracing::info!("run paused"),
        JournalEvent::RunUnpaused => tracing::info!("run resumed"),
        JournalEvent::CancelRequested => tracing::info!("cancel requested"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Barrier;

    use tracing::dispatcher::{self, Dispatch};

    type TestResult = anyhow::Result<()>;

    /// A subscriber with only the run-file layer, on `dir`.
    fn files_only(dir: &Path) -> impl Subscriber + Send + Sync + 'static {
        tracing_subscriber::registry().with(RunFileLayer::new(dir))
    }

    fn json_lines(path: &Path) -> anyhow::Result<Vec<serde_json::Map<String, Value>>> {
        let text = fs::read_to_string(path)?;
        text.lines()
            .map(|l| match serde_json::from_str(l)? {
                Value::Object(m) => Ok(m),
                other => anyhow::bail!("not an object: {other}"),
            })
            .collect()
    }

    /// Names every file under `dir`, relative to it.
    fn files_under(dir: &Path) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d)? {
                let p = e?.path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.push(p.strip_prefix(dir)?.display().to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    #[test]
    fn events_in_a_run_span_land_in_its_file_as_json() -> TestResult {
        let dir = tempfile::tempdir()?;
        tracing::subscriber::with_default(files_only(dir.path()), || {
            let run = tracing::info_span!(
                "run",
                run_id = "t-json-1",
                trace_id = "0af7651916cd43dd8448eb211c80319c"
            );
            let _run = run.enter();
            tracing::info!(count = 3, ok = true, ratio = 0.5, "run started: {}", "now");
            let task = tracing::info_span!("task", task = "install/nginx@web-1", server = "web-1");
            let _task = task.enter();
            tracing::warn!(error = %"exit 1", "task \"failed\"\nsecond line");
        });
        let lines = json_lines(&dir.path().join("t-json-1").join(JSON_FILE))?;
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "run started: now");
        assert_eq!(first["run_id"], "t-json-1");
        assert_eq!(first["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(first["count"], 3);
        assert_eq!(first["ok"], true);
        assert_eq!(first["ratio"], 0.5);
        assert!(first["target"].as_str().is_some_and(|t| t.ends_with("logging::tests")));
        assert!(!first.contains_key("task"));
        let ts = first["timestamp"].as_str().unwrap_or_default();
        assert_eq!(ts.len(), "2026-11-23T10:00:00.123Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        let second = &lines[1];
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["message"], "task \"failed\"\nsecond line");
        assert_eq!(second["task"], "install/nginx@web-1");
        assert_eq!(second["server"], "web-1");
        assert_eq!(second["run_id"], "t-json-1");
        assert_eq!(second["error"], "exit 1");
        Ok(())
    }

    #[test]
    fn keys_come_in_order_and_taken_names_are_prefixed() -> TestResult {
        let dir = tempfile::tempdir()?;
        tracing::subscriber::with_default(files_only(dir.path()), || {
            let run = tracing::info_span!("run", run_id = "t-keys-1", server = tracing::field::Empty);
            let _run = run.enter();
            run.record("server", "db-1");
            tracing::info!(level = "mine", server = "web-2", task = "t", "hello");
        });
        let text = fs::read_to_string(dir.path().join("t-keys-1").join(JSON_FILE))?;
        assert!(text.starts_with("{\"timestamp\":"), "{text}");
        let line = &json_lines(&dir.path().join("t-keys-1").join(JSON_FILE))?[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["field.level"], "mine");
        assert_eq!(line["server"], "db-1", "recorded after the span was made");
        assert_eq!(line["field.server"], "web-2");
        assert_eq!(line["task"], "t", "not taken by a span: the event's own");
        Ok(())
    }

    #[test]
    fn events_outside_a_run_create_no_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        tracing::subscriber::with_default(files_only(dir.path()), || {
            tracing::info!("no span");
            let other = tracing::info_span!("http", method = "GET");
            let _other = other.enter();
            tracing::info!(run_id = "t-none-1", "a run id as an event field is not a run's span");
            let task = tracing::info_span!("task", task = "a/b");
            let _task = task.enter();
            tracing::warn!("a task span without a run around it");
        });
        assert!(files_under(dir.path())?.is_empty());
        Ok(())
    }

    #[test]
    fn run_ids_that_cannot_name_a_directory_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let logs = dir.path().join("logs");
        let before = failed_writes();
        tracing::subscriber::with_default(files_only(&logs), || {
            for id in ["../escape", "a/b", "..", ""] {
                let run = tracing::info_span!("run", run_id = id);
                let _run = run.enter();
                tracing::info!("hello");
            }
        });
        assert!(files_under(dir.path())?.is_empty());
        // Three: the empty id counts as no run at all.
        assert!(failed_writes() >= before + 3);
        Ok(())
    }

    #[test]
    fn a_runs_level_is_honoured() -> TestResult {
        let dir = tempfile::tempdir()?;
        register_run("t-level-warn", LogLevel::Warn, LogFormat::Json);
        tracing::subscriber::with_default(files_only(dir.path()), || {
            for id in ["t-level-warn", "t-level-unregistered"] {
                let run = tracing::info_span!("run", run_id = id);
                let _run = run.enter();
                tracing::debug!("debug");
                tracing::info!("info");
                tracing::warn!("warn");
                tracing::error!("error");
            }
        });
        unregister_run("t-level-warn");
        let messages = |id: &str| -> anyhow::Result<Vec<String>> {
            Ok(json_lines(&dir.path().join(id).join(JSON_FILE))?
                .iter()
                .map(|l| l["message"].as_str().unwrap_or_default().to_owned())
                .collect())
        };
        assert_eq!(messages("t-level-warn")?, ["warn", "error"]);
        assert_eq!(messages("t-level-unregistered")?, ["debug", "info", "warn", "error"]);
        Ok(())
    }

    #[test]
    fn a_text_run_writes_plain_lines() -> TestResult {
        let dir = tempfile::tempdir()?;
        register_run("t-text-1", LogLevel::Info, LogFormat::Text);
        tracing::subscriber::with_default(files_only(dir.path()), || {
            let run = tracing::info_span!("run", run_id = "t-text-1", trace_id = "abc");
            let _run = run.enter();
            let task = tracing::info_span!("task", task = "install/a@web-1", server = "web-1");
            let _task = task.enter();
            tracing::info!(attempt = 2, reason = "timed out", empty = "", "task failed\nbadly");
        });
        unregister_run("t-text-1");
        let run_dir = dir.path().join("t-text-1");
        assert_eq!(files_under(&run_dir)?, [TEXT_FILE]);
        let text = fs::read_to_string(run_dir.join(TEXT_FILE))?;
        let (ts, rest) = text.split_once(' ').unwrap_or_default();
        assert_eq!(ts.len(), 24, "{text}");
        assert_eq!(
            rest,
            "INFO task failed\\nbadly task=install/a@web-1 server=web-1 trace_id=abc attempt=2 reason=\"timed out\" empty=\"\"\n"
        );
        Ok(())
    }

    #[test]
    fn a_run_registered_with_its_own_directory_logs_there() -> TestResult {
        let dir = tempfile::tempdir()?;
        let own = dir.path().join("elsewhere").join("t-own-1");
        register_run_in("t-own-1", &own, LogLevel::Info, LogFormat::Json);
        tracing::subscriber::with_default(files_only(&dir.path().join("logs")), || {
            let run = tracing::info_span!("run", run_id = "t-own-1");
            let _run = run.enter();
            tracing::info!("hello");
        });
        unregister_run("t-own-1");
        assert_eq!(files_under(dir.path())?, ["elsewhere/t-own-1/drover.jsonl"]);
        Ok(())
    }

    #[test]
    fn concurrent_writes_produce_whole_lines() -> TestResult {
        const THREADS: usize = 6;
        const EVENTS: usize = 200;
        let dir = tempfile::tempdir()?;
        let dispatch = Dispatch::new(files_only(dir.path()));
        let start = Arc::new(Barrier::new(THREADS));
        let long = "x".repeat(4000);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (dispatch, start, long) = (&dispatch, start.clone(), &long);
                s.spawn(move || {
                    dispatcher::with_default(dispatch, || {
                        start.wait();
                        for i in 0..EVENTS {
                            // Two threads share each run's file.
                            let run = tracing::info_span!("run", run_id = format!("t-conc-{}", t % 3));
                            let _run = run.enter();
                            tracing::info!(thread = t, i, filler = long.as_str(), "line");
                        }
                    })
                });
            }
        });
        let mut total = 0;
        for r in 0..3 {
            let lines = json_lines(&dir.path().join(format!("t-conc-{r}")).join(JSON_FILE))?;
            assert_eq!(lines.len(), 2 * EVENTS);
            assert!(lines.iter().all(|l| l["filler"].as_str() == Some(long.as_str())));
            total += lines.len();
        }
        assert_eq!(total, THREADS * EVENTS);
        Ok(())
    }

    #[test]
    fn open_files_are_bounded_and_reopened() -> TestResult {
        let dir = tempfile::tempdir()?;
        let runs: Vec<String> = (0..MAX_OPEN_FILES + 6).map(|i| format!("t-lru-{i}")).collect();
        tracing::subscriber::with_default(files_only(dir.path()), || {
            for _ in 0..2 {
                for id in &runs {
                    let run = tracing::info_span!("run", run_id = id.as_str());
                    let _run = run.enter();
                    tracing::info!("hello");
                    assert!(lock(&FILES).entries.len() <= MAX_OPEN_FILES);
                }
            }
        });
        for id in &runs {
            assert_eq!(json_lines(&dir.path().join(id).join(JSON_FILE))?.len(), 2, "{id}");
            unregister_run(id);
        }
        let still_open = lock(&FILES)
            .entries
            .values()
            .filter(|o| o.run_id.starts_with("t-lru-"))
            .count();
        assert_eq!(still_open, 0, "unregister_run closes the file");
        Ok(())
    }

    #[test]
    fn the_level_filter_keeps_context_spans_and_honours_rust_log() -> TestResult {
        let dir = tempfile::tempdir()?;
        let stdout = Arc::new(Mutex::new(Vec::<u8>::new()));
        let settings = LogSettings {
            format: LogFormat::Json,
            level: LogLevel::Warn,
            logs_dir: dir.path().to_path_buf(),
            retention_days: 30,
        };
        let writer = {
            let stdout = stdout.clone();
            move || SharedBuf(stdout.clone())
        };
        let (sub, _closed) = subscriber(&settings, None, writer, false)?;
        tracing::subscriber::with_default(sub, || {
            // An info span under level: warn still names the run.
            let run = tracing::info_span!("run", run_id = "t-filter-1", trace_id = "feed");
            let _run = run.enter();
            let task = tracing::debug_span!("task", task = "a/b@web-1");
            let _task = task.enter();
            tracing::info!("dropped");
            tracing::warn!("kept");
        });
        let file = json_lines(&dir.path().join("t-filter-1").join(JSON_FILE))?;
        assert_eq!(file.len(), 1);
        assert_eq!(file[0]["message"], "kept");
        assert_eq!(file[0]["task"], "a/b@web-1");
        let out = String::from_utf8(lock(&stdout).clone())?;
        let lines: Vec<Value> = out.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        assert_eq!(lines.len(), 1, "{out}");
        assert_eq!(lines[0]["message"], "kept");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["spans"][0]["run_id"], "t-filter-1");
        assert_eq!(lines[0]["spans"][0]["trace_id"], "feed");
        assert_eq!(lines[0]["spans"][1]["task"], "a/b@web-1");

        // RUST_LOG wins over the configured level.
        let (sub, _closed) = subscriber(&settings, Some("debug"), io::sink, false)?;
        tracing::subscriber::with_default(sub, || {
            let run = tracing::info_span!("run", run_id = "t-filter-2");
            let _run = run.enter();
            tracing::debug!("debug");
            tracing::trace!("trace");
        });
        assert_eq!(json_lines(&dir.path().join("t-filter-2").join(JSON_FILE))?.len(), 1);

        let bad = subscriber(&settings, Some("=!"), io::sink, false).err();
        assert!(matches!(bad, Some(LogError::Filter { .. })), "{bad:?}");
        Ok(())
    }

    #[test]
    fn text_stdout_shows_the_spans() -> TestResult {
        let dir = tempfile::tempdir()?;
        let stdout = Arc::new(Mutex::new(Vec::<u8>::new()));
        let settings = LogSettings {
            format: LogFormat::Text,
            level: LogLevel::Info,
            logs_dir: dir.path().to_path_buf(),
            retention_days: 30,
        };
        let writer = {
            let stdout = stdout.clone();
            move || SharedBuf(stdout.clone())
        };
        let (sub, _closed) = subscriber(&settings, None, writer, false)?;
        tracing::subscriber::with_default(sub, || {
            let run = tracing::info_span!("run", run_id = "t-textout-1");
            let _run = run.enter();
            tracing::info!(n = 1, "hello");
        });
        let out = String::from_utf8(lock(&stdout).clone())?;
        assert!(out.contains("INFO run{run_id=\"t-textout-1\"}:"), "{out}");
        assert!(out.trim_end().ends_with("hello n=1"), "{out}");
        Ok(())
    }

    #[test]
    fn init_installs_once() -> TestResult {
        let dir = tempfile::tempdir()?;
        let settings = LogSettings {
            format: LogFormat::Json,
            level: LogLevel::Error,
            logs_dir: dir.path().join("logs"),
            retention_days: 30,
        };
        // The only test that installs the global subscriber; the others
        // set theirs per thread.
        let guard = init(&settings)?;
        assert!(settings.logs_dir.is_dir());
        assert!(matches!(init(&settings), Err(LogError::AlreadyInstalled(_))));
        drop(guard);
        Ok(())
    }

    #[derive(Debug)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        let at = |secs: u64, ms: u64| rfc3339_millis(UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_795_428_000, 123), "2026-11-23T10:00:00.123Z");
        assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn trace_ids_are_32_lowercase_hex_digits_and_differ() {
        let (a, b) = (trace_id(), trace_id());
        for id in [&a, &b] {
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
                "{id}"
            );
        }
        assert_ne!(a, b);
    }

    #[test]
    fn level_filters_match_the_model() {
        assert_eq!(level_filter(LogLevel::Warn), LevelFilter::WARN);
        assert!(Level::ERROR <= level_filter(LogLevel::Warn));
        assert!(Level::INFO > level_filter(LogLevel::Warn));
    }
}
