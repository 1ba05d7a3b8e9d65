//! Notifications: events (a run ended, a roll halted, drift found, a
//! schedule missed, ...) told to webhooks, Slack and scripts.
//!
//! Layout and protocol:
//! - [`Notifier::emit`] is the one entry point: it picks the targets that
//!   want the event (the workflow's `notifications`, else the server's
//!   default list of `--notifications`), masks the payload with the run's
//!   secrets and journals one outbox row per target in the state store.
//!   It never fails its caller: a store error is logged.
//! - Cooldown (per target, seconds): the first event of a kind opens a
//!   window; it and every repeat of the kind to the same target within
//!   the window are ONE row, sent at the window's end with `count` = the
//!   number of events folded and the payload of the last one. Without a
//!   cooldown each event is sent at once.
//! - [`Notifier::deliver`], a task of the server, sends what is due, all
//!   of a batch at once: 2xx (a script: exit 0) is delivered; 5xx, 408,
//!   429, connection errors, timeouts (a script: non-zero exit, timeout)
//!   are tried again after 1 s, 2 s, 4 s ... (at most 5 min) up to
//!   [`MAX_ATTEMPTS`]; any other answer is a permanent failure. Each
//!   attempt is recorded on the row; rows still queued at a restart are
//!   picked up when the server starts.
//! - `secret:PATH` in a target's url or secret is resolved at sending
//!   time from the run's SOPS secrets (decrypted again, in memory only);
//!   the outbox keeps the target as written. Neither a secret of the run
//!   nor the webhook key is ever in a payload, a log line or an answer.

use std::sync::Arc;
use std::time::Duration;

use drover_core::model::{NotificationDef, NotificationEvent, NotificationKind};
use drover_exec::mask::Masker;
use drover_state::{Attempt, Delivery, DeliveryStatus, NewDelivery, Store};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Attempts made at one delivery before it is given up as failed.
pub const MAX_ATTEMPTS: i64 = 8;

/// How long one attempt may take (an HTTP request, a script).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// The longest wait between two attempts.
const MAX_BACKOFF_MS: i64 = 300_000;

/// The header carrying a webhook's signature: `sha256=<hex HMAC-SHA256 of
/// the exact body>`.
pub const SIGNATURE_HEADER: &str = "X-Drover-Signature";

/// Something that happened, to be told to the targets that want it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// What kind of event.
    pub kind: NotificationEvent,
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// The run it is about, if any.
    pub run_id: Option<String>,
    /// The workflow (or fleet file, schedule) it is about, if any.
    pub workflow: Option<String>,
    /// The run's status, for run events.
    pub status: Option<String>,
    /// One readable sentence (the run's reason, what drifted, ...).
    pub summary: String,
    /// Anything more, as JSON (the event's own fields).
    pub detail: Value,
}

impl Notice {
    /// A notice of `kind` now, saying `summary`.
    pub fn new(kind: NotificationEvent, summary: impl Into<String>) -> Notice {
        Notice {
            kind,
            at_ms: drover_exec::scheduler::now_ms(),
            run_id: None,
            workflow: None,
            status: None,
            summary: summary.into(),
            detail: Value::Null,
        }
    }

    /// The notice of a run that ended with `status` (None when the status
    /// is none a notification is about: aborted, still running).
    pub fn run_ended(run_id: &str, workflow: &str, status: drover_state::RunStatus, reason: &str) -> Option<Notice> {
        use drover_state::RunStatus as S;
        let kind = match status {
            S::Succeeded => NotificationEvent::RunSucceeded,
            S::Failed => NotificationEvent::RunFailed,
            S::RolledBack => NotificationEvent::RunRolledBack,
            S::Cancelled => NotificationEvent::RunCancelled,
            _ => return None,
        };
        Some(Notice {
            run_id: Some(run_id.into()),
            workflow: Some(workflow.into()),
            status: Some(status.as_str().into()),
            ..Notice::new(kind, reason)
        })
    }

    /// The event as sent (before `count` and `target` are added).
    fn payload(&self) -> Value {
        let time = std::time::UNIX_EPOCH + Duration::from_millis(self.at_ms.max(0) as u64);
        json!({
            "event": self.kind.as_str(),
            "time": crate::logging::rfc3339_millis(time),
            "time_ms": self.at_ms,
            "run_id": self.run_id,
            "workflow": self.workflow,
            "status": self.status,
            "summary": self.summary,
            "detail": self.detail,
        })
    }
}

/// Sends notifications: journals them ([`Notifier::emit`]) and delivers
/// them ([`Notifier::deliver`]).
#[derive(Debug)]
pub struct Notifier {
    store: Arc<Store>,
    /// The server-wide targets: for runs whose workflow declares none and
    /// for events of the server itself.
    defaults: Vec<NotificationDef>,
    /// Wakes the delivery task when a row is queued.
    wake: Notify,
    client: reqwest::Client,
}

/// Why the notifier could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The HTTP client could not be built (TLS roots).
    #[error("cannot make the notifications' HTTP client: {0}")]
    Client(String),
}

impl Notifier {
    /// A notifier journaling into `store`, with the server-wide default
    /// targets `defaults` (already validated).
    pub fn new(store: Arc<Store>, defaults: Vec<NotificationDef>) -> Result<Arc<Notifier>, NotifyError> {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            // A redirect is answered as the permanent failure it is: a
            // signed body is not re-sent to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Client(e.to_string()))?;
        Ok(Arc::new(Notifier {
            store,
            defaults,
            wake: Notify::new(),
            client,
        }))
    }

    /// The server-wide default targets.
    pub fn defaults(&self) -> &[NotificationDef] {
        &self.defaults
    }

    /// Queue `notice` for every target of `targets` (empty: the server's
    /// defaults) that wants its kind, with `mask` applied to every string
    /// of the payload. Returns how many targets it was queued (or folded)
    /// for. Never fails: a store error is logged and the notice dropped.
    pub async fn emit(&self, notice: Notice, targets: &[NotificationDef], mask: &Masker) -> usize {
        let targets = if targets.is_empty() {
            &self.defaults[..]
        } else {
            targets
        };
        let mut payload = notice.payload();
        mask_strings(&mut payload, mask);
        let rows: Vec<NewDelivery> = targets
            .iter()
            .filter(|t| t.wants(notice.kind))
            .map(|t| NewDelivery {
                run_id: notice.run_id.clone(),
                target: t.name.clone(),
                target_kind: t.kind.as_str().into(),
                target_def: serde_json::to_value(t).unwrap_or(Value::Null),
                event: notice.kind.as_str().into(),
                payload: payload.clone(),
                at_ms: notice.at_ms,
                cooldown_ms: i64::try_from(t.cooldown.saturating_mul(1000)).unwrap_or(i64::MAX / 2),
            })
            .collect();
        if rows.is_empty() {
            return 0;
        }
        let n = rows.len();
        let store = self.store.clone();
        let kind = notice.kind.as_str();
        let queued = tokio::task::spawn_blocking(move || {
            rows.iter()
                .map(|r| {
                    store
                        .enqueue_delivery(r)
                        .map(|(id, folded)| (r.target.clone(), id, folded))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
        match queued {
            Ok(Ok(rows)) => {
                for (target, id, folded) in rows {
                    tracing::info!(event = kind, target = %target, delivery = id, folded, "notification queued");
                }
            }
            Ok(Err(e)) => tracing::warn!(event = kind, error = %e, "cannot queue a notification; it is dropped"),
            Err(e) => tracing::warn!(event = kind, error = %e, "cannot queue a notification; it is dropped"),
        }
        self.wake.notify_one();
        n
    }

    /// [`Notifier::emit`] to the server-wide targets, for events that are
    /// no run's (a schedule missed, drift found): nothing to mask but the
    /// targets' own secrets, which are never in a payload.
    pub async fn emit_server(&self, notice: Notice) -> usize {
        self.emit(notice, &[], &Masker::none()).await
    }

    /// Deliver queued rows as they fall due, until `stopping` fires. Rows
    /// left queued by an earlier run of the server are due at once.
    pub async fn deliver(self: Arc<Self>, stopping: CancellationToken) {
        loop {
            let now = drover_exec::scheduler::now_ms();
            let store = self.store.clone();
            let due = match tokio::task::spawn_blocking(move || store.due_deliveries(now, 64)).await {
                Ok(Ok(due)) => due,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the notification outbox");
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the notification outbox");
                    Vec::new()
                }
            };
            if !due.is_empty() {
                let attempts = due.iter().map(|d| self.attempt(d));
                let outcomes = tokio::select! {
                    o = futures_util::future::join_all(attempts) => o,
                    _ = stopping.cancelled() => return,
                };
                let store = self.store.clone();
                let ids: Vec<i64> = due.iter().map(|d| d.id).collect();
                let recorded = tokio::task::spawn_blocking(move || {
                    ids.into_iter()
                        .zip(outcomes)
                        .try_for_each(|(id, a)| store.record_attempt(id, a))
                })
                .await;
                if !matches!(recorded, Ok(Ok(()))) {
                    tracing::warn!("cannot record notification attempts; they are tried again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stopping.cancelled() => return,
                    }
                }
                continue;
            }
            let store = self.store.clone();
            let next = tokio::task::spawn_blocking(move || store.next_delivery_at())
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            let wait = next.map_or(Duration::from_secs(60), |at| {
                Duration::from_millis((at - drover_exec::scheduler::now_ms()).clamp(0, 60_000) as u64)
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = stopping.cancelled() => return,
            }
        }
    }

    /// One attempt at `d`: what to record.
    async fn attempt(&self, d: &Delivery) -> Attempt {
        let result = match serde_json::from_value::<NotificationDef>(d.target_def.clone()) {
            Ok(def) => self.send(d, &def).await,
            Err(e) => Err(Failure::Permanent(format!(
                "the target as stored does not decode ({e}); was it written by another version of drover?"
            ))),
        };
        let now = drover_exec::scheduler::now_ms();
        let attempt = match result {
            Ok(()) => Attempt::Delivered { at_ms: now },
            Err(Failure::Permanent(error)) => Attempt::Failed { at_ms: now, error },
            Err(Failure::Transient(error)) if d.attempts + 1 >= MAX_ATTEMPTS => Attempt::Failed {
                at_ms: now,
                error: format!("gave up after {MAX_ATTEMPTS} attempts: {error}"),
            },
            Err(Failure::Transient(error)) => Attempt::Retry {
                next_at_ms: now + backoff_ms(d.attempts + 1),
                error,
            },
        };
        match &attempt {
            Attempt::Delivered { .. } => {
                tracing::info!(delivery = d.id, target = %d.target, event = %d.event, count = d.count, "notification delivered")
            }
            Attempt::Retry { error, next_at_ms } => {
                tracing::warn!(delivery = d.id, target = %d.target, event = %d.event, %error, retry_in_ms = next_at_ms - now, "notification not delivered; trying again")
            }
            Attempt::Failed { error, .. } => {
                tracing::warn!(delivery = d.id, target = %d.target, event = %d.event, %error, "notification failed for good")
            }
        }
        attempt
    }

    /// Send `d` to `def` once.
    async fn send(&self, d: &Delivery, def: &NotificationDef) -> Result<(), Failure> {
        let refs = Refs::new(self.store.clone(), d.run_id.clone());
        let mut body = d.payload.clone();
        if let Value::Object(m) = &mut body {
            m.insert("count".into(), json!(d.count));
            m.insert("target".into(), json!(d.target));
            m.insert("delivery_id".into(), json!(d.id));
        }
        match def.kind {
            NotificationKind::Webhook => {
                let url = refs.resolve(def.url.as_deref(), "url").await?;
                let key = match def.secret.as_deref() {
                    Some(s) => Some(refs.resolve(Some(s), "secret").await?),
                    None => None,
                };
                let bytes = serde_json::to_vec(&body).map_err(|e| Failure::Permanent(e.to_string()))?;
                let mut req = self
                    .client
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("X-Drover-Event", d.event.as_str())
                    .header("X-Drover-Delivery", d.id.to_string());
                if let Some(key) = key {
                    req = req.header(SIGNATURE_HEADER, format!("sha256={}", sign(key.as_bytes(), &bytes)));
                }
                answer(req.body(bytes).send().await)
            }
            NotificationKind::Slack => {
                let url = refs.resolve(def.url.as_deref(), "url").await?;
                let text = slack_text(&body, d.count);
                answer(self.client.post(&url).json(&json!({ "text": text })).send().await)
            }
            NotificationKind::Script => {
                let program = def
                    .script
                    .as_deref()
                    .ok_or_else(|| Failure::Permanent("a script target without `script`".into()))?;
                run_script(program, &body).await
            }
        }
    }
}

/// Why an attempt failed.
enum Failure {
    /// Another attempt may succeed.
    Transient(String),
    /// No attempt will.
    Permanent(String),
}

/// The wait before attempt `attempts + 1`: 1 s, 2 s, 4 s, ... at most 5 min.
fn backoff_ms(attempts: i64) -> i64 {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    1000i64.saturating_mul(1 << exp).min(MAX_BACKOFF_MS)
}

/// Lower-case hex of HMAC-SHA256(`key`, `body`).
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// An HTTP answer as an attempt's outcome.
fn answer(sent: Result<reqwest::Response, reqwest::Error>) -> Result<(), Failure> {
    match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let s = r.status();
            let msg = format!("the target answered HTTP {}", s.as_u16());
            if s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429 {
                Err(Failure::Transient(msg))
            } else {
                Err(Failure::Permanent(msg))
            }
        }
        // Without the URL: it may be a secret.
        Err(e) => Err(Failure::Transient(
            if e.is_timeout() {
                format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
            } else if e.is_connect() {
                "cannot connect to the target".to_string()
            } else {
                "the request failed".to_string()
            }
            .to_string(),
        )),
    }
}

/// A Slack message for `body`.
fn slack_text(body: &Value, count: i64) -> String {
    let s = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
    let event = s("event").replace('_', " ");
    let mut text = match (body.get("run_id").and_then(Value::as_str), s("workflow")) {
        (Some(run), wf) => format!("drover: {event}: run {run} of {wf}"),
        (None, "") => format!("drover: {event}"),
        (None, wf) => format!("drover: {event}: {wf}"),
    };
    if !s("summary").is_empty() {
        text.push_str(" — ");
        text.push_str(s("summary"));
    }
    if count > 1 {
        text.push_str(&format!(" ({count} times within the cooldown; the last shown)"));
    }
    text
}

/// Run `program` with `body` as JSON on stdin, in the environment
/// scripts get (only [`drover_transport::local::INHERITED_ENV`]).
async fn run_script(program: &str, body: &Value) -> Result<(), Failure> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .envs(
            drover_transport::local::INHERITED_ENV
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            return Err(Failure::Permanent(format!("cannot run the script {program}: {e}")));
        }
        Err(e) => return Err(Failure::Transient(format!("cannot run the script {program}: {e}"))),
    };
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        // A script that does not read its stdin is its own business.
        let _ = stdin.write_all(&bytes).await;
        drop(stdin);
    }
    match tokio::time::timeout(ATTEMPT_TIMEOUT, child.wait_with_output()).await {
        Err(_) => Err(Failure::Transient(format!(
            "the script {program} did not end within {} s",
            ATTEMPT_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(Failure::Transient(format!("the script {program}: {e}"))),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String = err
                .trim()
                .chars()
                .rev()
                .take(200)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(Failure::Transient(format!(
                "the script {program} ended with {}: {tail}",
                out.status
            )))
        }
    }
}

/// Resolves `secret:PATH` references of one delivery's target, decrypting
/// the run's secrets at most once.
struct Refs {
    store: Arc<Store>,
    run_id: Option<String>,
    tree: tokio::sync::OnceCell<Result<Value, String>>,
}

impl Refs {
    fn new(store: Arc<Store>, run_id: Option<String>) -> Refs {
        Refs {
            store,
            run_id,
            tree: tokio::sync::OnceCell::new(),
        }
    }

    /// `value` with a `secret:PATH` reference replaced by the secret.
    async fn resolve(&self, value: Option<&str>, field: &str) -> Result<String, Failure> {
        let Some(value) = value else {
            return Err(Failure::Permanent(format!("the target has no {field}")));
        };
        let Some(path) = value.strip_prefix("secret:") else {
            return Ok(value.to_string());
        };
        let Some(run_id) = self.run_id.clone() else {
            return Err(Failure::Permanent(format!(
                "{field} = secret:{path}: the event is no run's, so there are no workflow secrets to read it from; give the value itself in the server's --notifications file"
            )));
        };
        let tree = self
            .tree
            .get_or_init(|| async {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || drover_exec::run::run_secrets(&store, &run_id))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map(|(tree, _)| tree).map_err(|e| e.to_string()))
            })
            .await;
        let tree = tree
            .as_ref()
            .map_err(|e| Failure::Transient(format!("{field} = secret:{path}: the run's secrets: {e}")))?;
        let found = path.split('.').try_fold(tree, |v, k| v.get(k));
        match found {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(Failure::Permanent(format!(
                "{field} = secret:{path}: the workflow's secrets have no text value at {path}"
            ))),
        }
    }
}

/// Replace every secret value in every string of `v`.
fn mask_strings(v: &mut Value, mask: &Masker) {
    if mask.is_empty() {
        return;
    }
    match v {
        Value::String(s) => *s = mask.mask(s),
        Value::Array(a) => a.iter_mut().for_each(|x| mask_strings(x, mask)),
        Value::Object(m) => m.values_mut().for_each(|x| mask_strings(x, mask)),
        _ => {}
    }
}

/// The outbox as the API shows it: never the target's URL or secret.
pub fn delivery_view(d: Delivery) -> crate::wire::NotificationDelivery {
    crate::wire::NotificationDelivery {
        id: d.id,
        run_id: d.run_id,
        target: d.target,
        target_kind: d.target_kind,
        event: d.event,
        count: d.count,
        status: d.status.as_str().into(),
        attempts: d.attempts,
        created_at_ms: d.created_at_ms,
        next_attempt_at_ms: (d.status == DeliveryStatus::Queued).then_some(d.next_attempt_at_ms),
        delivered_at_ms: d.delivered_at_ms,
        last_error: d.last_error,
        payload: d.payload,
    }
}

/// The server-wide targets from `file` (`drover serve --notifications`):
/// JSON, a list of NotificationDef (or `{"notifications": [...]}`),
/// checked as a workflow's are; every problem is listed.
pub fn load_defaults(file: &std::path::Path) -> Result<Vec<NotificationDef>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not JSON ({e}); give a list of NotificationDef", file.display()))?;
    defaults_from_value(file, value)
}

/// The server-wide targets from an evaluated value: a list of
/// NotificationDef, or an object whose `notifications` is one.
pub fn defaults_from_value(file: &std::path::Path, value: Value) -> Result<Vec<NotificationDef>, String> {
    let list = match value {
        Value::Object(mut m) if m.contains_key("notifications") => m.remove("notifications").unwrap_or_default(),
        v => v,
    };
    let defs: Vec<NotificationDef> = serde_path_to_error::deserialize(list)
        .map_err(|e| format!("{}: at {}: {}", file.display(), e.path(), e.inner()))?;
    let diags = drover_core::validate::validate_notifications(file, "notifications", &defs);
    if diags.is_empty() {
        Ok(defs)
    } else {
        Err(diags
            .iter()
            .map(|d| format!("{}: {}: {}", file.display(), d.field, d.message))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_halted_roll_is_found_in_the_runs_reason() {
        // The scheduler's wording (exec/src/scheduler/mod.rs, check_rolling
        // and the run's final reason).
        let reason = "rolling update of deploy halted: 2 of 4 servers failed (50%), more than the 1 tolerated \
                      (threshold 25%); 2 task(s) failed: deploy.a@h-1, deploy.a@h-2";
        assert_eq!(
            halted_roll(reason).as_deref(),
            Some(
                "rolling update of deploy halted: 2 of 4 servers failed (50%), more than the 1 tolerated (threshold 25%)"
            )
        );
        assert_eq!(halted_roll("1 task(s) failed: install.a@h-1"), None);
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let waits: Vec<i64> = (1..=10).map(backoff_ms).collect();
        assert_eq!(
            waits,
            [1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 300000]
        );
    }

    #[test]
    fn the_signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_run_notice_masks_secrets_in_every_string() {
        let n = Notice::run_ended(
            "r1",
            "deploy",
            drover_state::RunStatus::Failed,
            "task failed: token hunter2x leaked",
        )
        .expect("a failed run is notified");
        let mut p = n.payload();
        mask_strings(&mut p, &Masker::new(["hunter2x"]));
        assert_eq!(p["event"], "run_failed");
        assert_eq!(p["summary"], "task failed: token **** leaked");
        assert!(Notice::run_ended("r1", "deploy", drover_state::RunStatus::Aborted, "").is_none());
    }
}

impl Notifier {
    /// Tell the targets (the workflow's `targets`, else the server's)
    /// that run `run_id` ended with `status` for `reason`; a roll that
    /// halted in it (the reason says so) is also told as
    /// `rolling_halted`. Payloads are masked with the run's secrets.
    pub async fn run_ended(
        &self,
        run_id: &str,
        workflow: &str,
        status: drover_state::RunStatus,
        reason: &str,
        targets: &[NotificationDef],
    ) {
        let mut notices: Vec<Notice> = Notice::run_ended(run_id, workflow, status, reason)
            .into_iter()
            .collect();
        if let Some(halted) = halted_roll(reason) {
            notices.push(Notice {
                run_id: Some(run_id.into()),
                workflow: Some(workflow.into()),
                status: Some(status.as_str().into()),
                ..Notice::new(NotificationEvent::RollingHalted, halted)
            });
        }
        let effective = if targets.is_empty() {
            &self.defaults[..]
        } else {
            targets
        };
        if !notices.iter().any(|n| effective.iter().any(|t| t.wants(n.kind))) {
            return;
        }
        // The journal's reasons are masked already; masking again also
        // covers whatever a future notice carries.
        let (store, id) = (self.store.clone(), run_id.to_string());
        let mask = match tokio::task::spawn_blocking(move || drover_exec::run::run_secrets(&store, &id)).await {
            Ok(Ok((_, mask))) => mask,
            Ok(Err(e)) => {
                tracing::warn!(run_id, error = %e, "the run's secrets cannot be read to mask notifications; the journal's reasons are masked already");
                Masker::none()
            }
            Err(e) => {
                tracing::warn!(run_id, error = %e, "the run's secrets cannot be read to mask notifications");
                Masker::none()
            }
        };
        for n in notices {
            self.emit(n, targets, &mask).await;
        }
    }
}

/// The sentence of a run's reason saying a rolling operation halted
/// (the scheduler puts it first: "rolling update of OP halted: ... (threshold N%)").
fn halted_roll(reason: &str) -> Option<String> {
    let start = reason.find("rolling update of ")?;
    let rest = &reason[start..];
    if !rest.contains(" halted: ") {
        return None;
    }
    // The sentence ends with "(threshold N%)"; its own "(50%)" comes first.
    let end = rest
        .find("(threshold ")
        .and_then(|t| rest[t..].find(')').map(|i| t + i + 1))
        .unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// The notification outbox, newest first: what was (or will be) told to
/// which target about which run, with every attempt's outcome. Operator
/// role. Targets' URLs and secrets are never shown.
#[utoipa::path(
    get, path = "/notifications", params(crate::wire::NotificationParams),
    responses(
        (status = 200, body = crate::wire::NotificationList),
        (status = 400, description = "Bad filter", body = crate::wire::ApiErrorBody),
        (status = 401, body = crate::wire::ApiErrorBody),
        (status = 403, description = "Not an operator or admin token", body = crate::wire::ApiErrorBody),
    )
)]
pub async fn list(
    axum::extract::State(orch): axum::extract::State<Arc<crate::orchestrator::Orchestrator>>,
    crate::error::ApiQuery(q): crate::error::ApiQuery<crate::wire::NotificationParams>,
) -> Result<axum::Json<crate::wire::NotificationList>, crate::error::ApiError> {
    use crate::error::ApiError;
    if q.limit == Some(0) {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            DeliveryStatus::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("status {s:?} is none of queued, delivered, failed")))?,
        ),
    };
    let store = orch.store().clone();
    let limit = i64::from(q.limit.unwrap_or(1000));
    let rows = tokio::task::spawn_blocking(move || store.deliveries(q.run_id.as_deref(), status, limit))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(axum::Json(crate::wire::NotificationList {
        deliveries: rows.into_iter().map(delivery_view).collect(),
    }))
}

impl Notifier {
    /// [`Notifier::run_ended`] for a run that ended without executing (a
    /// queued or interrupted run cancelled, a queued run that could not
    /// start): its workflow's name and targets are read from its recorded
    /// inputs.
    pub async fn run_ended_unstarted(&self, run_id: &str, status: drover_state::RunStatus, reason: &str) {
        let (store, id) = (self.store.clone(), run_id.to_string());
        let record = match tokio::task::spawn_blocking(move || store.run(&id)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(run_id, error = %e, "cannot read the run to notify its end");
                return;
            }
            Err(e) => {
                tracing::warn!(run_id, error = %e, "cannot read the run to notify its end");
                return;
            }
        };
        let targets: Vec<NotificationDef> = record
            .inputs
            .pointer("/source/workflow/notifications")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        self.run_ended(run_id, &record.workflow, status, reason, &targets).await;
    }
}
