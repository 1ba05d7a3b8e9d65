//! The HTTP layer of `drover serve`: its own accept loop over hyper, so
//! that what a client can hold before it is authenticated is bounded.
//!
//! Layout:
//! - [`Http::new`] checks the settings before anything is bound: plain
//!   HTTP beyond loopback only with `--insecure-http`, the TLS files
//!   (rustls, ring), `--public-name`s, and that `--max-connections` fits
//!   the open-files limit (raising the soft limit up to the hard one).
//! - [`Http::guard`] puts the Host check ([`HostCheck`], against DNS
//!   rebinding) and the body limit ([`MAX_BODY_BYTES`]) around the router.
//! - [`Http::serve`] accepts connections until shutdown:
//!   - at most `max_connections` are open. At the limit a new connection
//!     takes the place of the one idle longest (no request in progress:
//!     still in its TLS handshake, sending its headers, or between
//!     requests); when every connection is serving a request, the new one
//!     is closed at once. So idle connections cannot lock clients out, and
//!     the process never runs out of descriptors because of them.
//!   - a connection has `header_timeout` for its TLS handshake and again
//!     for the headers of each request (hyper's `header_read_timeout`,
//!     which also ends keep-alive connections idle that long).
//!   - on shutdown the listener is closed, connections without a request
//!     in progress are closed at once, those serving one finish it (event
//!     streams end on the orchestrator's `stopping` token) within
//!     `shutdown_grace`; what is left then is dropped. Idle or half-open
//!     connections never delay the shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::http::uri::Authority;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// The largest request body accepted (a submitted workflow's source is
/// far smaller); a larger one is answered 413.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Open files the server needs besides its connections: the store and
/// its WAL, log files, the runtime's own, and task processes' pipes. The
/// connection limit must leave at least this many under `ulimit -n`.
pub const DESCRIPTOR_RESERVE: u64 = 64;

/// How the HTTP layer behaves (`drover serve`'s flags).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Connections open at once (`--max-connections`).
    pub max_connections: usize,
    /// Time for a TLS handshake, and for each request's headers
    /// (`--header-timeout`).
    pub header_timeout: Duration,
    /// On shutdown, how long requests in progress may take to finish
    /// before their connections are dropped (`--shutdown-http-grace`).
    pub shutdown_grace: Duration,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// Serve plain HTTP beyond loopback (behind a TLS-terminating proxy).
    pub insecure_http: bool,
    /// Host names (or addresses) clients reach the server by, besides its
    /// loopback names and bound address (`--public-name`).
    pub public_names: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            tls: None,
            insecure_http: false,
            public_names: Vec::new(),
        }
    }
}

/// The PEM files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the HTTP layer cannot start. Each names the flag or file and what
/// to do.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Plain HTTP beyond loopback without `--insecure-http`.
    #[error(
        "refusing to serve plain HTTP on {addr}, beyond loopback: the API token and workflows would cross the \
         network unencrypted; give --tls-cert FILE and --tls-key FILE, or --insecure-http if a proxy in front \
         of drover terminates TLS"
    )]
    PlainBeyondLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// A TLS file cannot be read or does not hold what it should.
    #[error("{flag} {}: {problem}", file.display())]
    TlsFile {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The key is not the certificate's.
    #[error(
        "--tls-key {} does not belong to the certificate in --tls-cert {} ({problem}); give the key the \
         certificate was issued for",
        key.display(),
        cert.display()
    )]
    TlsKeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' words.
        problem: String,
    },
    /// A `--public-name` that is not a host name.
    #[error("--public-name {name:?}: {problem}")]
    PublicName {
        /// As given.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `--max-connections` does not fit the open-files limit.
    #[error(
        "--max-connections {max_connections} needs {needed} open files (with {DESCRIPTOR_RESERVE} for the \
         server itself) but this process may open at most {hard} (ulimit -n); raise the limit (ulimit -n, \
         LimitNOFILE= in a systemd unit) or lower --max-connections to {fits}"
    )]
    Descriptors {
        /// As asked.
        max_connections: usize,
        /// Connections plus the reserve.
        needed: u64,
        /// The hard limit.
        hard: u64,
        /// The most that fits.
        fits: u64,
    },
    /// The open-files limit cannot be read or raised.
    #[error("cannot {what} the open-files limit (RLIMIT_NOFILE): {source}")]
    Rlimit {
        /// "read" or "raise".
        what: &'static str,
        /// The system's error.
        source: nix::Error,
    },
}

/// The HTTP layer, its settings checked: built before the listener is
/// bound, so a wrong setting stops the start.
pub struct Http {
    config: HttpConfig,
    /// Lower-cased, without a trailing dot.
    public_names: Vec<String>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Http {
    /// Check `config` for a server listening on `listen`.
    pub fn new(config: &HttpConfig, listen: SocketAddr) -> Result<Http, HttpError> {
        if config.tls.is_none() && !config.insecure_http && !listen.ip().is_loopback() {
            return Err(HttpError::PlainBeyondLoopback { addr: listen });
        }
        let public_names = config
            .public_names
            .iter()
            .map(|n| public_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        fit_descriptors(config.max_connections)?;
        Ok(Http {
            config: config.clone(),
            public_names,
            tls,
        })
    }

    /// `app` with the Host check (outermost: before authentication) and
    /// the body limit, for a server bound to `bound`.
    pub fn guard(&self, app: Router, bound: SocketAddr) -> Router {
        let hosts = Arc::new(HostCheck::new(bound.ip(), self.public_names.clone()));
        app.layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn_with_state(hosts, check_host))
    }

    /// Serve `app` on `listener` until `shutdown` completes; then close
    /// connections as the module comment says. Returns when every
    /// connection is gone.
    pub async fn serve(self, listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_timeout)
            .keep_alive(true);
        let shared = Arc::new(Shared {
            app,
            builder,
            tls: self.tls,
            header_timeout: self.config.header_timeout,
            closing: CancellationToken::new(),
            epoch: Instant::now(),
        });
        let max = self.config.max_connections.max(1);
        let mut tasks: JoinSet<()> = JoinSet::new();
        // The accept loop alone changes this map; connections report their
        // end by finishing their task.
        let mut open: HashMap<tokio::task::Id, Arc<Slot>> = HashMap::new();
        // Logged once per episode, not once per connection of a flood.
        let (mut at_limit, mut refusing) = (false, false);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(ended) = tasks.join_next_with_id() => {
                    let id = match ended {
                        Ok((id, ())) => id,
                        Err(e) => e.id(),
                    };
                    open.remove(&id);
                }
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            accept_failed(e).await;
                            continue;
                        }
                    };
                    if open.len() >= max {
                        if !at_limit {
                            at_limit = true;
                            tracing::warn!(
                                max_connections = max,
                                "connection limit reached: the connections idle longest give way to new ones"
                            );
                        }
                        match longest_idle(&open) {
                            Some(id) => {
                                if let Some(slot) = open.remove(&id) {
                                    slot.evict.cancel();
                                }
                                tracing::debug!(%peer, "connection limit: closed the connection idle longest");
                            }
                            None => {
                                if !refusing {
                                    refusing = true;
                                    tracing::warn!(
                                        max_connections = max,
                                        "connection limit reached and every connection is serving a request: \
                                         new connections are closed at once"
                                    );
                                }
                                tracing::debug!(%peer, "connection limit: closed the new connection");
                                drop(stream);
                                continue;
                            }
                        }
                    } else if at_limit && open.len() < max * 9 / 10 {
                        at_limit = false;
                        tracing::info!(open = open.len(), "connections below the limit again");
                    }
                    refusing = false;
                    let slot = Arc::new(Slot::new(shared.now_ms()));
                    let handle = tasks.spawn(connection(shared.clone(), stream, peer, slot.clone()));
                    open.insert(handle.id(), slot);
                }
            }
        }
        // Stop accepting: new connections are refused by the system.
        drop(listener);
        shared.closing.cancel();
        let serving = open.values().filter(|s| s.busy.load(Ordering::SeqCst) > 0).count();
        tracing::info!(
            open = open.len(),
            serving,
            grace_s = self.config.shutdown_grace.as_secs_f64(),
            "HTTP shutdown: idle connections closed, requests in progress may finish"
        );
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                connections = tasks.len(),
                grace_s = self.config.shutdown_grace.as_secs_f64(),
                "requests still in progress after --shutdown-http-grace: their connections are dropped"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
}

/// What every connection task shares.
struct Shared {
    app: Router,
    builder: http1::Builder,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    /// Cancelled when the server shuts down.
    closing: CancellationToken,
    /// Origin of the slots' idle times.
    epoch: Instant,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// One open connection as the accept loop sees it. Atomics: the
/// connection's requests update it, the accept loop reads it.
#[derive(Debug)]
struct Slot {
    /// Requests in progress: from the handler's call until the response
    /// body is done (an event stream is in progress while it streams).
    busy: AtomicUsize,
    /// When it last became idle (ms since `Shared::epoch`).
    idle_since: AtomicU64,
    /// Cancelled to close the connection at once: it gave way to a new one.
    evict: CancellationToken,
}

impl Slot {
    fn new(now_ms: u64) -> Slot {
        Slot {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now_ms),
            evict: CancellationToken::new(),
        }
    }
}

/// The connection without a request in progress that has been idle
/// longest.
fn longest_idle(open: &HashMap<tokio::task::Id, Arc<Slot>>) -> Option<tokio::task::Id> {
    open.iter()
        .filter(|(_, s)| s.busy.load(Ordering::SeqCst) == 0)
        .min_by_key(|(_, s)| s.idle_since.load(Ordering::SeqCst))
        .map(|(id, _)| *id)
}

/// An accept that failed. The client's own trouble (it went away) is
/// nothing; anything else (out of descriptors, memory) is logged and the
/// loop pauses a moment instead of spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed; trying again in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One connection: the TLS handshake (bounded), then HTTP/1.1.
async fn connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, slot: Arc<Slot>) {
    // Responses are written whole or streamed event by event: no batching.
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = shared.tls.clone() else {
        return http(&shared, TokioIo::new(stream), peer, slot).await;
    };
    let handshake = tokio::select! {
        r = tokio::time::timeout(shared.header_timeout, acceptor.accept(stream)) => r,
        () = slot.evict.cancelled() => return,
        () = shared.closing.cancelled() => return,
    };
    match handshake {
        Ok(Ok(tls)) => http(&shared, TokioIo::new(tls), peer, slot).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "no TLS handshake within the header timeout: closed"),
    }
}

/// Serve HTTP/1.1 on `io` until the client leaves, the connection is
/// evicted, or the server shuts down.
async fn http<I>(shared: &Shared, io: I, peer: SocketAddr, slot: Arc<Slot>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let app = shared.app.clone();
    let epoch = shared.epoch;
    let tracked = slot.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let busy = Busy::enter(tracked.clone(), epoch);
        // The client's address for handlers and logs (axum's ConnectInfo).
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        // Router is always ready; cloning it is cheap (an Arc).
        let mut router = app.clone();
        async move {
            let resp = tower_service::Service::call(&mut router, req).await;
            resp.map(|r| r.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let conn = shared.builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
            return;
        }
        () = slot.evict.cancelled() => return,
        () = shared.closing.cancelled() => {}
    }
    // Shutting down. Without a request in progress (idle, half-open, or
    // still sending headers) the connection is closed now; otherwise the
    // response is finished first (the accept loop bounds how long).
    if slot.busy.load(Ordering::SeqCst) == 0 {
        return;
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "connection ended during shutdown");
    }
}

/// A request in progress on a connection; when dropped (the response
/// body is done, or abandoned) the connection is idle again.
struct Busy {
    slot: Arc<Slot>,
    epoch: Instant,
}

impl Busy {
    fn enter(slot: Arc<Slot>, epoch: Instant) -> Busy {
        slot.busy.fetch_add(1, Ordering::SeqCst);
        Busy { slot, epoch }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Idle time first: whoever sees the count at 0 sees it.
        self.slot.idle_since.store(now, Ordering::SeqCst);
        self.slot.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in progress until
/// it is done.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Which names the Host header may carry (DNS rebinding: a web page whose
/// name resolves to this machine sends its own name). An IP literal
/// cannot be rebound, so loopback addresses, the bound address, and, when
/// bound to every address, any IP literal pass; a name passes if it is
/// `localhost` or a `--public-name`.
#[derive(Debug)]
pub struct HostCheck {
    bound: IpAddr,
    /// Lower-cased, without a trailing dot.
    names: Vec<String>,
    /// What passes, in words, for the refusal.
    allowed: String,
}

impl HostCheck {
    /// For a server bound to `bound`, also reached as `names` (as
    /// [`public_name`] returns them).
    pub fn new(bound: IpAddr, names: Vec<String>) -> HostCheck {
        let mut parts = vec!["localhost".to_string(), "loopback addresses".to_string()];
        if bound.is_unspecified() {
            parts.push("this machine's IP addresses".into());
        } else if !bound.is_loopback() {
            parts.push(bound.to_string());
        }
        parts.extend(names.iter().cloned());
        let allowed = match parts.split_last() {
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        };
        HostCheck { bound, names, allowed }
    }

    /// Whether `host` (the Host header's host part: a name, an IPv4
    /// address or a bracketed IPv6 address) names this server.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host == "localhost" || self.names.contains(&host) {
            return true;
        }
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&host);
        match literal.parse::<IpAddr>() {
            Ok(ip) => {
                let ip = ip.to_canonical();
                ip.is_loopback()
                    || ip == self.bound
                    || self.bound.is_unspecified()
                    || self.names.iter().any(|n| n == literal)
            }
            Err(_) => false,
        }
    }

    /// Ok when the request names this server; else the error to answer:
    /// 421, or 400 for an HTTP/1.1 request without a Host header.
    fn check(&self, req: &Request) -> Result<(), ApiError> {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let (first, second) = (hosts.next(), hosts.next());
        if second.is_some() {
            return Err(ApiError::misdirected("the request has more than one Host header"));
        }
        // An absolute request target names the host itself.
        let host = match (req.uri().authority(), first) {
            (Some(a), _) => a.host().to_string(),
            (None, Some(v)) => match v.to_str().ok().and_then(|v| v.parse::<Authority>().ok()) {
                Some(a) => a.host().to_string(),
                None => {
                    return Err(ApiError::misdirected(format!(
                        "the Host header {:?} is not a host name",
                        shown(&String::from_utf8_lossy(v.as_bytes()))
                    )));
                }
            },
            // Browsers always send the page's host, so a request without
            // one is no rebinding: HTTP/1.0 may omit it (old health
            // checkers do); HTTP/1.1 must send it (RFC 9112 3.2).
            (None, None) if req.version() <= axum::http::Version::HTTP_10 => return Ok(()),
            (None, None) => {
                return Err(ApiError::bad_request(
                    "an HTTP/1.1 request needs a Host header: the name or address this server is reached by",
                ));
            }
        };
        if self.allows(&host) {
            return Ok(());
        }
        let host = shown(&host);
        Err(ApiError::misdirected(format!(
            "this server does not answer to the host {host:?} (Host header); it answers to {}. If clients \
             reach it by that name, start drover serve with --public-name {host}",
            self.allowed
        )))
    }
}

/// At most 100 characters of what a client sent, for a message.
fn shown(s: &str) -> String {
    s.chars().take(100).collect()
}

/// The Host check as an axum middleware.
async fn check_host(State(check): State<Arc<HostCheck>>, req: Request, next: Next) -> Response {
    match check.check(&req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// A `--public-name` as the Host check compares it: lower-cased, without
/// a trailing dot or IPv6 brackets; no port (any port passes).
pub fn public_name(name: &str) -> Result<String, HttpError> {
    let refuse = |problem| HttpError::PublicName {
        name: name.to_string(),
        problem,
    };
    let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = n.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&n);
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(bare.to_string());
    }
    if n.is_empty() {
        return Err(refuse("empty; give the host name clients use, e.g. drover.example.com"));
    }
    if n.contains(':') {
        return Err(refuse("give the host name without a port (any port is accepted)"));
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if n.len() > 253 || !n.split('.').all(valid_label) {
        return Err(refuse(
            "not a host name (letters, digits, '-' and '_' in dot-separated labels), e.g. drover.example.com",
        ));
    }
    Ok(n)
}

/// The TLS acceptor from the PEM files.
fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, HttpError> {
    use rustls::pki_types::pem::{self, PemObject};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let refuse = |flag: &'static str, file: &Path, problem: String| HttpError::TlsFile {
        flag,
        file: file.to_path_buf(),
        problem,
    };
    let read = |flag, file: &Path| std::fs::read(file).map_err(|e| refuse(flag, file, format!("cannot read it: {e}")));

    let cert_pem = read("--tls-cert", &files.cert)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refuse("--tls-cert", &files.cert, format!("not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(refuse(
            "--tls-cert",
            &files.cert,
            "holds no certificate (a PEM block -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let key_pem = read("--tls-key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => {
                "holds no private key (a PEM block -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
                    .to_string()
            }
            other => format!("not valid PEM ({other})"),
        };
        refuse("--tls-key", &files.key, problem)
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| refuse("--tls-cert", &files.cert, format!("TLS cannot be set up: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => HttpError::TlsKeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
                problem: e.to_string(),
            },
            other => refuse(
                "--tls-key",
                &files.key,
                format!(
                    "cannot be used with the certificate in {}: {other}",
                    files.cert.display()
                ),
            ),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Make sure `max_connections` connections fit under the open-files
/// limit: raise the soft limit (up to the hard one) if needed.
fn fit_descriptors(max_connections: usize) -> Result<(), HttpError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(DESCRIPTOR_RESERVE);
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|source| HttpError::Rlimit { what: "read", source })?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        return Err(HttpError::Descriptors {
            max_connections,
            needed,
            hard,
            fits: hard.saturating_sub(DESCRIPTOR_RESERVE),
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard).map_err(|source| HttpError::Rlimit { what: "raise", source })?;
    tracing::info!(
        from = soft,
        to = needed,
        "raised the open-files limit for --max-connections"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bound: &str, names: &[&str]) -> HostCheck {
        let names = names.iter().map(|n| public_name(n).expect("name")).collect();
        HostCheck::new(bound.parse().expect("ip"), names)
    }

    #[test]
    fn loopback_names_and_addresses_pass_on_a_loopback_server() {
        let c = check("127.0.0.1", &[]);
        for h in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.0.0.2",
            "[::1]",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(c.allows(h), "{h}");
        }
        for h in [
            "evil.example",
            "localhost.evil.example",
            "10.0.0.1",
            "[fe80::1]",
            "",
            "127.0.0.1.evil.example",
        ] {
            assert!(!c.allows(h), "{h}");
        }
    }

    #[test]
    fn public_names_and_the_bound_address_pass() {
        let c = check("10.1.2.3", &["Drover.Example.com.", "[2001:db8::7]"]);
        for h in [
            "drover.example.com",
            "DROVER.example.COM.",
            "10.1.2.3",
            "[2001:db8::7]",
            "localhost",
        ] {
            assert!(c.allows(h), "{h}");
        }
        for h in ["example.com", "10.1.2.4", "drover.example.com.evil"] {
            assert!(!c.allows(h), "{h}");
        }
        // Bound to every address: any IP literal (it cannot be rebound), no other name.
        let any = check("0.0.0.0", &[]);
        assert!(any.allows("192.0.2.9") && any.allows("[2001:db8::1]"));
        assert!(!any.allows("evil.example"));
    }

    #[test]
    fn public_names_are_checked() {
        assert_eq!(public_name("Drover.Example.com.").expect("ok"), "drover.example.com");
        assert_eq!(public_name("[::1]").expect("ok"), "::1");
        for bad in ["", "drover.example.com:7070", "bad name", "-x.example", "a..b"] {
            let e = public_name(bad).expect_err(bad).to_string();
            assert!(e.contains("--public-name"), "{e}");
        }
    }

    #[test]
    fn plain_http_beyond_loopback_needs_insecure_http() {
        let addr: SocketAddr = "0.0.0.0:7070".parse().expect("addr");
        let e = Http::new(&HttpConfig::default(), addr)
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("--tls-cert") && e.contains("--insecure-http") && e.contains("0.0.0.0:7070"),
            "{e}"
        );
        let insecure = HttpConfig {
            insecure_http: true,
            ..HttpConfig::default()
        };
        assert!(Http::new(&insecure, addr).is_ok());
        assert!(Http::new(&HttpConfig::default(), "127.0.0.1:7070".parse().expect("addr")).is_ok());
    }

    #[test]
    fn tls_files_that_are_missing_or_wrong_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        let Err(e) = tls_acceptor(&files).map(|_| ()) else {
            panic!("a missing certificate file was accepted")
        };
        let e = e.to_string();
        assert!(
            e.contains("--tls-cert") && e.contains(&cert.display().to_string()) && e.contains("cannot read"),
            "{e}"
        );
        std::fs::write(&cert, "not a certificate\n").expect("write");
        let Err(e) = tls_acceptor(&files).map(|_| ()) else {
            panic!("a file without a certificate was accepted")
        };
        let e = e.to_string();
        assert!(e.contains("holds no certificate"), "{e}");
    }
}
