//! A real `drover serve` for the API benchmarks: the release binary next to
//! the benchmark's, on a free loopback port, its state and logs in a
//! directory of the benchmark's; and a client carrying the admin token the
//! server generated there.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A `drover serve` child, killed when dropped.
#[derive(Debug)]
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its base URL.
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The drover binary built next to the running benchmark.
pub fn drover_binary() -> Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("drover");
    if !bin.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p drover-cli)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Start `drover serve` with its state and logs in `dir` and `args` added;
/// returns once it listens.
pub fn start<I, S>(dir: &Path, args: I) -> Result<Server>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(drover_binary()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "warn"])
        .arg("--state")
        .arg(dir.join("state.db"))
        .arg("--logs")
        .arg(dir.join("logs"))
        .args(args)
        .env_remove("DROVER_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting drover serve")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let Some(line) = lines.next() else {
            bail!("drover serve exited before listening");
        };
        let line = line?;
        if let Some(rest) = line.strip_prefix("drover: listening on ") {
            break rest.trim().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Ok(Server { child, url })
}

/// A client sending the server's admin token, which it generated next to
/// its state in `dir` on its first start (submissions by path need admin).
pub fn client_for(dir: &Path) -> Result<reqwest::Client> {
    let token_file = dir.join("api-token");
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("the server's token file {}", token_file.display()))?;
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .context("the server's token is not a header value")?;
    auth.set_sensitive(true);
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .default_headers([(reqwest::header::AUTHORIZATION, auth)].into_iter().collect())
        .build()?)
}
