//! Bearer-token authentication.
//!
//! The API token is read from `DROVER_TOKEN`, else from the token file; if
//! neither exists, a random token is generated on first start and written
//! to the token file with owner-only permissions (0600), where `drover
//! batch` on the same machine finds it. `/metrics` may have its own
//! read-only token, which opens `/metrics` and nothing else.
//!
//! A token is required on every endpoint but `/healthz` when the server
//! listens beyond loopback (or when asked to always require one). Tokens
//! are compared in constant time and never logged.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Why the token could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file cannot be read or written.
    #[error("token file {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file is empty or readable by others.
    #[error("token file {path}: {problem}")]
    Unsafe {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Who may call the API.
#[derive(Clone)]
pub struct Auth {
    token: Option<Arc<str>>,
    metrics_token: Option<Arc<str>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves.
        f.debug_struct("Auth")
            .field("required", &self.token.is_some())
            .field("metrics_token", &self.metrics_token.is_some())
            .finish()
    }
}

impl Auth {
    /// No authentication (loopback only).
    pub fn open() -> Auth {
        Auth {
            token: None,
            metrics_token: None,
        }
    }

    /// Require `token` (and accept `metrics_token` on /metrics).
    pub fn with_tokens(token: String, metrics_token: Option<String>) -> Auth {
        Auth {
            token: Some(token.into()),
            metrics_token: metrics_token.map(Into::into),
        }
    }

    /// Whether a token is required.
    pub fn required(&self) -> bool {
        self.token.is_some()
    }
}

/// The API token: `env` if given, else the token file's content, else a
/// new random token written to the token file (0600).
pub fn load_or_create(env: Option<String>, file: &Path) -> Result<String, AuthError> {
    if let Some(t) = env.filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_string());
    }
    match std::fs::read_to_string(file) {
        Ok(s) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file)
                .map_err(|source| AuthError::File {
                    path: file.to_path_buf(),
                    source,
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(AuthError::Unsafe {
                    path: file.to_path_buf(),
                    problem: format!("readable by others (mode {:o}); chmod 600 it", mode & 0o777),
                });
            }
            let t = s.trim();
            if t.is_empty() {
                return Err(AuthError::Unsafe {
                    path: file.to_path_buf(),
                    problem: "empty; delete it to have a token generated".into(),
                });
            }
            Ok(t.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = random_token();
            let err = |source| AuthError::File {
                path: file.to_path_buf(),
                source,
            };
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(file)
                .map_err(err)?;
            writeln!(f, "{token}").map_err(err)?;
            f.sync_all().map_err(err)?;
            tracing::info!(file = %file.display(), "generated a new API token");
            Ok(token)
        }
        Err(source) => Err(AuthError::File {
            path: file.to_path_buf(),
            source,
        }),
    }
}

/// 256 random bits, hex.
pub fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn same(a: &str, b: &str) -> bool {
    // Constant time in the length of the presented token.
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The middleware: checks the bearer token per request.
pub async fn check(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let Some(token) = auth.token.as_deref() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path == "/healthz" {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::unauthorized("this server requires a bearer token: send Authorization: Bearer <token>")
            .into_response();
    };
    if same(presented, token) {
        return next.run(req).await;
    }
    if let Some(m) = auth.metrics_token.as_deref()
        && same(presented, m)
    {
        if path == "/metrics" {
            return next.run(req).await;
        }
        return ApiError::forbidden("the metrics token only reads /metrics").into_response();
    }
    ApiError::unauthorized("the bearer token is not valid").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_generated_once_owner_only_and_reused() -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("sub/api-token");
        let t1 = load_or_create(None, &file)?;
        assert_eq!(t1.len(), 64);
        assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(None, &file)?, t1);
        assert_eq!(load_or_create(Some("from-env".into()), &file)?, "from-env");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
        let e = load_or_create(None, &file)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("readable by others"), "{e}");
        Ok(())
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("ab", "abc"));
        assert!(!same("abcd", "abc"));
        assert!(!same("", "abc"));
    }
}
