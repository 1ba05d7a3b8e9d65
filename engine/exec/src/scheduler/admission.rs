//! Admission: whether one more task (or compensation) may start now.
//!
//! The limits, all checked at dispatch: the global bound (`max_parallel`,
//! 1 for a sequential workflow), the operation's bound (`max_parallel`, 1
//! when `parallel = False`), and for provider calls the provider's
//! `batch_size` (calls in flight), `api_rate_limit` (a token bucket) and
//! `shared_resources` (calls about servers of one zone that share a
//! resource run one at a time). Forward work and rollback compensations go
//! through the same limits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use drover_core::plan::ProviderLimit;
use tokio::time::Instant;

/// What a task needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Need {
    /// Its operation.
    pub op: usize,
    /// The provider it calls, if it is a provider call.
    pub provider: Option<String>,
    /// The shared resources it takes while it runs.
    pub resources: Vec<String>,
}

/// Why a task may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The global bound is reached: nothing else may start.
    Full,
    /// The operation's bound is reached: nothing else of it may start.
    OperationFull,
    /// Its provider, or a resource it shares, is busy: another task may.
    Busy,
    /// Its provider's rate limit: not before this instant.
    RateLimited(Instant),
}

/// A token bucket for a provider's api_rate_limit.
#[derive(Debug)]
pub(super) struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new(rate: f64, now: Instant) -> Bucket {
        let capacity = rate.max(1.0);
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.at = now;
    }

    pub(super) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub(super) fn next(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.rate)
    }
}

/// The counters of what runs, and the limits.
#[derive(Debug)]
pub(super) struct Admission {
    global: usize,
    op_limit: Vec<usize>,
    limits: BTreeMap<String, ProviderLimit>,
    running: usize,
    by_op: Vec<usize>,
    by_provider: HashMap<String, usize>,
    buckets: HashMap<String, Bucket>,
    held: HashSet<String>,
}

impl Admission {
    pub(super) fn new(global: usize, op_limit: Vec<usize>, limits: BTreeMap<String, ProviderLimit>) -> Admission {
        let ops = op_limit.len();
        Admission {
            global: global.max(1),
            op_limit,
            limits,
            running: 0,
            by_op: vec![0; ops],
            by_provider: HashMap::new(),
            buckets: HashMap::new(),
            held: HashSet::new(),
        }
    }

    /// Tasks running now.
    #[cfg(test)]
    pub(super) fn running(&self) -> usize {
        self.running
    }

    /// Whether nothing more may start at all.
    pub(super) fn full(&self) -> bool {
        self.running >= self.global
    }

    /// The shared resources a call of `provider` about a server in `zone`
    /// takes.
    pub(super) fn resources_of(&self, provider: &str, zone: Option<&str>) -> Vec<String> {
        self.limits.get(provider).map_or_else(Vec::new, |l| {
            l.shared_resources
                .iter()
                .map(|r| format!("{provider}/{r}/{}", zone.unwrap_or("-")))
                .collect()
        })
    }

    /// Take a slot for `need`, or say why not.
    pub(super) fn admit(&mut self, need: &Need, now: Instant) -> Result<(), Refusal> {
        if self.running >= self.global {
            return Err(Refusal::Full);
        }
        if self.by_op[need.op] >= self.op_limit[need.op] {
            return Err(Refusal::OperationFull);
        }
        if need.resources.iter().any(|r| self.held.contains(r)) {
            return Err(Refusal::Busy);
        }
        if let Some(p) = &need.provider
            && let Some(l) = self.limits.get(p)
        {
            if self.by_provider.get(p).copied().unwrap_or(0) >= l.batch_size as usize {
                return Err(Refusal::Busy);
            }
            let bucket = self
                .buckets
                .entry(p.clone())
                .or_insert_with(|| Bucket::new(l.api_rate_limit, now));
            if !bucket.take(now) {
                return Err(Refusal::RateLimited(bucket.next()));
            }
        }
        self.running += 1;
        self.by_op[need.op] += 1;
        if let Some(p) = &need.provider {
            *self.by_provider.entry(p.clone()).or_insert(0) += 1;
        }
        self.held.extend(need.resources.iter().cloned());
        Ok(())
    }

    /// Give back the slot taken for `need`.
    pub(super) fn release(&mut self, need: &Need) {
        self.running = self.running.saturating_sub(1);
        self.by_op[need.op] = self.by_op[need.op].saturating_sub(1);
        if let Some(p) = &need.provider
            && let Some(c) = self.by_provider.get_mut(p)
        {
            *c = c.saturating_sub(1);
        }
        for r in &need.resources {
            self.held.remove(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(batch: u32, rate: f64, shared: &[&str]) -> BTreeMap<String, ProviderLimit> {
        BTreeMap::from([(
            "p".to_string(),
            ProviderLimit {
                batch_size: batch,
                api_rate_limit: rate,
                shared_resources: shared.iter().map(|s| s.to_string()).collect(),
            },
        )])
    }

    fn call(resources: Vec<String>) -> Need {
        Need {
            op: 0,
            provider: Some("p".into()),
            resources,
        }
    }

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, t0);
        assert!(b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert_eq!(b.next(), t0 + Duration::from_millis(500));
        assert!(b.take(t0 + Duration::from_millis(500)));
    }

    #[test]
    fn each_limit_refuses_with_its_reason_and_release_gives_back() {
        let t0 = Instant::now();
        let mut a = Admission::new(3, vec![2], limits(1, 100.0, &[]));
        let plain = Need {
            op: 0,
            provider: None,
            resources: Vec::new(),
        };
        assert_eq!(a.admit(&call(Vec::new()), t0), Ok(()));
        assert_eq!(a.admit(&call(Vec::new()), t0), Err(Refusal::Busy), "batch_size 1");
        assert_eq!(a.admit(&plain, t0), Ok(()));
        assert_eq!(a.admit(&plain, t0), Err(Refusal::OperationFull));
        a.release(&call(Vec::new()));
        assert_eq!(a.running(), 1);
        assert_eq!(a.admit(&call(Vec::new()), t0), Ok(()));
        let mut g = Admission::new(1, vec![5], BTreeMap::new());
        assert_eq!(g.admit(&plain, t0), Ok(()));
        assert!(g.full());
        assert_eq!(g.admit(&plain, t0), Err(Refusal::Full));
    }

    #[test]
    fn servers_sharing_a_resource_in_a_zone_are_serialised_across_zones_not() {
        let t0 = Instant::now();
        let mut a = Admission::new(10, vec![10], limits(10, 100.0, &["vpc"]));
        let fra = a.resources_of("p", Some("fra"));
        let hel = a.resources_of("p", Some("hel"));
        assert_eq!(fra, ["p/vpc/fra"]);
        assert_eq!(a.admit(&call(fra.clone()), t0), Ok(()));
        assert_eq!(a.admit(&call(fra.clone()), t0), Err(Refusal::Busy));
        assert_eq!(a.admit(&call(hel), t0), Ok(()));
        a.release(&call(fra.clone()));
        assert_eq!(a.admit(&call(fra), t0), Ok(()));
    }

    #[test]
    fn the_rate_limit_says_when_to_try_again() {
        let t0 = Instant::now();
        let mut a = Admission::new(10, vec![10], limits(10, 2.0, &[]));
        assert_eq!(a.admit(&call(Vec::new()), t0), Ok(()));
        assert_eq!(a.admit(&call(Vec::new()), t0), Ok(()));
        assert_eq!(
            a.admit(&call(Vec::new()), t0),
            Err(Refusal::RateLimited(t0 + Duration::from_millis(500)))
        );
    }
}
