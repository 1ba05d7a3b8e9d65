//! When a schedule's slots fall, and what to do about the ones due: pure
//! functions of the schedule, the last slot acted on, the server's start
//! and the time now. No clock, no store: the loop passes all of it in.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// At most this many slots are counted when deciding (an every-second
/// schedule after a week down has 604,800): past it, the count says "at
/// least".
pub const MAX_COUNTED: i64 = 100_000;

/// A schedule's cron expression, read in its time zone.
#[derive(Debug, Clone)]
pub struct Timing {
    cron: Cron,
    tz: Tz,
}

impl Timing {
    /// The timing of `cron` (5 fields, or 6 with seconds first) in the
    /// IANA time zone `timezone`; or what is wrong with either, naming
    /// the field.
    pub fn parse(cron: &str, timezone: &str) -> Result<Timing, String> {
        let tz = Tz::from_str(timezone.trim()).map_err(|_| {
            format!("timezone {timezone:?} is not an IANA time zone name; give e.g. \"UTC\" or \"Europe/Helsinki\"")
        })?;
        if cron.split_whitespace().count() > 6 {
            return Err(format!(
                "cron {cron:?} has more than 6 fields; give 5 (minute hour day month weekday) or 6 (seconds first)"
            ));
        }
        let parsed = Cron::from_str(cron.trim()).map_err(|e| {
            format!(
                "cron {cron:?} is not a cron expression ({e}); give 5 fields (minute hour day month weekday) or 6 \
                 (seconds first), e.g. \"*/2 * * * * *\""
            )
        })?;
        let timing = Timing { cron: parsed, tz };
        // One that never matches (30 February) is refused now, not found
        // out by a loop that never wakes.
        if timing.next_after(0).is_none() && timing.next_after(now_ish()).is_none() {
            return Err(format!("cron {cron:?} never matches a time"));
        }
        Ok(timing)
    }

    /// The time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The first slot strictly after `ms` (ms since the epoch); None if
    /// there is none.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let from = self.at_second(ms)?;
        self.cron
            .find_next_occurrence(&from, false)
            .ok()
            .map(|t| t.timestamp() * 1000)
            .filter(|&t| t > ms)
    }

    /// The last slot at or before `ms`; None if there is none.
    pub fn last_at_or_before(&self, ms: i64) -> Option<i64> {
        let from = self.at_second(ms)?;
        self.cron
            .find_previous_occurrence(&from, true)
            .ok()
            .map(|t| t.timestamp() * 1000)
            .filter(|&t| t <= ms)
    }

    /// `ms` in the schedule's zone, cut to its second: slots fall on
    /// whole seconds, and croner keeps a fraction it is given.
    fn at_second(&self, ms: i64) -> Option<DateTime<Tz>> {
        let t = DateTime::<Utc>::from_timestamp(ms.div_euclid(1000), 0)?;
        Some(self.tz.from_utc_datetime(&t.naive_utc()))
    }

    /// The slots in (`after`, `until`]: how many (at most
    /// [`MAX_COUNTED`]) and the last.
    pub fn slots_between(&self, after: i64, until: i64) -> (i64, Option<i64>) {
        if until <= after {
            return (0, None);
        }
        let Some(last) = self.last_at_or_before(until).filter(|&l| l > after) else {
            return (0, None);
        };
        let mut n = 0;
        let mut at = after;
        while let Some(next) = self.next_after(at) {
            if next > until || n >= MAX_COUNTED {
                break;
            }
            n += 1;
            at = next;
        }
        (n.max(1), Some(last))
    }

    /// `ms` as an RFC 3339 time in the schedule's time zone.
    pub fn show(&self, ms: i64) -> String {
        show(ms, self.tz)
    }
}

/// `ms` as an RFC 3339 time in `tz`.
pub fn show(ms: i64, tz: Tz) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t
            .with_timezone(&tz)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
        None => format!("{ms} ms"),
    }
}

/// A time of a few years ago or now, for checking that an expression
/// matches some time at all (a wrong clock changes nothing here).
fn now_ish() -> i64 {
    1_767_225_600_000 // 2026-01-01T00:00:00Z
}

/// What a slot does while the schedule's previous run is still active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Record the slot as skipped; no run.
    Skip,
    /// Queue a run anyway (it waits in the orchestrator's queue).
    Queue,
}

/// What the slots missed while the server was down do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Record them as missed; none runs.
    Skip,
    /// One run, for the latest of them.
    RunOnce,
}

/// What to do next for a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due: look again at this time (None: no slot ever
    /// comes).
    Wait(Option<i64>),
    /// Act on the slot at `slot_ms`, standing for `count` slots up to it.
    Act {
        /// The slot, ms since the epoch.
        slot_ms: i64,
        /// How many slots this stands for (the missed ones, or ones the
        /// loop was too late for, with it).
        count: i64,
        /// Whether these slots passed while the server was down.
        missed: bool,
        /// Fire a run, or record them without one.
        fire: bool,
    },
}

/// The inputs of [`decide`] about one schedule.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    /// Slots after this are the schedule's to act on: the last slot
    /// acted on, or its creation (or last resume or change of timing),
    /// whichever is later.
    pub after_ms: i64,
    /// When this server started: slots at or before it (and after
    /// `after_ms`) passed while it was down.
    pub up_since_ms: i64,
    /// Now.
    pub now_ms: i64,
    /// Whether the schedule's last run is still queued or running.
    pub previous_active: bool,
}

/// What the schedule does next: act on the latest slot missed while the
/// server was down (run it once, or record them missed); else on the
/// latest slot due since (fire it, or skip it while the previous run is
/// active under overlap `skip`); else wait for the next slot.
///
/// Each `Act` is claimed as one slot by the caller; the next call (with
/// `after_ms` moved to it) goes on from there, so every slot is acted on
/// at most once whatever the timing of the calls.
pub fn decide(timing: &Timing, overlap: Overlap, missed: Missed, s: Situation) -> Decision {
    let down_until = s.up_since_ms.min(s.now_ms);
    let (n_missed, last_missed) = timing.slots_between(s.after_ms, down_until);
    if let Some(slot_ms) = last_missed {
        let fire = missed == Missed::RunOnce && !(s.previous_active && overlap == Overlap::Skip);
        return Decision::Act {
            slot_ms,
            count: n_missed,
            missed: true,
            fire,
        };
    }
    let (n_due, last_due) = timing.slots_between(s.after_ms.max(down_until), s.now_ms);
    if let Some(slot_ms) = last_due {
        return Decision::Act {
            slot_ms,
            count: n_due,
            missed: false,
            fire: !(s.previous_active && overlap == Overlap::Skip),
        };
    }
    Decision::Wait(timing.next_after(s.after_ms.max(s.now_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-06-01T12:00:00Z.
    const T0: i64 = 1_780_315_200_000;

    fn every_2s() -> Timing {
        Timing::parse("*/2 * * * * *", "UTC").expect("valid")
    }

    fn at(after_ms: i64, up_since_ms: i64, now_ms: i64, previous_active: bool) -> Situation {
        Situation {
            after_ms,
            up_since_ms,
            now_ms,
            previous_active,
        }
    }

    #[test]
    fn the_seconds_field_is_read_and_five_fields_mean_minutes() {
        let t = every_2s();
        assert_eq!(t.next_after(T0), Some(T0 + 2_000));
        assert_eq!(t.next_after(T0 + 1), Some(T0 + 2_000));
        let m = Timing::parse("*/5 * * * *", "UTC").expect("valid");
        assert_eq!(m.next_after(T0), Some(T0 + 300_000));
    }

    #[test]
    fn wrong_expressions_and_zones_are_refused_naming_the_field() {
        let e = Timing::parse("*/2 * * *", "UTC").expect_err("4 fields");
        assert!(e.contains("cron") && e.contains("5 fields"), "{e}");
        let e = Timing::parse("* * * * *", "Mars/Olympus").expect_err("zone");
        assert!(e.contains("timezone") && e.contains("Mars/Olympus"), "{e}");
        let e = Timing::parse("0 0 30 2 *", "UTC").expect_err("never");
        assert!(e.contains("never matches"), "{e}");
    }

    #[test]
    fn each_slot_is_acted_on_once_then_the_loop_waits_for_the_next() {
        let t = every_2s();
        // Created at T0, the server up since before: nothing due until T0+2s.
        let d = decide(&t, Overlap::Skip, Missed::Skip, at(T0, T0 - 60_000, T0 + 500, false));
        assert_eq!(d, Decision::Wait(Some(T0 + 2_000)));
        // At the slot (a little late): fire it.
        let d = decide(&t, Overlap::Skip, Missed::Skip, at(T0, T0 - 60_000, T0 + 2_010, false));
        assert_eq!(
            d,
            Decision::Act {
                slot_ms: T0 + 2_000,
                count: 1,
                missed: false,
                fire: true
            }
        );
        // With that slot claimed, asking again at once: wait for the next.
        let d = decide(
            &t,
            Overlap::Skip,
            Missed::Skip,
            at(T0 + 2_000, T0 - 60_000, T0 + 2_020, true),
        );
        assert_eq!(d, Decision::Wait(Some(T0 + 4_000)));
        // Walking a minute in 137 ms steps acts on every slot exactly once.
        let mut after = T0;
        let mut acted = Vec::new();
        let mut now = T0;
        while now < T0 + 60_000 {
            now += 137;
            while let Decision::Act { slot_ms, .. } =
                decide(&t, Overlap::Queue, Missed::Skip, at(after, T0 - 1, now, false))
            {
                acted.push(slot_ms);
                after = slot_ms;
            }
        }
        let want: Vec<i64> = (1..=29).map(|k| T0 + 2_000 * k).collect();
        assert_eq!(acted[..29], want[..]);
    }

    #[test]
    fn a_late_loop_fires_the_latest_due_slot_once_counting_the_ones_it_was_late_for() {
        let t = every_2s();
        let d = decide(&t, Overlap::Skip, Missed::Skip, at(T0, T0 - 1, T0 + 6_500, false));
        assert_eq!(
            d,
            Decision::Act {
                slot_ms: T0 + 6_000,
                count: 3,
                missed: false,
                fire: true
            }
        );
    }

    #[test]
    fn overlap_skip_skips_a_slot_while_the_previous_run_is_active_and_queue_fires_it() {
        let t = every_2s();
        let d = decide(&t, Overlap::Skip, Missed::Skip, at(T0, T0 - 1, T0 + 2_000, true));
        assert_eq!(
            d,
            Decision::Act {
                slot_ms: T0 + 2_000,
                count: 1,
                missed: false,
                fire: false
            }
        );
        let d = decide(&t, Overlap::Queue, Missed::Skip, at(T0, T0 - 1, T0 + 2_000, true));
        assert!(matches!(d, Decision::Act { fire: true, .. }), "{d:?}");
    }

    #[test]
    fn slots_missed_while_down_are_recorded_missed_or_run_once_for_the_latest() {
        let t = every_2s();
        // Last slot acted on at T0+2s; down until T0+9.5s; now T0+9.6s.
        let s = at(T0 + 2_000, T0 + 9_500, T0 + 9_600, false);
        assert_eq!(
            decide(&t, Overlap::Skip, Missed::Skip, s),
            Decision::Act {
                slot_ms: T0 + 8_000,
                count: 3,
                missed: true,
                fire: false
            }
        );
        assert_eq!(
            decide(&t, Overlap::Skip, Missed::RunOnce, s),
            Decision::Act {
                slot_ms: T0 + 8_000,
                count: 3,
                missed: true,
                fire: true
            }
        );
        // Then (the missed ones claimed) the next slot after the start is
        // an ordinary one.
        let s = at(T0 + 8_000, T0 + 9_500, T0 + 10_001, false);
        assert_eq!(
            decide(&t, Overlap::Skip, Missed::RunOnce, s),
            Decision::Act {
                slot_ms: T0 + 10_000,
                count: 1,
                missed: false,
                fire: true
            }
        );
        // run-once still respects overlap skip: a run taken up from before
        // the restart is active.
        let s = at(T0 + 2_000, T0 + 9_500, T0 + 9_600, true);
        assert!(
            matches!(
                decide(&t, Overlap::Skip, Missed::RunOnce, s),
                Decision::Act {
                    missed: true,
                    fire: false,
                    ..
                }
            ),
            "overlap"
        );
    }

    #[test]
    fn time_zones_follow_daylight_saving_time() {
        // 09:00 in New York: 14:00Z in winter, 13:00Z after the switch of
        // 8 March 2026; a day of 23 hours between them.
        let t = Timing::parse("0 9 * * *", "America/New_York").expect("valid");
        let mar7 = 1_772_892_000_000; // 2026-03-07T14:00:00Z
        assert_eq!(t.show(mar7), "2026-03-07T09:00:00-05:00");
        let next = t.next_after(mar7).expect("next");
        assert_eq!(next - mar7, 23 * 3_600_000);
        assert_eq!(t.show(next), "2026-03-08T09:00:00-04:00");
        // 02:30 does not exist in New York on 8 March 2026 (the clocks go
        // forward at 02:00): that day's slot falls at 03:00, the first
        // time after the gap, once (as Vixie cron runs it).
        let t = Timing::parse("30 2 * * *", "America/New_York").expect("valid");
        let mut at = mar7;
        let mut slots = Vec::new();
        while let Some(next) = t.next_after(at).filter(|&n| n < mar7 + 2 * 86_400_000) {
            slots.push(t.show(next));
            at = next;
        }
        assert_eq!(slots, ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]);
        // 01:30 happens twice in New York on 1 November 2026 (the clocks
        // go back at 02:00): one slot, not two.
        let t = Timing::parse("30 1 * * *", "America/New_York").expect("valid");
        let oct31_noon = 1_793_448_000_000; // 2026-10-31T12:00:00Z
        let mut at = oct31_noon;
        let mut slots = Vec::new();
        while let Some(next) = t.next_after(at).filter(|&n| n < oct31_noon + 2 * 86_400_000) {
            slots.push(t.show(next));
            at = next;
        }
        assert_eq!(slots, ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]);
    }

    #[test]
    fn counting_is_bounded() {
        let t = Timing::parse("* * * * * *", "UTC").expect("valid");
        let (n, last) = t.slots_between(T0, T0 + 7 * 86_400_000);
        assert_eq!(n, MAX_COUNTED);
        assert_eq!(last, Some(T0 + 7 * 86_400_000));
    }
}
