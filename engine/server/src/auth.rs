//! Who may call the API, and as whom.
//!
//! Every endpoint but `/healthz` needs `Authorization: Bearer <token>`,
//! on loopback too: anyone who can reach the port could otherwise submit
//! a workflow, and a workflow's scripts run on the servers it names.
//!
//! - **The server's own admin token** (`local-admin`): the token file
//!   (`--token-file`, default `api-token` next to the state database),
//!   generated on first start with mode 0600 and read at every start only
//!   if it is still the server user's alone (owner and mode checked);
//!   `drover batch` and `drover token` on the same machine find it there.
//!   `DROVER_TOKEN` in the server's environment replaces it (`env-admin`).
//! - **Named tokens** with a role ([`Role`]: viewer < operator < admin),
//!   made and revoked over the API by an admin. The store keeps their
//!   SHA-256 only; the token is shown once, to whoever created it.
//! - **The metrics token** (`--metrics-token-file` or
//!   `DROVER_METRICS_TOKEN`) opens `/metrics` and nothing else.
//! - **`--no-auth`**: no token is asked for; allowed on loopback only, and
//!   every action is recorded as [`ANONYMOUS`].
//!
//! What each route needs is one table ([`required_role`]); the middleware
//! ([`check`]) puts the [`Caller`] in the request for the handlers, which
//! record operator actions under the caller's name. A presented token is
//! hashed and compared, in constant time, with every known hash; the known
//! tokens are kept in memory, loaded from the store at start and changed
//! only through this module (the server owns its store), so a revoked
//! token stops working before the revocation is answered. Tokens are
//! never logged, and their `Debug` shows none.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use drover_state::{AuditRecord, Role, StateError, Store, TokenHash, TokenRecord};

use crate::error::ApiError;

/// The actor recorded for every action of a server started with
/// `--no-auth`.
pub const ANONYMOUS: &str = "anonymous (--no-auth)";
/// The name of the token from the token file.
pub const FILE_ADMIN: &str = "local-admin";
/// The name of the token from `DROVER_TOKEN`.
pub const ENV_ADMIN: &str = "env-admin";
/// The name under which the metrics token reads /metrics.
const METRICS: &str = "metrics";
/// Names no created token may take.
const RESERVED: [&str; 4] = [FILE_ADMIN, ENV_ADMIN, METRICS, "anonymous"];

/// How often, at most, a token's last use is written to the store (the
/// API shows the exact time, kept in memory).
const TOUCH_EVERY_MS: i64 = 60_000;

/// Why authentication could not be set up: the server does not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A token file cannot be read or written.
    #[error("token file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A token file is not the server user's alone, or is empty.
    #[error("token file {path}: {problem}")]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// `--no-auth` on an address other machines can reach.
    #[error(
        "--no-auth is allowed only on a loopback address, and {listen} is not one: anyone who can reach it could run \
         scripts on your servers; listen on 127.0.0.1 (or ::1), or drop --no-auth"
    )]
    NoAuthBeyondLoopback {
        /// The address asked for.
        listen: std::net::SocketAddr,
    },
    /// This process's user cannot be told.
    #[error("cannot tell which user this server runs as (from /proc/self/status): {0}")]
    WhoAmI(String),
    /// The named tokens cannot be read from the state store.
    #[error("cannot read the API tokens from the state store: {0}")]
    Store(#[from] StateError),
}

/// Who made a request, as the handlers see it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name (what the audit trail records).
    pub name: Arc<str>,
    /// What it may do.
    pub role: Role,
}

impl Caller {
    /// Whether the caller's role includes `need`.
    pub fn may(&self, need: Role) -> bool {
        self.role >= need
    }

    /// The 403 for a caller whose role does not include `need`, saying
    /// what `what` needed.
    pub fn forbidden(&self, need: Role, what: &str) -> ApiError {
        ApiError::forbidden(format!(
            "{what} needs the {need} role; the token {:?} has the {} role (an admin can create a token with `drover \
             token create NAME --role {need}`)",
            &*self.name, self.role
        ))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a handler that needs the caller runs without the auth middleware"))
    }
}

/// Where a known token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The token file.
    File,
    /// `DROVER_TOKEN`.
    Env,
    /// Created over the API (in the state store).
    Store,
}

impl Source {
    /// As the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "token_file",
            Source::Env => "env",
            Source::Store => "store",
        }
    }
}

/// A token that opens the API.
#[derive(Debug)]
struct Known {
    name: Arc<str>,
    role: Role,
    hash: TokenHash,
    source: Source,
    /// Last accepted (ms since the epoch; 0: not since start, unless the
    /// store says otherwise).
    last_used: AtomicI64,
    /// The last use written to the store, so it is written about once a
    /// minute rather than per request.
    persisted: AtomicI64,
}

/// One token as listed (never its hash).
#[derive(Debug, Clone)]
pub struct TokenView {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Where it came from.
    pub source: Source,
    /// Created (store tokens).
    pub created_at_ms: Option<i64>,
    /// Created by (store tokens).
    pub created_by: Option<String>,
    /// Last accepted.
    pub last_used_ms: Option<i64>,
    /// Revoked.
    pub revoked_at_ms: Option<i64>,
}

/// Who may call the API. Cheap to clone (shared).
#[derive(Clone)]
pub struct Auth(Arc<Inner>);

struct Inner {
    /// `--no-auth`: every request is let in as [`ANONYMOUS`].
    open: bool,
    store: Arc<Store>,
    /// The server's own admin token (file or DROVER_TOKEN), then the live
    /// named tokens. A lock rather than a map: the list is short, and every
    /// entry is compared for each request anyway (constant time).
    tokens: RwLock<Vec<Arc<Known>>>,
    metrics: Option<TokenHash>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a token, nor a hash.
        f.debug_struct("Auth")
            .field("required", &!self.0.open)
            .field("tokens", &self.known().len())
            .field("metrics_token", &self.0.metrics.is_some())
            .finish()
    }
}

/// Who a presented token is.
enum Identity {
    Token(Arc<Known>),
    Metrics,
}

impl Auth {
    /// Set up authentication as `config` asks: refuse `--no-auth` beyond
    /// loopback, read (or generate) the admin token, read the metrics
    /// token, load the named tokens from `store`.
    pub fn start(config: &crate::Config, store: Arc<Store>) -> Result<Auth, AuthError> {
        if config.no_auth {
            if !crate::is_loopback(&config.listen) {
                return Err(AuthError::NoAuthBeyondLoopback { listen: config.listen });
            }
            tracing::warn!(
                listen = %config.listen,
                "--no-auth: the API asks for no token; anyone who can connect to this port (any local user, any \
                 local process) can submit workflows, whose scripts run on the servers they name"
            );
            return Ok(Auth(Arc::new(Inner {
                open: true,
                store,
                tokens: RwLock::new(Vec::new()),
                metrics: None,
            })));
        }
        let (admin, source) = match config.token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => (t.to_string(), Source::Env),
            None => (load_or_create(&config.token_file)?, Source::File),
        };
        let metrics = match (&config.metrics_token_file, config.metrics_token.as_deref()) {
            (Some(file), _) => Some(read_token_file(file, "the metrics token file")?),
            (None, Some(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => None,
        };
        let mut tokens = vec![Arc::new(Known {
            name: match source {
                Source::Env => ENV_ADMIN,
                _ => FILE_ADMIN,
            }
            .into(),
            role: Role::Admin,
            hash: TokenHash::of(&admin),
            source,
            last_used: AtomicI64::new(0),
            persisted: AtomicI64::new(0),
        })];
        for t in store.tokens()? {
            if t.revoked_at_ms.is_none() {
                tokens.push(Arc::new(known(&t)));
            }
        }
        tracing::info!(named_tokens = tokens.len() - 1, admin = %tokens[0].name, "API tokens loaded");
        Ok(Auth(Arc::new(Inner {
            open: false,
            store,
            tokens: RwLock::new(tokens),
            metrics: metrics.map(|m| TokenHash::of(&m)),
        })))
    }

    /// Whether a token is asked for (false only with `--no-auth`).
    pub fn required(&self) -> bool {
        !self.0.open
    }

    fn known(&self) -> Vec<Arc<Known>> {
        self.0.tokens.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The token `presented` is, if any. Every known hash is compared,
    /// each in constant time, so the time taken does not say which
    /// matched or how closely.
    fn identify(&self, presented: &str) -> Option<Identity> {
        let hash = TokenHash::of(presented);
        let mut found = None;
        for k in self.0.tokens.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if k.hash.matches(&hash) {
                found = Some(k.clone());
            }
        }
        let metrics = self.0.metrics.as_ref().is_some_and(|m| m.matches(&hash));
        match (found, metrics) {
            (Some(k), _) => Some(Identity::Token(k)),
            (None, true) => Some(Identity::Metrics),
            (None, false) => None,
        }
    }

    /// Note a token's use; about once a minute, in the store too (off the
    /// request's way).
    fn touch(&self, k: &Arc<Known>) {
        let now = drover_exec::scheduler::now_ms();
        k.last_used.fetch_max(now, Ordering::Relaxed);
        if k.source != Source::Store {
            return;
        }
        let last = k.persisted.load(Ordering::Relaxed);
        if now - last < TOUCH_EVERY_MS
            || k.persisted
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (store, name) = (self.0.store.clone(), k.name.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.touch_token(&name, now) {
                tracing::warn!(token = %name, error = %e, "cannot record a token's last use");
            }
        });
    }

    /// Every token: the server's own, then the named ones (revoked ones
    /// too), with their last use. Blocking (reads the store).
    pub fn list(&self) -> Result<Vec<TokenView>, ApiError> {
        let known = self.known();
        let last_used = |name: &str| {
            known
                .iter()
                .find(|k| &*k.name == name)
                .map(|k| k.last_used.load(Ordering::Relaxed))
                .filter(|t| *t > 0)
        };
        let mut out: Vec<TokenView> = known
            .iter()
            .filter(|k| k.source != Source::Store)
            .map(|k| TokenView {
                name: k.name.to_string(),
                role: k.role,
                source: k.source,
                created_at_ms: None,
                created_by: None,
                last_used_ms: last_used(&k.name),
                revoked_at_ms: None,
            })
            .collect();
        for t in self.0.store.tokens()? {
            out.push(TokenView {
                last_used_ms: last_used(&t.name).max(t.last_used_ms),
                name: t.name,
                role: t.role,
                source: Source::Store,
                created_at_ms: Some(t.created_at_ms),
                created_by: Some(t.created_by),
                revoked_at_ms: t.revoked_at_ms,
            });
        }
        Ok(out)
    }

    /// Make a token `name` with `role` for `by`, recording `audit` with it;
    /// the token (shown once) and its record. Blocking (writes the store).
    pub fn create(&self, name: &str, role: Role, audit: &AuditRecord) -> Result<(String, TokenRecord), ApiError> {
        if self.0.open {
            return Err(ApiError::conflict(
                "this server runs with --no-auth and checks no token: a token made now would open nothing; restart \
                 it without --no-auth first",
            ));
        }
        check_name(name)?;
        let token = random_token();
        let record = TokenRecord {
            name: name.to_string(),
            role,
            hash: TokenHash::of(&token),
            created_at_ms: audit.at_ms,
            created_by: audit.actor.clone(),
            last_used_ms: None,
            revoked_at_ms: None,
        };
        // Durable first: a token the store does not know would not survive
        // a restart.
        self.0.store.create_token(&record, audit).map_err(state_error)?;
        self.0
            .tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::new(known(&record)));
        tracing::info!(token = %name, role = %role, by = %audit.actor, "API token created");
        Ok((token, record))
    }

    /// Revoke the token `name`, recording `audit` with it; it opens
    /// nothing from before this returns. Blocking (writes the store).
    pub fn revoke(&self, name: &str, audit: &AuditRecord) -> Result<TokenRecord, ApiError> {
        if [FILE_ADMIN, ENV_ADMIN].contains(&name) {
            return Err(ApiError::conflict(format!(
                "{name:?} is the server's own admin token ({}): it is not revoked over the API; replace it there and \
                 restart the server",
                if name == ENV_ADMIN {
                    "DROVER_TOKEN in its environment"
                } else {
                    "its token file: delete the file, and a new token is generated at the next start"
                }
            )));
        }
        // Out of the cache first: from now on it opens nothing, even while
        // the revocation is being written.
        let removed: Vec<Arc<Known>> = {
            let mut tokens = self.0.tokens.write().unwrap_or_else(|p| p.into_inner());
            let (gone, kept): (Vec<_>, Vec<_>) = tokens.drain(..).partition(|k| &*k.name == name);
            *tokens = kept;
            gone
        };
        match self.0.store.revoke_token(name, audit.at_ms, audit) {
            Ok(t) => {
                tracing::info!(token = %name, by = %audit.actor, "API token revoked");
                Ok(t)
            }
            Err(e) => {
                // Not revoked after all (the store failed): it stays valid,
                // as the store says.
                if !matches!(e, StateError::UnknownToken(_) | StateError::TokenRevoked { .. }) {
                    self.0.tokens.write().unwrap_or_else(|p| p.into_inner()).extend(removed);
                }
                Err(state_error(e))
            }
        }
    }
}

fn known(t: &TokenRecord) -> Known {
    let last = t.last_used_ms.unwrap_or(0);
    Known {
        name: t.name.as_str().into(),
        role: t.role,
        hash: t.hash.clone(),
        source: Source::Store,
        last_used: AtomicI64::new(last),
        persisted: AtomicI64::new(last),
    }
}

fn state_error(e: StateError) -> ApiError {
    match e {
        StateError::TokenExists(_) | StateError::TokenRevoked { .. } => ApiError::conflict(e.to_string()),
        StateError::UnknownToken(_) => ApiError::not_found(e.to_string()),
        other => other.into(),
    }
}

/// The pattern of a token's name (documented in the API's schema too).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";

/// A token name: 1 to 64 of letters, digits, `.`, `_`, `-`, starting with
/// a letter or digit; not one of the server's own names.
fn check_name(name: &str) -> Result<(), ApiError> {
    let valid = name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(ApiError::bad_request(format!(
            "token name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )));
    }
    if RESERVED.contains(&name) {
        return Err(ApiError::conflict(format!(
            "the token name {name:?} is the server's own; choose another"
        )));
    }
    Ok(())
}

/// What a route needs, by method and route (as routed: `/workflows/{id}/pause`).
/// Reads need `viewer`; steering runs and submitting `operator` (a
/// submission by path needs `admin`: checked by its handler, which sees
/// the body); tokens and the audit trail `admin`; anything else that is
/// not a read needs `admin`, so a route added later is closed until it is
/// given its place here.
pub fn required_role(method: &Method, route: Option<&str>) -> Role {
    match (method, route) {
        (_, Some("/tokens" | "/tokens/{name}" | "/audit")) => Role::Admin,
        // A snapshot's contents are files of the servers: not for viewers.
        (&Method::GET | &Method::HEAD, Some("/fleet/snapshots/{id}")) => Role::Operator,
        // What was told to whom about which run: operators and admins.
        (&Method::GET | &Method::HEAD, Some("/notifications")) => Role::Operator,
        (&Method::GET | &Method::HEAD, _) => Role::Viewer,
        // Selecting reads a fleet file (a path still needs admin: checked
        // by the handler, which sees the body).
        (&Method::POST, Some("/fleet/select")) => Role::Viewer,
        (&Method::POST, Some("/fleet/exec" | "/fleet/snapshots" | "/fleet/drift")) => Role::Operator,
        // Managing schedules (a path target still needs admin: checked
        // by the handler, which sees the body).
        (&Method::POST, Some("/schedules" | "/schedules/{id}/pause" | "/schedules/{id}/resume")) => Role::Operator,
        (&Method::PATCH | &Method::DELETE, Some("/schedules/{id}")) => Role::Operator,
        (
            &Method::POST,
            Some(
                "/workflows/batch"
                | "/workflows/{id}/pause"
                | "/workflows/{id}/resume"
                | "/workflows/{id}/cancel"
                | "/workflows/{id}/retry"
                | "/workflows/{id}/rollback",
            ),
        ) => Role::Operator,
        _ => Role::Admin,
    }
}

/// The operator action a request is, for the audit trail (None for
/// reads).
pub fn action_of(method: &Method, route: Option<&str>) -> Option<&'static str> {
    match (method, route?) {
        (&Method::POST, "/workflows/batch") => Some("submit"),
        (&Method::POST, "/workflows/{id}/pause") => Some("pause"),
        (&Method::POST, "/workflows/{id}/resume") => Some("resume"),
        (&Method::POST, "/workflows/{id}/cancel") => Some("cancel"),
        (&Method::POST, "/workflows/{id}/retry") => Some("retry"),
        (&Method::POST, "/workflows/{id}/rollback") => Some("rollback"),
        (&Method::POST, "/fleet/exec") => Some("exec"),
        (&Method::POST, "/fleet/snapshots") => Some("snapshot"),
        (&Method::POST, "/fleet/drift") => Some("drift"),
        (&Method::POST, "/tokens") => Some("token_create"),
        (&Method::DELETE, "/tokens/{name}") => Some("token_revoke"),
        (&Method::POST, "/schedules") => Some("schedule_create"),
        (&Method::PATCH, "/schedules/{id}") => Some("schedule_update"),
        (&Method::DELETE, "/schedules/{id}") => Some("schedule_delete"),
        (&Method::POST, "/schedules/{id}/pause") => Some("schedule_pause"),
        (&Method::POST, "/schedules/{id}/resume") => Some("schedule_resume"),
        _ => None,
    }
}

/// The middleware: who is calling, and may they call this route.
pub async fn check(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    // Liveness, and the dashboard's files (no data: the page asks for a
    // token before it calls the API).
    if req.uri().path() == "/healthz" || crate::dashboard::is_dashboard(req.uri().path()) {
        return next.run(req).await;
    }
    if auth.0.open {
        req.extensions_mut().insert(Caller {
            name: ANONYMOUS.into(),
            role: Role::Admin,
        });
        return next.run(req).await;
    }
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::unauthorized(
            "this server requires a bearer token: send Authorization: Bearer <token> (`drover batch` reads \
             DROVER_TOKEN, DROVER_TOKEN_FILE, or the server's token file on this machine)",
        )
        .into_response();
    };
    let caller = match auth.identify(presented) {
        Some(Identity::Token(k)) => {
            auth.touch(&k);
            Caller {
                name: k.name.clone(),
                role: k.role,
            }
        }
        Some(Identity::Metrics) if req.uri().path() == "/metrics" => Caller {
            name: METRICS.into(),
            role: Role::Viewer,
        },
        Some(Identity::Metrics) => {
            return ApiError::forbidden("the metrics token only reads /metrics").into_response();
        }
        None => {
            tracing::debug!(path = %req.uri().path(), "refused a request: the bearer token is not valid");
            return ApiError::unauthorized("the bearer token is not valid (unknown, or revoked)").into_response();
        }
    };
    let need = required_role(req.method(), route.as_deref());
    if !caller.may(need) {
        let action = action_of(req.method(), route.as_deref());
        let e = caller.forbidden(
            need,
            &format!("{} {}", req.method(), route.as_deref().unwrap_or("this path")),
        );
        // An operator action refused for its role is recorded too: who
        // tried what is what an audit is for.
        if let Some(action) = action {
            let run_id = req
                .uri()
                .path()
                .strip_prefix("/workflows/")
                .and_then(|rest| rest.split_once('/'))
                .map(|(id, _)| id.to_string())
                .filter(|id| id != "batch");
            let record = AuditRecord {
                id: 0,
                at_ms: drover_exec::scheduler::now_ms(),
                actor: caller.name.to_string(),
                action: action.to_string(),
                run_id,
                detail: req
                    .uri()
                    .path()
                    .strip_prefix("/tokens/")
                    .map(|name| format!("token {name}")),
                outcome: outcome_of(&e),
            };
            record_audit(&auth.0.store, record).await;
        }
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// How an action ended, for the audit trail: `ok`, or the refusal.
pub fn outcome_of(e: &ApiError) -> String {
    let first = e.body.message.lines().next().unwrap_or_default();
    let message: String = first.chars().take(300).collect();
    format!("refused ({} {}): {message}", e.status.as_u16(), e.body.code)
}

/// Append `record` to the audit trail, durably, off the runtime's
/// workers. A failure is logged: the action it records has happened.
pub async fn record_audit(store: &Arc<Store>, record: AuditRecord) {
    let store = store.clone();
    let action = record.action.clone();
    match tokio::task::spawn_blocking(move || store.record_audit(&record)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(action = %action, error = %e, "cannot record an action in the audit trail"),
        Err(e) => tracing::error!(action = %action, error = %e, "cannot record an action in the audit trail"),
    }
}

/// Append `audit` to the trail as refused with `e` (an action that was
/// asked for and not done is recorded too).
pub async fn record_refusal(store: &Arc<Store>, audit: AuditRecord, e: &ApiError) {
    let outcome = outcome_of(e);
    record_audit(store, AuditRecord { outcome, ..audit }).await;
}

/// The admin token from `file`; generated (256 random bits, hex, mode
/// 0600, in a directory made 0700) when the file does not exist.
pub fn load_or_create(file: &Path) -> Result<String, AuthError> {
    match read_token_file(file, "the token file") {
        Err(AuthError::File { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let token = random_token();
    let err = |source| AuthError::File {
        path: file.to_path_buf(),
        source,
    };
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(err)?;
    writeln!(f, "{token}").map_err(err)?;
    f.sync_all().map_err(err)?;
    tracing::info!(file = %file.display(), "generated the admin API token (local-admin)");
    Ok(token)
}

/// A token from `file`, which must be a regular file of this process's
/// user that nobody else may read or write. `what` names it in errors.
pub fn read_token_file(file: &Path, what: &str) -> Result<String, AuthError> {
    let err = |source| AuthError::File {
        path: file.to_path_buf(),
        source,
    };
    let unsafe_file = |problem: String| AuthError::Unsafe {
        path: file.to_path_buf(),
        problem,
    };
    let mut f = std::fs::File::open(file).map_err(err)?;
    // The open file's own metadata: what is checked is what is read.
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(unsafe_file(format!("{what} is not a regular file")));
    }
    let me = effective_uid()?;
    if meta.uid() != me {
        return Err(unsafe_file(format!(
            "{what} belongs to {} (uid {}), not to {} (uid {me}) that this server runs as: whoever owns it could \
             have chosen the token. Delete it (a new token is generated at the next start) or point --token-file at \
             a file of your own",
            user_name(meta.uid()).unwrap_or_else(|| "another user".into()),
            meta.uid(),
            user_name(me).unwrap_or_else(|| "the user".into()),
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(unsafe_file(format!(
            "{what} is readable by others (mode {mode:o}); it must be its owner's alone: chmod 600 {}",
            file.display()
        )));
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(err)?;
    let t = text.trim();
    if t.is_empty() {
        return Err(unsafe_file(format!(
            "{what} is empty; delete it to have a token generated, or write the token in it"
        )));
    }
    Ok(t.to_string())
}

/// The user this process acts as (its effective uid), from
/// `/proc/self/status` (drover runs on Linux only; std has no call for it).
fn effective_uid() -> Result<u32, AuthError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| AuthError::WhoAmI(e.to_string()))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| AuthError::WhoAmI("no Uid line with an effective uid".into()))
}

/// The name of user `uid`, from /etc/passwd (for messages; None if it is
/// not there).
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// 256 random bits, hex.
pub fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_generated_once_owner_only_and_reused() -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("sub/api-token");
        let t1 = load_or_create(&file)?;
        assert_eq!(t1.len(), 64);
        assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(dir.path().join("sub"))?.permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(load_or_create(&file)?, t1);
        for mode in [0o640, 0o604, 0o660] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
            let e = load_or_create(&file).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                e.contains("readable by others") && e.contains("chmod 600") && e.contains("sub/api-token"),
                "{mode:o}: {e}"
            );
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(&file, "\n")?;
        let e = load_or_create(&file).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("empty"), "{e}");
        Ok(())
    }

    #[test]
    fn this_process_knows_its_user() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mine = std::fs::metadata(dir.path())?.uid();
        assert_eq!(effective_uid()?, mine);
        Ok(())
    }

    #[test]
    fn each_route_needs_its_role() {
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(required_role(&get, Some("/workflows/{id}/status")), Role::Viewer);
        assert_eq!(required_role(&get, Some("/metrics")), Role::Viewer);
        assert_eq!(required_role(&get, None), Role::Viewer);
        assert_eq!(required_role(&post, Some("/workflows/batch")), Role::Operator);
        assert_eq!(required_role(&post, Some("/workflows/{id}/rollback")), Role::Operator);
        assert_eq!(required_role(&get, Some("/tokens")), Role::Admin);
        assert_eq!(required_role(&get, Some("/audit")), Role::Admin);
        assert_eq!(required_role(&Method::DELETE, Some("/tokens/{name}")), Role::Admin);
        // Not a read, and not known: closed.
        assert_eq!(required_role(&post, Some("/workflows/{id}/something-new")), Role::Admin);
        assert_eq!(action_of(&post, Some("/workflows/{id}/pause")), Some("pause"));
        assert_eq!(action_of(&get, Some("/workflows/{id}/status")), None);
    }

    #[test]
    fn names_are_checked_and_the_servers_own_are_reserved() {
        assert!(check_name("ci-deploy.2").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65), "é"] {
            assert_eq!(check_name(bad).err().map(|e| e.status.as_u16()), Some(400), "{bad:?}");
        }
        for own in RESERVED {
            assert_eq!(check_name(own).err().map(|e| e.status.as_u16()), Some(409), "{own}");
        }
    }
}
