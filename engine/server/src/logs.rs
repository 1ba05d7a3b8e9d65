//! A run's output stream: every output line of its tasks, numbered, kept
//! in `<run logs>/stream.jsonl` (one [`LogEvent`] per line) so a client can
//! resume from an event id, also after a restart of the server. Lines are
//! masked before they get here (the transport masks secrets).
//!
//! On a shared (PostgreSQL) store the stream is kept in the database
//! instead, in chunks written every 200 ms, so every instance can stream
//! any run's output and numbering goes on where another instance stopped.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::sync::Arc;

use drover_core::Plan;
use drover_exec::runner::TaskLine;
use drover_state::{LogChunk, Store};
use drover_transport::Stream;
use tokio::sync::broadcast;

use crate::wire::LogEvent;

/// The file of a run's output stream.
pub fn stream_file(logs_dir: &Path) -> PathBuf {
    logs_dir.join("stream.jsonl")
}

/// Writes a run's output stream and tells followers when it grows.
pub struct LogHub {
    path: PathBuf,
    state: Mutex<HubState>,
    server_of: HashMap<String, String>,
    grew: broadcast::Sender<()>,
    /// On a shared store: where the lines go instead of the file.
    shared: Option<Arc<Shared>>,
}

/// Lines on their way to a shared store.
struct Shared {
    store: Arc<Store>,
    run_id: String,
    /// Lines not written yet: the first one's number, and the lines.
    buf: Mutex<(i64, String)>,
    /// Chunks are written one at a time, in order.
    writing: tokio::sync::Mutex<()>,
    done: tokio_util::sync::CancellationToken,
}

impl Shared {
    async fn flush(self: &Arc<Self>) {
        let _one = self.writing.lock().await;
        let (first, body) = {
            let mut b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
            if b.1.is_empty() {
                return;
            }
            let first = b.0;
            let body = std::mem::take(&mut b.1);
            let n = body.bytes().filter(|&c| c == b'\n').count() as i64;
            b.0 = first + n;
            (first, body)
        };
        let n = body.bytes().filter(|&c| c == b'\n').count() as i64;
        let chunk = LogChunk {
            first_seq: first,
            last_seq: first + n - 1,
            body,
        };
        let this = self.clone();
        let written = tokio::task::spawn_blocking(move || this.store.append_log_chunk(&this.run_id, &chunk)).await;
        if let Ok(Err(e)) = written {
            tracing::warn!(error = %e, "cannot store a chunk of the run's output stream");
        }
    }
}

impl std::fmt::Debug for LogHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHub")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

struct HubState {
    file: Option<File>,
    seq: i64,
}

impl LogHub {
    /// The stream of the run logging into `logs_dir`; numbering goes on
    /// from what an earlier server process wrote.
    pub fn open(logs_dir: &Path, plan: &Plan) -> LogHub {
        LogHub::open_in(logs_dir, plan, None)
    }

    /// [`LogHub::open`]; on a shared store (`store` with the run's id)
    /// the stream is kept in the database. Blocking (it reads where the
    /// stream stands); call from within a runtime, which flushes it.
    pub fn open_in(logs_dir: &Path, plan: &Plan, store: Option<(Arc<Store>, &str)>) -> LogHub {
        let path = stream_file(logs_dir);
        let (seq, file, shared) = match store.filter(|(s, _)| s.is_shared()) {
            Some((store, run_id)) => {
                let seq = store.last_log_seq(run_id).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read where the run's output stream stands");
                    0
                });
                let shared = Arc::new(Shared {
                    store,
                    run_id: run_id.to_string(),
                    buf: Mutex::new((seq + 1, String::new())),
                    writing: tokio::sync::Mutex::new(()),
                    done: tokio_util::sync::CancellationToken::new(),
                });
                let flusher = shared.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => flusher.flush().await,
                            _ = flusher.done.cancelled() => return,
                        }
                    }
                });
                (seq, None, Some(shared))
            }
            None => {
                let seq = File::open(&path)
                    .map(|f| BufReader::new(f).lines().map_while(Result::ok).count() as i64)
                    .unwrap_or(0);
                let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
                if let Err(e) = &file {
                    tracing::warn!(file = %path.display(), error = %e, "cannot write the run's output stream");
                }
                (seq, file.ok(), None)
            }
        };
        let server_of = plan
            .graph
            .node_weights()
            .filter_map(|n| n.task().and_then(|t| t.server.clone().map(|s| (t.id.clone(), s))))
            .collect();
        let (grew, _) = broadcast::channel(16);
        LogHub {
            path,
            state: Mutex::new(HubState { file, seq }),
            server_of,
            grew,
            shared,
        }
    }

    /// Write what is buffered (a shared store's last chunk); the run is
    /// over.
    pub async fn finish(&self) {
        if let Some(s) = &self.shared {
            s.done.cancel();
            s.flush().await;
        }
    }

    /// Append a line.
    pub fn push(&self, l: &TaskLine) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.seq += 1;
        let ev = LogEvent {
            seq: st.seq,
            task: l.task.clone(),
            server: self.server_of.get(&l.task).cloned(),
            stream: match l.line.stream {
                Stream::Stdout => "stdout".into(),
                Stream::Stderr => "stderr".into(),
            },
            line: l.line.line.clone(),
        };
        if let (Some(shared), Ok(mut text)) = (&self.shared, serde_json::to_string(&ev)) {
            text.push('\n');
            shared.buf.lock().unwrap_or_else(|p| p.into_inner()).1.push_str(&text);
        } else if let (Some(f), Ok(mut text)) = (st.file.as_mut(), serde_json::to_string(&ev)) {
            text.push('\n');
            if let Err(e) = f.write_all(text.as_bytes()) {
                tracing::warn!(error = %e, "cannot append to the run's output stream");
            }
        }
        drop(st);
        let _ = self.grew.send(());
    }

    /// Woken when lines are added.
    pub fn subscribe(&self) -> broadcast::Receiver<()> {
        self.grew.subscribe()
    }
}

/// Reads a stream file incrementally: each call returns the whole lines
/// added since the last one.
#[derive(Debug)]
pub struct StreamReader {
    path: PathBuf,
    file: Option<BufReader<File>>,
    partial: String,
    /// Whether the last read reached the end of what is written.
    at_end: bool,
}

impl StreamReader {
    /// A reader of `path` (which may not exist yet).
    pub fn new(path: PathBuf) -> StreamReader {
        StreamReader {
            path,
            file: None,
            partial: String::new(),
            at_end: false,
        }
    }

    /// Whether the last [`StreamReader::read_new`] read everything written
    /// so far (else it stopped at its limit and more is there to read).
    pub fn at_end(&self) -> bool {
        self.at_end
    }

    /// New complete lines, parsed, at most `limit` of them; unparsable
    /// lines are skipped (and count against the limit).
    pub fn read_new(&mut self, limit: usize) -> Vec<LogEvent> {
        self.at_end = true;
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(BufReader::new(f)),
                Err(_) => return Vec::new(),
            }
        }
        let mut out = Vec::new();
        let Some(r) = self.file.as_mut() else { return out };
        for _ in 0..limit {
            let mut buf = String::new();
            match r.read_line(&mut buf) {
                Ok(0) => return out,
                Ok(_) => {
                    if !buf.ends_with('\n') {
                        // Half a line: the writer is mid-write.
                        self.partial.push_str(&buf);
                        return out;
                    }
                    let line = if self.partial.is_empty() {
                        buf
                    } else {
                        std::mem::take(&mut self.partial) + &buf
                    };
                    if let Ok(ev) = serde_json::from_str::<LogEvent>(line.trim_end()) {
                        out.push(ev);
                    }
                }
                Err(_) => {
                    // Not UTF-8 or unreadable: skip to the end of what is there.
                    let _ = r.seek(SeekFrom::End(0));
                    return out;
                }
            }
        }
        // The limit was reached before the end.
        self.at_end = false;
        out
    }
}
