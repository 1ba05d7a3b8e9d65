//! A minimal W3C WebDriver client over reqwest, for the dashboard's tests
//! in a real headless Chromium: `chromedriver` is started as a child on a
//! free loopback port, one session is opened, and everything (the driver,
//! the browser and its helpers) is killed when the [`Browser`] is dropped,
//! also when a test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The W3C key naming an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long a WebDriver command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// Headless Chromium driven by chromedriver.
pub struct Browser {
    driver: Child,
    client: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    /// The browser's own profile directory: every process of this browser
    /// names it on its command line (how Drop finds them all).
    profile: tempfile::TempDir,
}

/// An element found in the page.
#[derive(Debug, Clone)]
pub struct Element(String);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl Browser {
    /// Start chromedriver and open a session of headless Chromium.
    pub async fn start() -> Browser {
        let port = free_port();
        let profile = tempfile::Builder::new()
            .prefix("drover-chromium-")
            .tempdir()
            .expect("profile dir");
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).expect("driver log");
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // A process group of its own: Drop kills the driver and every
        // child it started at once.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd
            .spawn()
            .expect("start chromedriver (Debian: apt-get install chromium chromium-driver)");
        let client = reqwest::Client::builder()
            .timeout(COMMAND_LIMIT)
            .build()
            .expect("client");
        let mut b = Browser {
            driver,
            client,
            session: String::new(),
            profile,
        };
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match b.client.get(format!("{base}/status")).send().await {
                Ok(r) if r.status().is_success() => break,
                _ => {
                    assert!(Instant::now() < deadline, "chromedriver did not start within 30 s");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let profile_dir = b.profile.path().join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                    "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                    "--disable-extensions", "--disable-background-networking", "--disable-sync",
                    "--hide-scrollbars", "--force-color-profile=srgb",
                    format!("--user-data-dir={}", profile_dir.display()),
                ],
            },
            "unhandledPromptBehavior": "ignore",
        }}});
        let v = b.raw("POST", &format!("{base}/session"), Some(caps)).await;
        let id = v["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}"));
        b.session = format!("{base}/session/{id}");
        b
    }

    async fn raw(&self, method: &str, url: &str, body: Option<Value>) -> Value {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.client.request(m, url);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"));
        let text = resp.text().await.expect("WebDriver body");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("WebDriver answered not JSON ({e}): {text}"));
        v["value"].clone()
    }

    /// A command of this session; its value, or the WebDriver error as
    /// `Err(value)`.
    pub async fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let v = self.raw(method, &format!("{}{path}", self.session), body).await;
        if v.get("error").is_some_and(Value::is_string) {
            Err(v)
        } else {
            Ok(v)
        }
    }

    /// A command that must succeed.
    pub async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).await;
    }

    pub async fn set_window(&self, width: u32, height: u32) {
        self.cmd("POST", "/window/rect", Some(json!({"width": width, "height": height})))
            .await;
    }

    /// The first element matching a CSS selector, if any.
    pub async fn find(&self, css: &str) -> Option<Element> {
        let v = self
            .try_cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})))
            .await
            .ok()?;
        Some(Element(v[ELEMENT].as_str().expect("element id").to_string()))
    }

    /// How many elements match.
    pub async fn count(&self, css: &str) -> usize {
        self.script("return document.querySelectorAll(arguments[0]).length", json!([css]))
            .await
            .as_u64()
            .unwrap_or(0) as usize
    }

    /// Wait for an element matching `css`.
    pub async fn wait_for(&self, css: &str, limit: Duration) -> Element {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css:?} within {limit:?}; page text:\n{}",
                self.body_text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn click(&self, e: &Element) {
        self.cmd("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await;
    }

    /// Click the element matching `css` (waiting for it).
    pub async fn click_css(&self, css: &str, limit: Duration) {
        let e = self.wait_for(css, limit).await;
        self.click(&e).await;
    }

    pub async fn send_keys(&self, e: &Element, text: &str) {
        self.cmd("POST", &format!("/element/{}/value", e.0), Some(json!({"text": text})))
            .await;
    }

    pub async fn clear(&self, e: &Element) {
        self.cmd("POST", &format!("/element/{}/clear", e.0), Some(json!({})))
            .await;
    }

    pub async fn text(&self, e: &Element) -> String {
        self.cmd("GET", &format!("/element/{}/text", e.0), None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The page's visible text.
    pub async fn body_text(&self) -> String {
        match self
            .try_cmd(
                "POST",
                "/execute/sync",
                Some(json!({"script": "return document.body ? document.body.innerText : ''", "args": []})),
            )
            .await
        {
            Ok(v) => v.as_str().unwrap_or("").to_string(),
            Err(e) => format!("(no text: {e})"),
        }
    }

    /// Run a script in the page (its body, `arguments[i]` for `args`).
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
            .await
    }

    /// Poll `script` until it returns something truthy; that value.
    pub async fn wait_js(&self, what: &str, script: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self
                .try_cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
                .await
                .unwrap_or(Value::Null);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "not {what} within {limit:?}; page text:\n{}",
                self.body_text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Accept the open `confirm()` (waiting for it); its text.
    pub async fn accept_alert(&self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(text) = self.try_cmd("GET", "/alert/text", None).await {
                self.cmd("POST", "/alert/accept", Some(json!({}))).await;
                return text.as_str().unwrap_or("").to_string();
            }
            assert!(Instant::now() < deadline, "no dialog within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Save a PNG screenshot of the window to `path` (always rewritten).
    pub async fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 screenshot"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// End the session politely (Drop kills whatever is left anyway).
    pub async fn quit(self) {
        let _ = self.try_cmd("DELETE", "", None).await;
    }
}

/// Debian names it chromium; elsewhere it may be google-chrome.
fn chromium() -> PathBuf {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .unwrap_or_else(|| PathBuf::from("chromium"))
}

/// The pids (this process's excepted) whose command line names `needle`:
/// with a test's own temporary directory as the needle, processes the test
/// started.
pub fn pids_naming(needle: &str) -> Vec<i32> {
    let me = i32::try_from(std::process::id()).expect("pid");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid != me
            && let Ok(cmdline) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

impl Drop for Browser {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        let pid = i32::try_from(self.driver.id()).expect("pid");
        // The driver's process group (it, and the browser unless the
        // browser made a group of its own)...
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // ...and every process of this browser, found by its profile.
        let needle = self.profile.path().display().to_string();
        for _ in 0..50 {
            let pids = pids_naming(&needle);
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
