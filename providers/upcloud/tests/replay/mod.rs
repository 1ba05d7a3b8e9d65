//! A replay of recorded UpCloud API traffic (tests/fixtures, go-vcr
//! cassettes recorded by UpCloud's Go SDK against the real service).
//!
//! A test lists the recorded interactions it expects drover to make, in
//! order ([`Step`]); the server on 127.0.0.1:0 answers each request with the
//! next step's recorded response when the request matches it — method, path
//! (uuids are the recorded ones), query, the recorded body's essential
//! fields and the credentials — and otherwise records a mismatch and
//! answers 599. [`Replay::finish`] fails the test on any mismatch, any
//! request beyond the steps and any step not asked for.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
struct Cassette {
    interactions: Vec<RawInteraction>,
}

#[derive(Debug, Deserialize)]
struct RawInteraction {
    request: RawRequest,
    response: RawResponse,
}

#[derive(Debug, Deserialize)]
struct RawRequest {
    #[serde(default)]
    body: String,
    url: String,
    method: String,
}

#[derive(Debug, Deserialize)]
struct RawResponse {
    #[serde(default)]
    body: String,
    code: u16,
}

/// One recorded interaction.
#[derive(Debug, Clone)]
pub struct Interaction {
    /// Where it comes from (`cassette#index`).
    pub origin: String,
    /// The request's method.
    pub method: String,
    /// The request's path (`/1.3/...`).
    pub path: String,
    /// The request's query pairs, decoded.
    pub query: Vec<(String, String)>,
    /// The request's body (Null when empty).
    pub body: Value,
    /// The response's status.
    pub code: u16,
    /// The response's body, as recorded.
    pub response: String,
}

/// The interactions of `tests/fixtures/<name>.yaml`.
pub fn cassette(name: &str) -> Vec<Interaction> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let cassette: Cassette =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", file.display()));
    cassette
        .interactions
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let url = raw
                .request
                .url
                .strip_prefix("https://api.upcloud.com")
                .unwrap_or_else(|| panic!("{name}#{i}: not an api.upcloud.com URL: {}", raw.request.url));
            let (path, query) = url.split_once('?').unwrap_or((url, ""));
            Interaction {
                origin: format!("{name}#{i}"),
                method: raw.request.method,
                path: path.to_string(),
                query: decode_query(query),
                body: if raw.request.body.trim().is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&raw.request.body)
                        .unwrap_or_else(|e| panic!("{name}#{i}: request body is not JSON: {e}"))
                },
                code: raw.response.code,
                response: raw.response.body,
            }
        })
        .collect()
}

fn decode_query(query: &str) -> Vec<(String, String)> {
    let parsed: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    parsed
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A field of a request body that must be as recorded: where it is in the
/// recorded body and where in drover's (JSON pointers), or a value drawn
/// from both by a function (for fields whose place in a list differs).
pub enum Essential {
    /// The same pointer in both.
    Same(&'static str),
    /// A value found by a function in both.
    Found(&'static str, fn(&Value) -> Option<Value>),
}

/// What the query must be.
pub enum Query {
    /// As recorded.
    Recorded,
    /// These pairs: the query's values are drover's own (a label filter
    /// naming drover's labels), the recorded answer is what the real
    /// service gave a query of that shape.
    Drover(Vec<(String, String)>),
}

/// One expected request and its recorded answer.
pub struct Step {
    interaction: Interaction,
    essential: Vec<Essential>,
    query: Query,
}

impl Step {
    /// Interaction `index` of `cassette`, its query as recorded and no body
    /// fields compared (GET, DELETE).
    pub fn new(cassette: &[Interaction], index: usize) -> Step {
        Step {
            interaction: cassette[index].clone(),
            essential: Vec::new(),
            query: Query::Recorded,
        }
    }

    /// These body fields must be as recorded.
    pub fn essential(mut self, fields: Vec<Essential>) -> Step {
        for field in &fields {
            let found = match field {
                Essential::Same(p) => self.interaction.body.pointer(p).cloned(),
                Essential::Found(_, f) => f(&self.interaction.body),
            };
            let name = match field {
                Essential::Same(p) | Essential::Found(p, _) => p,
            };
            assert!(
                found.is_some(),
                "{}: the recorded request has no {name}: a test must compare recorded fields",
                self.interaction.origin
            );
        }
        self.essential = fields;
        self
    }

    /// The query drover sends instead of the recorded one.
    pub fn drover_query(mut self, pairs: &[(&str, &str)]) -> Step {
        self.query = Query::Drover(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        self
    }

    fn check(&self, method: &Method, uri: &Uri, body: &Value) -> Result<(), String> {
        let want = &self.interaction;
        let mut problems = Vec::new();
        if method.as_str() != want.method {
            problems.push(format!("method {method}, recorded {}", want.method));
        }
        if uri.path() != want.path {
            problems.push(format!("path {}, recorded {}", uri.path(), want.path));
        }
        let query = decode_query(uri.query().unwrap_or(""));
        let expected = match &self.query {
            Query::Recorded => &want.query,
            Query::Drover(pairs) => pairs,
        };
        if &query != expected {
            problems.push(format!("query {query:?}, expected {expected:?}"));
        }
        for field in &self.essential {
            let (name, recorded, sent) = match field {
                Essential::Same(p) => (*p, want.body.pointer(p).cloned(), body.pointer(p).cloned()),
                Essential::Found(name, f) => (*name, f(&want.body), f(body)),
            };
            if recorded != sent {
                problems.push(format!("{name} is {sent:?}, recorded {recorded:?}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} {} does not match {}: {}",
                method,
                uri,
                want.origin,
                problems.join("; ")
            ))
        }
    }
}

/// A request drover made.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Body (Null when empty).
    pub body: Value,
}

#[derive(Default)]
struct State {
    steps: VecDeque<Step>,
    mismatches: Vec<String>,
    requests: Vec<Request>,
}

/// A replay server.
pub struct Replay {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    authorization: String,
    server: tokio::task::JoinHandle<()>,
}

impl Replay {
    /// Serves `steps` in order to requests carrying `authorization` (the
    /// whole header value).
    pub async fn start(steps: Vec<Step>, authorization: &str) -> Replay {
        let state = Arc::new(Mutex::new(State {
            steps: steps.into(),
            ..State::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = state.clone();
        let auth = authorization.to_string();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = shared.clone();
            let auth = auth.clone();
            async move { answer(&state, &auth, method, uri, headers, body) }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Replay {
            addr,
            state,
            authorization: authorization.to_string(),
            server,
        }
    }

    /// The API base URL to give the provider.
    pub fn url(&self) -> String {
        format!("http://{}/1.3", self.addr)
    }

    /// The requests made so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().expect("replay state").requests.clone()
    }

    /// Fails unless every request matched and every step was asked for.
    pub fn finish(self) {
        let state = self.state.lock().expect("replay state");
        let left: Vec<String> = state.steps.iter().map(|s| s.interaction.origin.clone()).collect();
        let mut problems = state.mismatches.clone();
        if !left.is_empty() {
            problems.push(format!("recorded interactions never asked for: {}", left.join(", ")));
        }
        self.server.abort();
        assert!(problems.is_empty(), "replay failed:\n  {}", problems.join("\n  "));
    }
}

fn answer(
    state: &Mutex<State>,
    auth: &str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let mut state = state.lock().expect("replay state");
    let sent: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    state.requests.push(Request {
        method: method.to_string(),
        uri: uri.to_string(),
        body: sent.clone(),
    });
    let json = ("content-type", "application/json; charset=UTF-8");
    let refuse = |state: &mut State, why: String| {
        state.mismatches.push(why.clone());
        (StatusCode::from_u16(599).expect("599"), [json], why)
    };
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(auth) {
        return refuse(&mut state, format!("{method} {uri}: not the test's credentials"));
    }
    let Some(step) = state.steps.pop_front() else {
        return refuse(
            &mut state,
            format!("{method} {uri}: a request beyond the recorded ones"),
        );
    };
    if let Err(why) = step.check(&method, &uri, &sent) {
        return refuse(&mut state, why);
    }
    let status = StatusCode::from_u16(step.interaction.code).expect("recorded status");
    (status, [json], step.interaction.response)
}
