//! The EC2 client of one account and region, as the provider calls it:
//! built from the run's secrets before the standard chain, every call
//! paced by the provider's rate limit and classified into transient and
//! permanent failures.
//!
//! The SDK's own retries are off: a throttled call is retried here, after
//! waiting for the rate limiter again, so retries count against
//! `api_rate_limit` like first attempts do.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::config::{Credentials, ProvideCredentials, Region};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use drover_core::FailureKind;
use drover_provider::Secrets;
use tokio::time::Instant;

/// Calls per second the provider starts at most, across all its tasks in
/// this process: the `api_rate_limit` of `kcl/dependencies.k` (EC2 refills
/// the token buckets of mutating calls at 5 per second).
pub const API_RATE_LIMIT: f64 = 5.0;

/// Attempts of one call answered by throttling or a server error before
/// the task fails (transient, so the task's retry policy takes over).
const ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// Error codes EC2 (and the STS/IAM front ends) answer throttled calls
/// with.
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
];

/// A failed EC2 call.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Whether another attempt may help.
    pub kind: FailureKind,
    /// AWS's error code, when AWS answered.
    pub code: Option<String>,
    /// What failed: the action, the region, AWS's code and message.
    pub message: String,
}

impl ApiError {
    /// The error code starts with `prefix` (`InvalidGroup.NotFound`).
    pub fn is(&self, prefix: &str) -> bool {
        self.code.as_deref().is_some_and(|c| c.starts_with(prefix))
    }
}

/// Where the client's settings come from: the run's secrets first, then
/// the SDK's standard chain (environment, profile files, ...).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Settings {
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// An endpoint given to the provider (tests), else the chain's
    /// (`AWS_ENDPOINT_URL`) or AWS's.
    pub endpoint: Option<String>,
}

impl Settings {
    /// The settings `secrets` give, with `endpoint`.
    pub fn from_secrets(secrets: &Secrets, endpoint: Option<&str>) -> Settings {
        let get = |n: &str| secrets.get(n).filter(|v| !v.is_empty()).map(str::to_string);
        Settings {
            region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
            access_key_id: get("AWS_ACCESS_KEY_ID"),
            secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
            session_token: get("AWS_SESSION_TOKEN"),
            endpoint: endpoint.map(str::to_string),
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("region", &self.region)
            .field(
                "credentials",
                &self.access_key_id.as_ref().map(|_| "<from the run's secrets>"),
            )
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// One account and region's client and its pacing.
pub struct Api {
    pub client: Client,
    pub region: String,
    /// The earliest instant the next call may start.
    next_call: Mutex<Instant>,
    /// Secret values that must not appear in an error message.
    scrub: Vec<String>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// Build the client: region and credentials from `settings`, else
    /// from the standard chain; the credentials are resolved once here so
    /// missing ones are reported before any call.
    pub async fn new(settings: &Settings) -> Result<Api, ApiError> {
        // The SDK's hyper 1 client with rustls on ring, as the rest of
        // the workspace uses (its default is rustls on aws-lc). It speaks
        // plain HTTP too, for endpoints such as moto's.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(id), Some(secret)) => {
                loader = loader.credentials_provider(Credentials::new(
                    id.clone(),
                    secret.clone(),
                    settings.session_token.clone(),
                    None,
                    "drover-run-secrets",
                ));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(permanent(
                    "the run's secrets give only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                     (aws.access_key_id, aws.secret_access_key); give both"
                        .into(),
                ));
            }
            (None, None) => {}
        }
        if let Some(url) = &settings.endpoint {
            loader = loader.endpoint_url(url.clone());
        }
        let config = loader.load().await;
        let region = config.region().map(|r| r.to_string()).ok_or_else(|| {
            permanent(
                "no AWS region: give aws.region in the workflow's secrets (AWS_REGION), \
                 or set AWS_REGION or a profile's region for the orchestrator"
                    .into(),
            )
        })?;
        let mut scrub: Vec<String> = [
            &settings.access_key_id,
            &settings.secret_access_key,
            &settings.session_token,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        match config.credentials_provider() {
            None => {
                return Err(permanent(
                    "no AWS credentials: give aws.access_key_id and aws.secret_access_key in the \
                     workflow's secrets, or credentials in the orchestrator's environment or profile"
                        .into(),
                ));
            }
            Some(provider) => match provider.provide_credentials().await {
                Ok(c) => {
                    scrub.push(c.access_key_id().to_string());
                    scrub.push(c.secret_access_key().to_string());
                    scrub.extend(c.session_token().map(str::to_string));
                }
                Err(e) => {
                    return Err(permanent(format!(
                        "no AWS credentials: none in the workflow's secrets (aws.access_key_id, \
                             aws.secret_access_key) and the standard chain found none: {}",
                        DisplayErrorContext(&e)
                    )));
                }
            },
        }
        scrub.retain(|s| !s.is_empty());
        Ok(Api {
            client: Client::new(&config),
            region,
            next_call: Mutex::new(Instant::now()),
            scrub,
        })
    }

    /// Wait for this call's slot: calls start at least 1/API_RATE_LIMIT
    /// seconds apart.
    async fn pace(&self) {
        let slot = {
            let mut next = self.next_call.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + Duration::from_secs_f64(1.0 / API_RATE_LIMIT);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Run `action` (named `name` in errors), paced; throttling, server
    /// errors and failed connections are retried here with exponential
    /// backoff (equal jitter) before the call fails as transient.
    pub async fn call<T, E, F, Fut>(&self, name: &str, mut action: F) -> Result<T, ApiError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            self.pace().await;
            let error = match action(self.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => self.classify(name, e),
            };
            let again = error.kind == FailureKind::Transient && attempt < ATTEMPTS;
            if !again {
                return Err(error);
            }
            let wait = backoff / 2 + backoff.mul_f64(rand::random::<f64>() / 2.0);
            tracing::debug!(action = name, attempt, wait_ms = wait.as_millis() as u64, error = %error.message, "EC2 call retried");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }

    fn classify<E>(&self, name: &str, e: SdkError<E, HttpResponse>) -> ApiError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let region = &self.region;
        let (kind, code, message) = match &e {
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                let err = ctx.err();
                let code = err.code().unwrap_or("Unknown").to_string();
                let text = err.message().unwrap_or("(no message)");
                let throttled = THROTTLING.contains(&code.as_str()) || status == 429 || status == 503;
                let kind = if throttled || status >= 500 {
                    FailureKind::Transient
                } else {
                    FailureKind::Permanent
                };
                let message = format!("{name} in {region}: {code}: {text} (HTTP {status})");
                (kind, Some(code), message)
            }
            SdkError::ConstructionFailure(_) => (
                FailureKind::Permanent,
                None,
                format!(
                    "{name} in {region}: the request could not be built: {}",
                    DisplayErrorContext(&e)
                ),
            ),
            _ => (
                FailureKind::Transient,
                None,
                format!("{name} in {region}: no answer from EC2: {}", DisplayErrorContext(&e)),
            ),
        };
        ApiError {
            kind,
            code,
            message: self.scrubbed(message),
        }
    }

    /// `message` with every secret value of these settings replaced.
    pub fn scrubbed(&self, mut message: String) -> String {
        for s in &self.scrub {
            if message.contains(s.as_str()) {
                message = message.replace(s.as_str(), "<redacted>");
            }
        }
        message
    }
}

fn permanent(message: String) -> ApiError {
    ApiError {
        kind: FailureKind::Permanent,
        code: None,
        message,
    }
}

/// A failure of the provider's own making (not an AWS answer).
pub fn failure(kind: FailureKind, message: String) -> ApiError {
    ApiError {
        kind,
        code: None,
        message,
    }
}
