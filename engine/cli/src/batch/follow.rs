//! Following a run's event stream (`/events` or `/logs`) in a task of its
//! own, through the server being killed and restarted: a dropped or refused
//! connection is retried with backoff, resuming after the last event seen,
//! and a run counts as ended only when the API says so.

use std::time::{Duration, Instant};

use drover_server::wire::{JournalEvent, LogEvent, RunStatusView};
use tokio::sync::mpsc;

use super::client::{ApiError, Client, cause};
use crate::sse::{EventStream, SseEvent};

/// Which stream of a run.
#[derive(Debug, Clone)]
pub(super) enum Feed {
    /// Journal transitions (`/events`).
    Transitions,
    /// Task output lines (`/logs`), optionally of one task or server.
    Logs {
        task: Option<String>,
        server: Option<String>,
    },
}

/// What the follower reports.
#[derive(Debug)]
pub(super) enum Step {
    /// A journal transition. Following, a `run_finished` arrives here
    /// only when the run went on afterwards (it was resumed); the final
    /// one ends the stream with [`Step::End`] instead.
    Transition(JournalEvent),
    /// A task's output line.
    Log(LogEvent),
    /// Something to tell the user (the connection was lost, or is back).
    Note(String),
    /// The stream is over: the run ended (its final state), or, when not
    /// following, everything recorded so far was sent (`None`).
    End(Option<Box<RunStatusView>>),
}

/// How long the follower keeps trying after the API went away.
pub(super) const RECONNECT_FOR: Duration = Duration::from_secs(120);
/// First delay between reconnection attempts; it doubles up to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// A followed stream silent this long is presumed dead and reopened (the
/// server sends keep-alive comments far more often; reopening with `after`
/// loses nothing).
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Between reopenings of a stream the server ended while the run goes on
/// (e.g. it is still queued).
const REOPEN_DELAY: Duration = Duration::from_secs(1);

/// Reconnection with backoff: 200 ms doubling to 2 s, for at most
/// [`RECONNECT_FOR`] since the connection was lost.
#[derive(Debug)]
struct Backoff {
    lost_at: Option<Instant>,
    delay: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            lost_at: None,
            delay: RECONNECT_FIRST,
        }
    }

    /// Wait before the next attempt; `Err` when it is time to give up.
    async fn wait(&mut self, e: &ApiError, run: &str, notes: &Notes) -> Result<(), ApiError> {
        let now = Instant::now();
        let lost_at = match self.lost_at {
            Some(t) => t,
            None => {
                notes.say(format!(
                    "lost the connection to the drover API ({e}); reconnecting for up to {}s",
                    RECONNECT_FOR.as_secs()
                ));
                self.lost_at = Some(now);
                now
            }
        };
        if now.duration_since(lost_at) >= RECONNECT_FOR {
            return Err(ApiError::GaveUp {
                detail: e.to_string(),
                run: run.to_string(),
            });
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(RECONNECT_MAX);
        Ok(())
    }

    /// Connected: whether the connection had been lost.
    fn connected(&mut self) -> bool {
        self.delay = RECONNECT_FIRST;
        self.lost_at.take().is_some()
    }
}

/// The follower's channel to its consumer.
struct Notes(mpsc::UnboundedSender<Result<Step, ApiError>>);

impl Notes {
    fn say(&self, text: String) {
        let _ = self.0.send(Ok(Step::Note(text)));
    }

    /// False when the consumer is gone.
    fn send(&self, step: Step) -> bool {
        self.0.send(Ok(step)).is_ok()
    }
}

/// Whether a run in this state may still record events. A run aborted by
/// a server shutdown counts as ended: it resumes only if the server is
/// started again, and `drover batch status` shows when it did.
pub(super) fn run_goes_on(status: &str) -> bool {
    matches!(status, "queued" | "running" | "paused" | "rolling_back")
}

/// Follow a run's stream in a task of its own (so consumers can wait on
/// it and a timer at once); steps arrive on the returned channel, the last
/// being `End` or an error.
pub(super) fn spawn_follow(
    client: Client,
    run: String,
    feed: Feed,
    follow: bool,
    after: Option<i64>,
) -> mpsc::UnboundedReceiver<Result<Step, ApiError>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let notes = Notes(tx);
        if let Err(e) = follow_stream(&client, &run, &feed, follow, after, &notes).await {
            let _ = notes.0.send(Err(e));
        }
    });
    rx
}

async fn follow_stream(
    client: &Client,
    run: &str,
    feed: &Feed,
    follow: bool,
    mut after: Option<i64>,
    notes: &Notes,
) -> Result<(), ApiError> {
    let mut backoff = Backoff::new();
    // Whether a failure to connect means the API went away (wait for it)
    // rather than that it is not there (say so at once). Callers that
    // follow have just talked to it.
    let mut reached = follow;
    loop {
        let resp = match client.stream(run, feed, follow, after).await {
            Ok(r) => r,
            Err(e) if e.transient() && reached => {
                backoff.wait(&e, run, notes).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        reached = true;
        if backoff.connected() {
            notes.say(match after {
                Some(seq) => format!("reconnected to the drover API; continuing after event {seq}"),
                None => "reconnected to the drover API".into(),
            });
        }
        let mut events = EventStream::new(resp.bytes_stream());
        // Why this connection ended: `None` when the server closed it.
        let broke = loop {
            let next = if follow {
                match tokio::time::timeout(IDLE_LIMIT, events.next()).await {
                    Ok(n) => n,
                    Err(_) => break Some(ApiError::Unreachable(format!("no data for {}s", IDLE_LIMIT.as_secs()))),
                }
            } else {
                events.next().await
            };
            let ev = match next {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => break Some(ApiError::Unreachable(cause(&e))),
                None => break None,
            };
            let Some((seq, step)) = decode(&ev)? else { continue };
            if after.is_some_and(|a| seq <= a) {
                // Already seen before a reconnection.
                continue;
            }
            after = Some(seq);
            // Not following, a run_finished is history like any event.
            let finished = follow
                && match &step {
                    Step::Transition(j) => j.event.get("event").and_then(|e| e.as_str()) == Some("run_finished"),
                    _ => false,
                };
            if finished {
                let view = status_retrying(client, run, notes, &mut backoff).await?;
                if !run_goes_on(&view.run.status) {
                    notes.send(Step::End(Some(Box::new(view))));
                    return Ok(());
                }
            }
            if !notes.send(step) {
                return Ok(());
            }
        };
        match broke {
            Some(e) => backoff.wait(&e, run, notes).await?,
            None if !follow => {
                notes.send(Step::End(None));
                return Ok(());
            }
            None => {
                // The server ends a followed stream when the run ends, or
                // when it shuts down.
                let view = status_retrying(client, run, notes, &mut backoff).await?;
                if !run_goes_on(&view.run.status) {
                    notes.send(Step::End(Some(Box::new(view))));
                    return Ok(());
                }
                tokio::time::sleep(REOPEN_DELAY).await;
            }
        }
    }
}

/// An SSE event as a step, with its position; `None` for events of other
/// kinds.
fn decode(ev: &SseEvent) -> Result<Option<(i64, Step)>, ApiError> {
    let bad = |e: serde_json::Error| ApiError::Protocol(format!("a `{}` event that does not parse: {e}", ev.event));
    match ev.event.as_str() {
        "transition" => {
            let j: JournalEvent = serde_json::from_str(&ev.data).map_err(bad)?;
            Ok(Some((j.seq, Step::Transition(j))))
        }
        "log" => {
            let l: LogEvent = serde_json::from_str(&ev.data).map_err(bad)?;
            Ok(Some((l.seq, Step::Log(l))))
        }
        _ => Ok(None),
    }
}

/// The run's status, waiting out a restart of the server.
async fn status_retrying(
    client: &Client,
    run: &str,
    notes: &Notes,
    backoff: &mut Backoff,
) -> Result<RunStatusView, ApiError> {
    loop {
        match client.status(run).await {
            Ok(v) => {
                if backoff.connected() {
                    notes.say("reconnected to the drover API".into());
                }
                return Ok(v);
            }
            Err(e) if e.transient() => backoff.wait(&e, run, notes).await?,
            Err(e) => return Err(e),
        }
    }
}

/// The position of the last journal entry of a run (None: it has none),
/// so a command that continues the run can follow only what comes next.
pub(super) async fn last_seq(client: &Client, run: &str) -> Result<Option<i64>, ApiError> {
    let mut rx = spawn_follow(client.clone(), run.to_string(), Feed::Transitions, false, None);
    let mut last = None;
    while let Some(step) = rx.recv().await {
        match step? {
            Step::Transition(j) => last = Some(j.seq),
            Step::End(_) => break,
            Step::Log(_) | Step::Note(_) => {}
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_and_logs_decode_with_their_position() {
        let t = SseEvent {
            id: Some("4".into()),
            event: "transition".into(),
            data: r#"{"seq":4,"at_ms":0,"node":"create/a","event":{"event":"task_started","attempt":1,"idempotency_key":"k"}}"#.into(),
        };
        let Ok(Some((4, Step::Transition(j)))) = decode(&t) else {
            panic!("not a transition")
        };
        assert_eq!(j.node.as_deref(), Some("create/a"));
        let l = SseEvent {
            id: Some("9".into()),
            event: "log".into(),
            data: r#"{"seq":9,"task":"t","server":null,"stream":"stdout","line":"hi"}"#.into(),
        };
        assert!(matches!(decode(&l), Ok(Some((9, Step::Log(_))))));
        let other = SseEvent {
            id: None,
            event: "message".into(),
            data: "x".into(),
        };
        assert!(matches!(decode(&other), Ok(None)));
    }
}
