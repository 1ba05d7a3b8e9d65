//! The API client: where the API is, the token, requests, and what each
//! kind of failure means for the user (message and exit status). The token
//! is never printed, logged or put in a `Debug` output.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use drover_server::wire::{ApiErrorBody, RunStatusView};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::follow::{Feed, RECONNECT_FOR};
use super::{DEFAULT_API, ENVIRONMENT, INVALID, USAGE};

/// The API's address and the token to show it (also used by `drover
/// token`).
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<Arc<str>>,
    /// Where the token came from, for error messages (never the token).
    token_source: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token_source", &self.token_source)
            .finish_non_exhaustive()
    }
}

/// Why the client could not be set up, and the exit status for it.
pub(crate) struct Setup {
    pub(crate) message: String,
    pub(crate) code: u8,
}

/// How long a plain request may take (a submission evaluates KCL on the
/// server). Event streams have no overall limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

impl Client {
    /// A client that trusts only the certificates in `cacert` (PEM: the CA
    /// that issued the server's certificate, or a self-signed server
    /// certificate) for https; without it DROVER_CACERT, else the built-in
    /// roots.
    pub(crate) fn with_cacert(api: &str, cacert: Option<&Path>) -> Result<Client, Setup> {
        let base = Url::parse(api)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| Setup {
                message: format!("--api {api}: not an http(s) URL (e.g. {DEFAULT_API})"),
                code: USAGE,
            })?;
        let (token, token_source) = token().map_err(|message| Setup {
            message,
            code: ENVIRONMENT,
        })?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Below `drover serve --header-timeout` (10 s by default), which
            // also closes keep-alive connections idle that long: a pooled
            // connection is never reused just as the server closes it.
            .pool_idle_timeout(Duration::from_secs(5))
            .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")));
        let from_env = std::env::var_os("DROVER_CACERT")
            .filter(|f| !f.is_empty())
            .map(PathBuf::from);
        if let Some((file, source)) = cacert
            .map(|f| (f.to_path_buf(), "--cacert"))
            .or(from_env.map(|f| (f, "DROVER_CACERT")))
        {
            // As curl's --cacert: this CA and no other, so a private
            // server's certificate is checked against its own CA only.
            builder = builder.tls_built_in_root_certs(false);
            for cert in trusted(&file, source)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| Setup {
            message: format!("cannot set up the HTTP client: {e}"),
            code: ENVIRONMENT,
        })?;
        Ok(Client {
            http,
            base,
            token: token.map(Into::into),
            token_source,
        })
    }

    /// The URL of `segments` under the base (which may have a path prefix).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    pub(crate) fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let req = self.http.request(method, self.url(segments));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Send `req`; the body of a 2xx answer as `T`, else the API's error.
    pub(crate) async fn call<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ApiError> {
        let resp = req
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(ApiError::from_reqwest)?;
        let resp = check(resp).await?;
        resp.json::<T>().await.map_err(ApiError::from_reqwest)
    }

    pub(super) async fn status(&self, run: &str) -> Result<RunStatusView, ApiError> {
        self.call(self.request(Method::GET, &["workflows", run, "status"]))
            .await
    }

    /// Open a run's event stream (`events` or `logs`).
    pub(super) async fn stream(
        &self,
        run: &str,
        feed: &Feed,
        follow: bool,
        after: Option<i64>,
    ) -> Result<reqwest::Response, ApiError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if follow {
            query.push(("follow", "true".into()));
        }
        if let Some(a) = after {
            query.push(("after", a.to_string()));
        }
        let what = match feed {
            Feed::Transitions => "events",
            Feed::Logs { task, server } => {
                if let Some(t) = task {
                    query.push(("task", t.clone()));
                }
                if let Some(s) = server {
                    query.push(("server", s.clone()));
                }
                "logs"
            }
        };
        let req = self
            .request(Method::GET, &["workflows", run, what])
            .query(&query)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let resp = req.send().await.map_err(ApiError::from_reqwest)?;
        check(resp).await
    }

    /// Print what went wrong; the exit status for it.
    pub(crate) fn report(&self, e: &ApiError) -> ExitCode {
        let api = self.base.as_str().trim_end_matches('/');
        match e {
            ApiError::Unreachable(detail) if self.base.scheme() == "https" && detail.contains("certificate") => {
                eprintln!(
                    "drover: cannot reach the drover API at {api}: {detail}; if its certificate is self-signed or \
                     from a private CA, give that certificate or CA with --cacert FILE (or DROVER_CACERT)"
                );
                ExitCode::from(ENVIRONMENT)
            }
            ApiError::Unreachable(detail) => {
                eprintln!(
                    "drover: cannot reach the drover API at {api}: {detail}; start it with `drover serve` or set --api / DROVER_API"
                );
                ExitCode::from(ENVIRONMENT)
            }
            ApiError::GaveUp { detail, run } => {
                eprintln!(
                    "drover: lost the drover API at {api} and could not reconnect within {}s ({detail}); \
                     the run goes on if the server does: see `drover batch status {run}`",
                    RECONNECT_FOR.as_secs()
                );
                ExitCode::from(ENVIRONMENT)
            }
            ApiError::Protocol(detail) => {
                eprintln!("drover: unexpected answer from the drover API at {api}: {detail}");
                ExitCode::from(ENVIRONMENT)
            }
            ApiError::Refused { status, body } => self.report_refusal(*status, body),
        }
    }

    fn report_refusal(&self, status: StatusCode, body: &ApiErrorBody) -> ExitCode {
        let api = self.base.as_str().trim_end_matches('/');
        let code = status.as_u16();
        match status {
            // The token is valid, and this is not allowed (its role, named
            // with the role needed in the message, or what is asked).
            StatusCode::FORBIDDEN if body.code == "forbidden" && self.token.is_some() => {
                eprintln!("drover: the API at {api} refused ({code}): {}", body.message);
                ExitCode::from(ENVIRONMENT)
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                match &self.token {
                    Some(_) => eprintln!(
                        "drover: the API at {api} refused the token ({code}: {}); the token came from {}: \
                         set DROVER_TOKEN or DROVER_TOKEN_FILE to the server's token",
                        body.message, self.token_source
                    ),
                    None => eprintln!(
                        "drover: the API at {api} needs a token ({code}: {}); set DROVER_TOKEN or DROVER_TOKEN_FILE \
                         ({})",
                        body.message, self.token_source
                    ),
                }
                ExitCode::from(ENVIRONMENT)
            }
            StatusCode::TOO_MANY_REQUESTS => {
                eprintln!(
                    "drover: the API at {api} is busy (429): {}; try again later",
                    body.message
                );
                ExitCode::from(ENVIRONMENT)
            }
            s if s.is_server_error() => {
                eprintln!("drover: the API at {api} failed ({code}): {}", body.message);
                ExitCode::from(ENVIRONMENT)
            }
            _ => {
                if body.code == "invalid_workflow" || !body.problems.is_empty() {
                    for p in &body.problems {
                        eprintln!("{}", p.trim_end());
                    }
                    eprintln!("drover: {}", body.message);
                } else {
                    eprintln!("drover: {}", body.message);
                }
                ExitCode::from(INVALID)
            }
        }
    }
}

/// The certificates of a `--cacert` (or DROVER_CACERT, as `source` says)
/// file.
fn trusted(file: &Path, source: &str) -> Result<Vec<reqwest::Certificate>, Setup> {
    let refuse = |problem: String| Setup {
        message: format!("{source} {}: {problem}", file.display()),
        code: ENVIRONMENT,
    };
    let pem = std::fs::read(file).map_err(|e| refuse(format!("cannot read it: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| refuse(format!("not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(refuse(
            "holds no certificate (a PEM block -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// The API token and where it came from (described for messages, never
/// the token): DROVER_TOKEN, DROVER_TOKEN_FILE, or the file `drover serve`
/// writes, if it exists.
fn token() -> Result<(Option<String>, String), String> {
    if let Some(t) = std::env::var("DROVER_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        return Ok((Some(t.trim().to_string()), "DROVER_TOKEN".into()));
    }
    if let Some(file) = std::env::var_os("DROVER_TOKEN_FILE").filter(|f| !f.is_empty()) {
        let path = PathBuf::from(file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read the API token from {} (DROVER_TOKEN_FILE): {e}",
                path.display()
            )
        })?;
        let t = text.trim();
        if t.is_empty() {
            return Err(format!(
                "the API token file {} (DROVER_TOKEN_FILE) is empty",
                path.display()
            ));
        }
        return Ok((Some(t.to_string()), format!("{} (DROVER_TOKEN_FILE)", path.display())));
    }
    let path = default_token_path();
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok((Some(text.trim().to_string()), path.display().to_string())),
        Ok(_) => Ok((None, format!("{} is empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
            None,
            format!("`drover serve` writes one to {} on this machine", path.display()),
        )),
        Err(e) => Err(format!("cannot read the API token from {}: {e}", path.display())),
    }
}

/// The file `drover serve` writes its token to by default: `api-token`
/// next to its state database (DROVER_STATE, else
/// `$XDG_DATA_HOME/drover/state.db`, else `~/.local/share/drover/state.db`).
fn default_token_path() -> PathBuf {
    let state = std::env::var_os("DROVER_STATE")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(drover_exec::default_state_path);
    state
        .parent()
        .map(|d| d.join("api-token"))
        .unwrap_or_else(|| PathBuf::from("api-token"))
}

/// What went wrong talking to the API.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// No connection, or it broke.
    Unreachable(String),
    /// The connection was lost for longer than [`RECONNECT_FOR`].
    GaveUp { detail: String, run: String },
    /// The API answered with an error status.
    Refused { status: StatusCode, body: ApiErrorBody },
    /// The answer is not what the API sends.
    Protocol(String),
}

impl ApiError {
    pub(super) fn from_reqwest(e: reqwest::Error) -> ApiError {
        if e.is_decode() {
            return ApiError::Protocol(e.to_string());
        }
        ApiError::Unreachable(cause(&e))
    }

    /// Whether waiting and trying again may help: the server is down,
    /// restarting or overloaded for a moment.
    pub(super) fn transient(&self) -> bool {
        match self {
            ApiError::Unreachable(_) => true,
            ApiError::Refused { status, .. } => matches!(
                *status,
                StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
            ),
            ApiError::GaveUp { .. } | ApiError::Protocol(_) => false,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unreachable(d) | ApiError::Protocol(d) | ApiError::GaveUp { detail: d, .. } => f.write_str(d),
            ApiError::Refused { status, body } => write!(f, "{}: {}", status.as_u16(), body.message),
        }
    }
}

/// The most telling part of a transport error: "connection refused"
/// rather than reqwest's "error sending request for url (...)".
pub(super) fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut innermost = e.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                _ => io.to_string(),
            };
        }
        innermost = s.to_string();
        source = s.source();
    }
    innermost
}

/// A 2xx response as it is; otherwise the API's error body.
pub(super) async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ApiError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str::<ApiErrorBody>(&text).unwrap_or_else(|_| ApiErrorBody {
        code: format!("http_{}", status.as_u16()),
        message: match text.trim() {
            "" => status.canonical_reason().unwrap_or("error").to_string(),
            t => t.chars().take(300).collect(),
        },
        problems: Vec::new(),
    });
    Err(ApiError::Refused { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_a_path_prefix_and_encode_segments() {
        let client = Client {
            http: reqwest::Client::new(),
            base: Url::parse("http://h:1/drover/").expect("url"),
            token: None,
            token_source: String::new(),
        };
        assert_eq!(
            client.url(&["workflows", "a b", "status"]).as_str(),
            "http://h:1/drover/workflows/a%20b/status"
        );
    }
}
