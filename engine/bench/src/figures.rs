//! The figures a benchmark reports, and the JSON file it writes with
//! `--json FILE` (read by `scripts/bench.py`, which writes BENCHMARKS.md).
//!
//! Layout of the file (format 1):
//!
//! ```text
//! { "bench": "exec", "format": 1, "title": "...",
//!   "command": "drover-bench-exec --servers 1000 ...",
//!   "started_unix": 1732400000.0, "duration_s": 12.3,
//!   "params": { ...the arguments... },
//!   "headline": [ Headline, ... ],        one row each in the top table
//!   "results": { ...everything measured, per benchmark... } }
//! ```
//!
//! A [`Stat`] is `{"median", "min", "max", "n", "unit", "samples"}`. A
//! [`Headline`] is `{"id", "what", "unit", "better": "lower"|"higher",
//! "drover": Figure, "peers": [Peer], "limit": Limit|null,
//! "target": Target|null, "note"}`, where a Figure is `{"value", "min",
//! "max", "n", "estimate"}` (`estimate`: null when measured, else how it
//! was estimated), a Peer is `{"name", "figure": Figure, "ratio",
//! "beside": {"what", "figure": Figure, "ratio"}|null}` (`beside`: the
//! same peer measured otherwise, shown next to the figure the ratio is
//! judged on, e.g. with OpenSSH's default key exchange), a Limit `{"what",
//! "figure": Figure, "share"}` and a Target `{"what", "met"}` (`met`:
//! true or false only when every figure it is judged on was measured in
//! this run; null otherwise: "not measured"). Ratios are always "how many
//! times better drover is": peer ÷
//! drover for times, drover ÷ peer for rates; `share` is how close drover
//! gets to the physical limit: limit ÷ drover for times, drover ÷ limit
//! for rates (1.0: at the limit).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// The median; of an even count, the mean of the two middle values.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let k = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[k - 1] + s[k]) / 2.0
    } else {
        s[k]
    }
}

/// The value at quantile `p` (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Samples of one measured quantity, in one unit.
#[derive(Debug, Clone)]
pub struct Stat {
    /// "s", "ms", "tasks/s", "MiB", ...
    pub unit: &'static str,
    /// Every sample, in measurement order.
    pub samples: Vec<f64>,
}

impl Stat {
    /// Samples in `unit`.
    pub fn new(unit: &'static str, samples: Vec<f64>) -> Stat {
        Stat { unit, samples }
    }

    /// Durations in milliseconds.
    pub fn ms(v: &[Duration]) -> Stat {
        Stat::new("ms", v.iter().map(|d| d.as_secs_f64() * 1e3).collect())
    }

    /// Durations in seconds.
    pub fn secs(v: &[Duration]) -> Stat {
        Stat::new("s", v.iter().map(Duration::as_secs_f64).collect())
    }

    /// The median (NaN without samples).
    pub fn median(&self) -> f64 {
        median(&self.samples)
    }

    /// The smallest sample.
    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::NAN, f64::min)
    }

    /// The largest sample.
    pub fn max(&self) -> f64 {
        self.samples.iter().copied().fold(f64::NAN, f64::max)
    }

    /// `median (min–max)` with `prec` decimals.
    pub fn spread(&self, prec: usize) -> String {
        format!("{:.prec$} ({:.prec$}–{:.prec$})", self.median(), self.min(), self.max())
    }

    /// The JSON form.
    pub fn json(&self) -> Value {
        json!({
            "median": num(self.median()),
            "min": num(self.min()),
            "max": num(self.max()),
            "n": self.samples.len(),
            "unit": self.unit,
            "samples": self.samples.iter().map(|v| num(*v)).collect::<Vec<_>>(),
        })
    }

    /// The headline figure: median, min, max, n.
    pub fn figure(&self) -> Figure {
        Figure {
            value: self.median(),
            min: Some(self.min()),
            max: Some(self.max()),
            n: self.samples.len(),
            estimate: None,
        }
    }
}

/// `n` with thousands separated by commas: 11,000.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A finite number, or null (JSON has no NaN).
pub fn num(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

/// A figure in the top table: a median of n runs, or an estimate.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The median, or the estimated value.
    pub value: f64,
    /// The smallest run, when measured.
    pub min: Option<f64>,
    /// The largest run, when measured.
    pub max: Option<f64>,
    /// Runs; 0 for an estimate.
    pub n: usize,
    /// How the value was estimated; None when measured.
    pub estimate: Option<String>,
}

impl Figure {
    /// One measured value (a single run, or a figure computed from others).
    pub fn single(value: f64) -> Figure {
        Figure {
            value,
            min: None,
            max: None,
            n: 1,
            estimate: None,
        }
    }

    /// An estimate, saying how it was made.
    pub fn estimated(value: f64, how: impl Into<String>) -> Figure {
        Figure {
            value,
            min: None,
            max: None,
            n: 0,
            estimate: Some(how.into()),
        }
    }

    fn json(&self) -> Value {
        json!({
            "value": num(self.value),
            "min": self.min.map_or(Value::Null, num),
            "max": self.max.map_or(Value::Null, num),
            "n": self.n,
            "estimate": self.estimate,
        })
    }
}

/// A peer's figure in a headline, and the same peer measured otherwise.
#[derive(Debug, Clone)]
struct Peer {
    name: String,
    figure: Figure,
    beside: Option<(String, Figure)>,
}

/// Which way is better for a headline's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Times, memory.
    Lower,
    /// Rates.
    Higher,
}

/// One row of the top table: drover's figure, each peer's, the physical
/// limit, the target.
#[derive(Debug, Clone)]
pub struct Headline {
    id: String,
    what: String,
    unit: &'static str,
    better: Better,
    drover: Figure,
    peers: Vec<Peer>,
    limit: Option<(String, Figure)>,
    target: Option<(String, Option<bool>)>,
    note: Option<String>,
}

impl Headline {
    /// A row: `what` is measured in `unit`, drover's figure is `drover`.
    pub fn new(
        id: impl Into<String>,
        what: impl Into<String>,
        unit: &'static str,
        better: Better,
        drover: Figure,
    ) -> Self {
        Headline {
            id: id.into(),
            what: what.into(),
            unit,
            better,
            drover,
            peers: Vec::new(),
            limit: None,
            target: None,
            note: None,
        }
    }

    /// A peer (or baseline) measured in the same run, same unit.
    pub fn peer(mut self, name: impl Into<String>, figure: Figure) -> Self {
        self.peers.push(Peer {
            name: name.into(),
            figure,
            beside: None,
        });
        self
    }

    /// A peer whose ratio is judged on `figure`, with the same peer
    /// measured otherwise (`beside`: what differs, its figure) shown next
    /// to it.
    pub fn peer_beside(mut self, name: impl Into<String>, figure: Figure, beside: Option<(String, Figure)>) -> Self {
        self.peers.push(Peer {
            name: name.into(),
            figure,
            beside,
        });
        self
    }

    /// The physical limit on this machine, same unit.
    pub fn limit(mut self, what: impl Into<String>, figure: Figure) -> Self {
        self.limit = Some((what.into(), figure));
        self
    }

    /// The project's target and whether this run met it, judged on
    /// figures measured in this run.
    pub fn target(mut self, what: impl Into<String>, met: bool) -> Self {
        self.target = Some((what.into(), Some(met)));
        self
    }

    /// The project's target, not judged: a figure it needs was not
    /// measured in this run (skipped, or only estimated).
    pub fn target_not_measured(mut self, what: impl Into<String>) -> Self {
        self.target = Some((what.into(), None));
        self
    }

    /// A remark shown under the top table.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// How many times better drover is than `other` (> 1: drover better).
    pub fn ratio(&self, other: &Figure) -> f64 {
        match self.better {
            Better::Lower => other.value / self.drover.value,
            Better::Higher => self.drover.value / other.value,
        }
    }

    /// The JSON form.
    pub fn json(&self) -> Value {
        let share = self.limit.as_ref().map(|(_, l)| match self.better {
            Better::Lower => l.value / self.drover.value,
            Better::Higher => self.drover.value / l.value,
        });
        json!({
            "id": self.id,
            "what": self.what,
            "unit": self.unit,
            "better": match self.better { Better::Lower => "lower", Better::Higher => "higher" },
            "drover": self.drover.json(),
            "peers": self.peers.iter().map(|p| json!({
                "name": p.name,
                "figure": p.figure.json(),
                "ratio": num(self.ratio(&p.figure)),
                "beside": p.beside.as_ref().map(|(what, f)| json!({
                    "what": what,
                    "figure": f.json(),
                    "ratio": num(self.ratio(f)),
                })),
            })).collect::<Vec<_>>(),
            "limit": self.limit.as_ref().map(|(what, f)| json!({
                "what": what,
                "figure": f.json(),
                "share": share.map_or(Value::Null, num),
            })),
            "target": self.target.as_ref().map(|(what, met)| json!({"what": what, "met": met})),
            "note": self.note,
        })
    }
}

/// What one benchmark binary writes with `--json FILE`.
#[derive(Debug)]
pub struct Report {
    bench: &'static str,
    title: &'static str,
    started_unix: f64,
    started: Instant,
    /// The arguments, resolved (defaults included).
    pub params: Value,
    /// The rows of the top table.
    pub headlines: Vec<Headline>,
    /// Everything measured, as the benchmark lays it out.
    pub results: Value,
}

impl Report {
    /// Starts the clock of benchmark `bench` ("exec", "fleet", ...).
    pub fn new(bench: &'static str, title: &'static str) -> Report {
        Report {
            bench,
            title,
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            started: Instant::now(),
            params: json!({}),
            headlines: Vec::new(),
            results: json!({}),
        }
    }

    /// Writes the file (when a path was given), and says so.
    pub fn write(&self, path: Option<&Path>) -> Result<()> {
        self.save(path)?;
        if let Some(path) = path {
            println!("figures written to {}", path.display());
        }
        Ok(())
    }

    /// Writes the file (when a path was given), silently.
    pub fn save(&self, path: Option<&Path>) -> Result<()> {
        let Some(path) = path else {
            return Ok(());
        };
        let command: Vec<String> = std::env::args().collect();
        let v = json!({
            "bench": self.bench,
            "format": 1,
            "title": self.title,
            "command": command.join(" "),
            "started_unix": self.started_unix,
            "duration_s": self.started.elapsed().as_secs_f64(),
            "params": self.params,
            "headline": self.headlines.iter().map(Headline::json).collect::<Vec<_>>(),
            "results": self.results,
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Written whole, then renamed: a reader never sees half a file.
        let tmp = path.with_extension("json.partial");
        std::fs::write(&tmp, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// Peak resident set of this process so far (VmHWM), MiB.
pub fn peak_rss_mib(pid: Option<u32>) -> f64 {
    let file = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1100), "1,100");
        assert_eq!(thousands(11000), "11,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn ratios_say_how_many_times_better_drover_is() {
        let time = Headline::new("t", "a time", "s", Better::Lower, Figure::single(2.0))
            .peer("slow", Figure::single(6.0))
            .limit("floor", Figure::single(1.0))
            .json();
        assert_eq!(time["peers"][0]["ratio"], 3.0);
        assert_eq!(time["limit"]["share"], 0.5);
        let rate = Headline::new("r", "a rate", "tasks/s", Better::Higher, Figure::single(300.0))
            .peer("slow", Figure::single(100.0))
            .limit("ceiling", Figure::single(600.0))
            .json();
        assert_eq!(rate["peers"][0]["ratio"], 3.0);
        assert_eq!(rate["limit"]["share"], 0.5);
    }

    #[test]
    fn a_peer_measured_otherwise_is_beside_and_a_target_can_be_unmeasured() {
        let h = Headline::new("t", "a time", "s", Better::Lower, Figure::single(2.0))
            .peer_beside(
                "p",
                Figure::single(4.0),
                Some(("other kex".into(), Figure::single(8.0))),
            )
            .target_not_measured(">= 5× q (not measured)")
            .json();
        assert_eq!(h["peers"][0]["ratio"], 2.0);
        assert_eq!(h["peers"][0]["beside"]["ratio"], 4.0);
        assert!(h["target"]["met"].is_null());
        let met = Headline::new("t", "a time", "s", Better::Lower, Figure::single(2.0))
            .target("x", true)
            .json();
        assert_eq!(met["target"]["met"], true);
    }

    #[test]
    fn a_stat_without_samples_is_null_in_json() {
        let s = Stat::new("ms", vec![]).json();
        assert!(s["median"].is_null());
        assert_eq!(s["n"], 0);
    }
}
