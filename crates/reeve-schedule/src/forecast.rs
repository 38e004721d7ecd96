//! The capacity forecast behind `reeve forecast`: over the next hours, which
//! schedules will wait for a slot, which run at the same time, and which
//! minute offsets would remove the waits.
//!
//! Pure like the rest of the crate: the caller passes the active schedules,
//! their expected run durations, the caps, the jobs already running and the
//! instant to start from. Nothing here reads a database or the clock.
//!
//! The model is a small discrete-event simulation (completion instants in a
//! priority queue, `O(n log n)` in the number of firings, no stepping):
//!
//! - Each schedule's **nominal** firings (jitter ignored) in
//!   `(from, from + horizon]`, at most [`MAX_FIRINGS`] per schedule, so an
//!   every-second schedule cannot make this slow.
//! - A firing is ready at its nominal time and starts at the first instant a
//!   slot is free under **both** the global cap and its queue's cap (an
//!   absent cap is no limit). Ready firings start in order of readiness, ties
//!   by schedule name; a firing held back only by its own queue's cap does not
//!   hold back firings of other queues. Runs ending at an instant free their
//!   slots before the firings ready at that instant are started.
//! - A firing occupies one slot for its schedule's expected duration; a zero
//!   duration still takes the slot for 1 ms. Each [`Busy`] job occupies a
//!   slot of its queue (and of the global cap) from `from` until its `until`.
//! - Every firing runs, as overlap policy `allow` would have it;
//!   `self_overlaps` counts the firings where another policy would act.
//! - A firing's wait is its start minus its nominal time. Firings ready in the
//!   window are followed past its end until they start. A firing whose queue
//!   cap (or the global cap) is 0 never starts: it is counted as **blocked**,
//!   not as waited, and the simulation still ends when nothing else can
//!   happen.
//!
//! **Suggestions** (greedy, deterministic):
//!
//! - Schedules that waited are tried in order of total wait (largest first,
//!   ties by name), at most [`MAX_SUGGESTED`] of them.
//! - For one schedule the offsets `+1, −1, +2, −2, …` minutes are tried up to
//!   ±[`MAX_OFFSET_MINUTES`], but always less than half its period (its
//!   interval; for a cron rule the smallest gap between its firings), so a
//!   schedule firing every 2 minutes or more often is never shifted. Shifted
//!   by `k`, it fires at its nominal times + `k` that fall in the window; an
//!   offset that changes how often it fires in the window is skipped (moving
//!   a firing out of the window fixes nothing).
//! - An offset qualifies when the schedule itself waits fewer times and all
//!   schedules together do not wait more times (counting firings that
//!   waited). Among qualifying offsets the first one, in the order above,
//!   that reaches the lowest total is suggested, and it is kept while the
//!   next schedule is tried: suggestions are meant to be applied together.
//! - Work is bounded: at most `MAX_SUGGESTED × 2 × MAX_OFFSET_MINUTES`
//!   simulations, and at most [`SUGGESTION_BUDGET`] simulated firings in all;
//!   when the budget runs out the suggestions found so far are returned.
//!
//! ```
//! use std::time::Duration;
//! use reeve_core::Timestamp;
//! use reeve_schedule::{Rule, forecast::{Caps, ForecastInput, forecast}};
//! let at_nine = |name: &str| ForecastInput {
//!     name: name.to_string(),
//!     rule: Rule::cron("0 9 * * *", None).unwrap(),
//!     anchor: None,
//!     queue: "default".to_string(),
//!     expected_duration: Duration::from_secs(600),
//!     observed: true,
//! };
//! let caps = Caps { global: Some(1), ..Caps::default() };
//! let from = Timestamp::parse("2026-03-02T00:00:00Z").unwrap();
//! let f = forecast(&[at_nine("a"), at_nine("b")], &caps, &[], from, Duration::from_secs(86_400));
//! assert_eq!(f.schedules[1].wait_max_ms, 600_000);
//! assert_eq!(f.suggestions[0].schedule, "b");
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use reeve_core::Timestamp;
use reeve_core::time::duration_millis;
use serde::Serialize;

use crate::collision::MAX_FIRINGS;
use crate::rule::Rule;

/// The window `reeve forecast` looks at unless told otherwise.
pub const DEFAULT_HORIZON: Duration = Duration::from_secs(24 * 3600);
/// The largest offset a suggestion may propose, in minutes either way.
pub const MAX_OFFSET_MINUTES: i64 = 30;
/// How many schedules are tried for a suggestion.
pub const MAX_SUGGESTED: usize = 10;
/// Firings simulated while searching for suggestions, over all candidates.
pub const SUGGESTION_BUDGET: usize = 20_000_000;

const MINUTE_MS: i64 = 60_000;

/// One active schedule as the forecast sees it.
#[derive(Debug, Clone)]
pub struct ForecastInput {
    pub name: String,
    pub rule: Rule,
    /// Anchor of an interval rule (see [`Rule::next_after`]).
    pub anchor: Option<Timestamp>,
    pub queue: String,
    /// How long one run is expected to take: the observed median, or a
    /// default the caller chose.
    pub expected_duration: Duration,
    /// Whether `expected_duration` came from observed runs.
    pub observed: bool,
}

/// Concurrency caps; an absent cap is no limit, a cap of 0 lets nothing run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps {
    pub global: Option<u32>,
    pub queues: BTreeMap<String, u32>,
}

/// A job already running at `from`, expected to hold its slot until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub queue: String,
    pub until: Timestamp,
}

/// The predicted window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    pub from: Timestamp,
    pub until: Timestamp,
    /// One entry per input schedule, in input order.
    pub schedules: Vec<ScheduleForecast>,
    /// In the order they were found; each assumes the earlier ones applied.
    pub suggestions: Vec<Suggestion>,
}

/// What one schedule is predicted to go through in the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleForecast {
    pub name: String,
    pub queue: String,
    /// Nominal firings in the window.
    pub firings: u32,
    /// Firings that start later than their nominal time.
    pub waited: u32,
    /// Firings that never start because a cap of 0 holds them.
    pub blocked: u32,
    /// Lower median of the waits of the firings that waited (0 if none).
    pub wait_p50_ms: i64,
    pub wait_max_ms: i64,
    pub total_wait_ms: i64,
    /// Firings due while this schedule's previous firing has not finished
    /// (where an overlap policy other than `allow` would act).
    pub self_overlaps: u32,
    /// Other schedules predicted to run at the same time as this one, sorted.
    pub overlaps_with: Vec<String>,
    pub expected_duration_ms: i64,
    pub observed: bool,
}

/// Shift one schedule's fire times by a few minutes to stop it waiting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    pub schedule: String,
    /// Minutes to add to every fire time (negative: earlier).
    pub offset_minutes: i64,
    /// This schedule's waited firings before and after the shift.
    pub waits_before: u32,
    pub waits_after: u32,
    /// Waited firings of all schedules once this and the earlier
    /// suggestions are applied.
    pub total_waits_after: u32,
    pub first_fire_after_offset: Timestamp,
}

/// Predicts the window `(from, from + horizon]`; see the module docs.
pub fn forecast(
    schedules: &[ForecastInput],
    caps: &Caps,
    busy: &[Busy],
    from: Timestamp,
    horizon: Duration,
) -> Forecast {
    let until = from.saturating_add(horizon);
    let model = Model::new(schedules, caps, busy, from);
    let times: Vec<Vec<i64>> = schedules
        .iter()
        .map(|s| shifted_fire_times(s, from, until, 0))
        .collect();
    let runs = simulate(&model, &times);
    let report = report(schedules, &model, &times, &runs);
    let suggestions = suggest(schedules, &model, &report, times, &runs, from, until);
    Forecast {
        from,
        until,
        schedules: report,
        suggestions,
    }
}

/// The inputs the simulation needs, with names turned into indices.
struct Model {
    /// Per schedule: its queue's index.
    queue: Vec<usize>,
    /// Per schedule: its position in (name, input index) order, the tie-break.
    rank: Vec<usize>,
    /// Per schedule: run length in ms, at least 1.
    duration: Vec<i64>,
    /// Per queue.
    queue_caps: Vec<Option<u32>>,
    global: Option<u32>,
    /// (queue, until) of the jobs running at `from`.
    busy: Vec<(usize, i64)>,
}

impl Model {
    fn new(schedules: &[ForecastInput], caps: &Caps, busy: &[Busy], from: Timestamp) -> Model {
        fn intern<'a>(queues: &mut BTreeMap<&'a str, usize>, name: &'a str) -> usize {
            let next = queues.len();
            *queues.entry(name).or_insert(next)
        }
        let mut queues: BTreeMap<&str, usize> = BTreeMap::new();
        let queue: Vec<usize> = schedules
            .iter()
            .map(|s| intern(&mut queues, &s.queue))
            .collect();
        let busy: Vec<(usize, i64)> = busy
            .iter()
            .filter(|b| b.until > from)
            .map(|b| (intern(&mut queues, &b.queue), b.until.millis()))
            .collect();
        let mut queue_caps = vec![None; queues.len()];
        for (name, i) in &queues {
            queue_caps[*i] = caps.queues.get(*name).copied();
        }
        let mut by_name: Vec<usize> = (0..schedules.len()).collect();
        by_name.sort_by(|a, b| schedules[*a].name.cmp(&schedules[*b].name).then(a.cmp(b)));
        let mut rank = vec![0; schedules.len()];
        for (r, s) in by_name.into_iter().enumerate() {
            rank[s] = r;
        }
        Model {
            queue,
            rank,
            duration: schedules
                .iter()
                .map(|s| duration_millis(s.expected_duration).max(1))
                .collect(),
            queue_caps,
            global: caps.global,
            busy,
        }
    }

    fn queue_has_room(&self, running: &[u64], q: usize) -> bool {
        self.queue_caps[q].is_none_or(|c| running[q] < u64::from(c))
    }
}

/// One firing and when it is predicted to start (`None`: never).
#[derive(Debug, Clone, Copy)]
struct Run {
    schedule: usize,
    nominal: i64,
    start: Option<i64>,
}

/// The schedule's fire times in `(from, until]` after shifting them by
/// `minutes`, in ms.
fn shifted_fire_times(
    s: &ForecastInput,
    from: Timestamp,
    until: Timestamp,
    minutes: i64,
) -> Vec<i64> {
    let offset = minutes.saturating_mul(MINUTE_MS);
    let shift = |t: Timestamp| Timestamp::from_millis(t.millis().saturating_sub(offset));
    s.rule
        .fire_times(shift(from), shift(until), s.anchor, MAX_FIRINGS)
        .into_iter()
        .map(|t| t.millis().saturating_add(offset))
        .collect()
}

/// Runs the firings `times[schedule]` against the caps. The runs come back
/// in readiness order, which is also the order they are started in.
fn simulate(model: &Model, times: &[Vec<i64>]) -> Vec<Run> {
    let mut runs: Vec<Run> = times
        .iter()
        .enumerate()
        .flat_map(|(schedule, ts)| {
            ts.iter().map(move |&nominal| Run {
                schedule,
                nominal,
                start: None,
            })
        })
        .collect();
    runs.sort_by_key(|r| (r.nominal, model.rank[r.schedule]));

    let queues = model.queue_caps.len();
    let mut running = vec![0u64; queues];
    let mut running_total = 0u64;
    // Ready firings (indices into `runs`) per queue, oldest first.
    let mut waiting: Vec<VecDeque<usize>> = vec![VecDeque::new(); queues];
    // The head of every queue that has room and someone waiting. Indices
    // into `runs` are in readiness order, so the first is the next to start.
    let mut startable: BTreeSet<usize> = BTreeSet::new();
    let mut completions: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
    for &(q, until) in &model.busy {
        running[q] += 1;
        running_total += 1;
        completions.push(Reverse((until, q)));
    }

    let mut next_ready = 0;
    loop {
        let ready_at = runs.get(next_ready).map(|r| r.nominal);
        let done_at = completions.peek().map(|Reverse((t, _))| *t);
        let Some(now) = ready_at.into_iter().chain(done_at).min() else {
            break;
        };
        while let Some(&Reverse((t, q))) = completions.peek()
            && t <= now
        {
            completions.pop();
            let had_room = model.queue_has_room(&running, q);
            running[q] -= 1;
            running_total -= 1;
            if !had_room
                && model.queue_has_room(&running, q)
                && let Some(&head) = waiting[q].front()
            {
                startable.insert(head);
            }
        }
        while let Some(r) = runs.get(next_ready)
            && r.nominal <= now
        {
            let q = model.queue[r.schedule];
            waiting[q].push_back(next_ready);
            if waiting[q].len() == 1 && model.queue_has_room(&running, q) {
                startable.insert(next_ready);
            }
            next_ready += 1;
        }
        while model.global.is_none_or(|c| running_total < u64::from(c))
            && let Some(i) = startable.pop_first()
        {
            let s = runs[i].schedule;
            let q = model.queue[s];
            waiting[q].pop_front();
            runs[i].start = Some(now);
            running[q] += 1;
            running_total += 1;
            completions.push(Reverse((now.saturating_add(model.duration[s]), q)));
            if model.queue_has_room(&running, q)
                && let Some(&head) = waiting[q].front()
            {
                startable.insert(head);
            }
        }
    }
    runs
}

/// Per schedule: how many of its firings started late.
fn waited_counts(runs: &[Run], schedules: usize) -> Vec<u32> {
    let mut counts = vec![0u32; schedules];
    for r in runs {
        if r.start.is_some_and(|s| s > r.nominal) {
            counts[r.schedule] += 1;
        }
    }
    counts
}

fn report(
    schedules: &[ForecastInput],
    model: &Model,
    times: &[Vec<i64>],
    runs: &[Run],
) -> Vec<ScheduleForecast> {
    let mut per_schedule: Vec<Vec<Run>> = vec![Vec::new(); schedules.len()];
    for r in runs {
        per_schedule[r.schedule].push(*r);
    }
    let overlaps = overlapping_schedules(model, &per_schedule);
    schedules
        .iter()
        .enumerate()
        .map(|(s, input)| {
            let own = &per_schedule[s];
            let mut waits: Vec<i64> = own
                .iter()
                .filter_map(|r| r.start.map(|st| st - r.nominal))
                .filter(|w| *w > 0)
                .collect();
            waits.sort_unstable();
            // `None` before the first firing; `Some(None)` once a firing
            // never ends because it never starts.
            let mut previous_end: Option<Option<i64>> = None;
            let mut self_overlaps = 0;
            for r in own {
                let overlapping = match previous_end {
                    None => false,
                    Some(None) => true,
                    Some(Some(end)) => r.nominal < end,
                };
                self_overlaps += u32::from(overlapping);
                previous_end = Some(r.start.map(|st| st.saturating_add(model.duration[s])));
            }
            let mut overlaps_with: Vec<String> = overlaps[s]
                .iter()
                .map(|o| schedules[*o].name.clone())
                .collect();
            overlaps_with.sort_unstable();
            overlaps_with.dedup();
            ScheduleForecast {
                name: input.name.clone(),
                queue: input.queue.clone(),
                firings: count(times[s].len()),
                waited: count(waits.len()),
                blocked: count(own.iter().filter(|r| r.start.is_none()).count()),
                wait_p50_ms: waits
                    .get(waits.len().saturating_sub(1) / 2)
                    .copied()
                    .unwrap_or(0),
                wait_max_ms: waits.last().copied().unwrap_or(0),
                total_wait_ms: waits.iter().fold(0i64, |a, w| a.saturating_add(*w)),
                self_overlaps,
                overlaps_with,
                expected_duration_ms: duration_millis(input.expected_duration),
                observed: input.observed,
            }
        })
        .collect()
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Per schedule, the other schedules with a run at the same time as one of
/// its runs. Each schedule's runs are first merged into disjoint spans, so
/// the sweep keeps at most one span per schedule active.
fn overlapping_schedules(model: &Model, per_schedule: &[Vec<Run>]) -> Vec<BTreeSet<usize>> {
    let mut spans: Vec<(i64, i64, usize)> = Vec::new();
    for (s, own) in per_schedule.iter().enumerate() {
        let mut current: Option<(i64, i64)> = None;
        // A schedule's runs start in nominal order: they share one queue.
        for start in own.iter().filter_map(|r| r.start) {
            let end = start.saturating_add(model.duration[s]);
            current = match current {
                Some((lo, hi)) if start <= hi => Some((lo, hi.max(end))),
                Some(span) => {
                    spans.push((span.0, span.1, s));
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((lo, hi)) = current {
            spans.push((lo, hi, s));
        }
    }
    spans.sort_unstable();
    let mut found = vec![BTreeSet::new(); per_schedule.len()];
    let mut active: Vec<(i64, usize)> = Vec::new();
    for (start, end, s) in spans {
        active.retain(|(active_end, _)| *active_end > start);
        for &(_, other) in &active {
            if other != s {
                found[s].insert(other);
                found[other].insert(s);
            }
        }
        active.push((end, s));
    }
    found
}

/// The largest offset, in minutes, worth trying for a schedule: less than
/// half its period, at most [`MAX_OFFSET_MINUTES`].
fn max_offset_minutes(input: &ForecastInput, times: &[i64], until: Timestamp) -> i64 {
    let period = input.rule.interval().map(duration_millis).or_else(|| {
        // A cron rule's period is the smallest gap between its firings,
        // counting the first one after the window so a single firing has one.
        let after = input
            .rule
            .next_after(until, input.anchor)
            .map(Timestamp::millis);
        times
            .iter()
            .copied()
            .chain(after)
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| w[1] - w[0])
            .min()
    });
    match period {
        Some(p) if p < 2 * MINUTE_MS => 0,
        Some(p) => ((p - 1) / (2 * MINUTE_MS)).min(MAX_OFFSET_MINUTES),
        None => MAX_OFFSET_MINUTES,
    }
}

fn suggest(
    schedules: &[ForecastInput],
    model: &Model,
    report: &[ScheduleForecast],
    mut times: Vec<Vec<i64>>,
    runs: &[Run],
    from: Timestamp,
    until: Timestamp,
) -> Vec<Suggestion> {
    let mut waited = waited_counts(runs, schedules.len());
    let mut order: Vec<usize> = (0..schedules.len()).filter(|s| waited[*s] > 0).collect();
    order.sort_by_key(|s| (Reverse(report[*s].total_wait_ms), model.rank[*s]));
    order.truncate(MAX_SUGGESTED);

    let mut budget = SUGGESTION_BUDGET;
    let mut total_firings: usize = times.iter().map(Vec::len).sum();
    let mut out = Vec::new();
    'schedules: for s in order {
        let waits_before = waited[s];
        if waits_before == 0 {
            continue; // An earlier shift already stopped it waiting.
        }
        let total_before: u32 = waited.iter().sum();
        let max_k = max_offset_minutes(&schedules[s], &times[s], until);
        let candidates = (1..=max_k).flat_map(|k| [k, -k]);
        // (total waits, offset, shifted times, waited counts)
        let mut best: Option<(u32, i64, Vec<i64>, Vec<u32>)> = None;
        for k in candidates {
            let shifted = shifted_fire_times(&schedules[s], from, until, k);
            if shifted.len() != times[s].len() {
                continue;
            }
            if total_firings > budget {
                break 'schedules;
            }
            budget -= total_firings;
            let original = std::mem::replace(&mut times[s], shifted);
            let trial = waited_counts(&simulate(model, &times), schedules.len());
            let shifted = std::mem::replace(&mut times[s], original);
            let total: u32 = trial.iter().sum();
            if trial[s] < waits_before
                && total <= total_before
                && best.as_ref().is_none_or(|b| total < b.0)
            {
                best = Some((total, k, shifted, trial));
                if total == 0 {
                    break; // Nothing can do better.
                }
            }
        }
        if let Some((total, k, shifted, trial)) = best {
            out.push(Suggestion {
                schedule: schedules[s].name.clone(),
                offset_minutes: k,
                waits_before,
                waits_after: trial[s],
                total_waits_after: total,
                first_fire_after_offset: Timestamp::from_millis(shifted[0]),
            });
            total_firings = total_firings - times[s].len() + shifted.len();
            times[s] = shifted;
            waited = trial;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn input(name: &str, queue: &str, rule: Rule, minutes: u64) -> ForecastInput {
        ForecastInput {
            name: name.to_string(),
            rule,
            anchor: None,
            queue: queue.to_string(),
            expected_duration: Duration::from_secs(minutes * 60),
            observed: true,
        }
    }

    fn cron(expr: &str) -> Rule {
        Rule::cron(expr, None).unwrap()
    }

    fn every_minutes(m: u64) -> Rule {
        Rule::every(Duration::from_secs(m * 60), None).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    fn from() -> Timestamp {
        ts("2026-03-02T00:00:00Z")
    }

    fn global(cap: u32) -> Caps {
        Caps {
            global: Some(cap),
            ..Caps::default()
        }
    }

    fn run(schedules: &[ForecastInput], caps: &Caps, busy: &[Busy]) -> Forecast {
        forecast(schedules, caps, busy, from(), DEFAULT_HORIZON)
    }

    fn by_name<'a>(f: &'a Forecast, name: &str) -> &'a ScheduleForecast {
        f.schedules.iter().find(|s| s.name == name).unwrap()
    }

    fn total_waited(f: &Forecast) -> u32 {
        f.schedules.iter().map(|s| s.waited).sum()
    }

    #[test]
    fn five_at_nine_under_cap_two_queue_up_and_offsets_fix_it() {
        let names = ["a", "b", "c", "d", "e"];
        let s: Vec<_> = names
            .iter()
            .map(|n| input(n, "default", cron("0 9 * * *"), 10))
            .collect();
        let f = run(&s, &global(2), &[]);
        assert_eq!(f.until, ts("2026-03-03T00:00:00Z"));
        for n in names {
            assert_eq!(by_name(&f, n).firings, 1);
        }
        // a and b start at 09:00; c and d wait for them; e waits for c and d.
        let waits: Vec<(u32, i64)> = f
            .schedules
            .iter()
            .map(|s| (s.waited, s.wait_max_ms))
            .collect();
        assert_eq!(
            waits,
            [(0, 0), (0, 0), (1, 10 * MIN), (1, 10 * MIN), (1, 20 * MIN)]
        );
        assert_eq!(by_name(&f, "e").total_wait_ms, 20 * MIN);
        assert_eq!(by_name(&f, "c").wait_p50_ms, 10 * MIN);
        assert_eq!(by_name(&f, "a").overlaps_with, ["b"]);
        assert_eq!(by_name(&f, "c").overlaps_with, ["d"]);
        assert_eq!(by_name(&f, "e").overlaps_with, Vec::<String>::new());

        let suggested: Vec<(&str, i64, u32, u32, u32, Timestamp)> = f
            .suggestions
            .iter()
            .map(|s| {
                (
                    s.schedule.as_str(),
                    s.offset_minutes,
                    s.waits_before,
                    s.waits_after,
                    s.total_waits_after,
                    s.first_fire_after_offset,
                )
            })
            .collect();
        assert_eq!(
            suggested,
            [
                ("e", -10, 1, 0, 2, ts("2026-03-02T08:50:00Z")),
                ("c", 10, 1, 0, 1, ts("2026-03-02T09:10:00Z")),
                ("d", 10, 1, 0, 0, ts("2026-03-02T09:10:00Z")),
            ]
        );

        // Applied, nobody waits any more.
        let applied = [
            input("a", "default", cron("0 9 * * *"), 10),
            input("b", "default", cron("0 9 * * *"), 10),
            input("c", "default", cron("10 9 * * *"), 10),
            input("d", "default", cron("10 9 * * *"), 10),
            input("e", "default", cron("50 8 * * *"), 10),
        ];
        let after = run(&applied, &global(2), &[]);
        assert_eq!(total_waited(&after), 0);
        assert!(after.suggestions.is_empty());
    }

    #[test]
    fn without_caps_nothing_waits() {
        let s: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|n| input(n, "default", cron("0 9 * * *"), 10))
            .collect();
        let f = run(&s, &Caps::default(), &[]);
        assert_eq!(total_waited(&f), 0);
        assert!(
            f.schedules
                .iter()
                .all(|s| s.total_wait_ms == 0 && s.blocked == 0)
        );
        assert!(f.suggestions.is_empty());
        // They still run at the same time.
        assert_eq!(by_name(&f, "a").overlaps_with, ["b", "c"]);
    }

    #[test]
    fn a_queue_cap_holds_back_only_its_queue() {
        let s = [
            input("a1", "a", cron("0 9 * * *"), 10),
            input("a2", "a", cron("0 9 * * *"), 10),
            input("b1", "b", cron("0 9 * * *"), 10),
        ];
        let caps = Caps {
            global: Some(10),
            queues: BTreeMap::from([("a".to_string(), 1)]),
        };
        let f = run(&s, &caps, &[]);
        assert_eq!(by_name(&f, "a1").waited, 0);
        assert_eq!(by_name(&f, "a2").waited, 1);
        assert_eq!(by_name(&f, "a2").wait_max_ms, 10 * MIN);
        assert_eq!(by_name(&f, "b1").waited, 0);
        assert_eq!(f.suggestions.len(), 1);
        assert_eq!(f.suggestions[0].schedule, "a2");
        assert_eq!(f.suggestions[0].offset_minutes, 10);
        // The global cap binds across queues: with room for one job, b1
        // waits behind a1 and a2 (same readiness, so name order).
        let f = run(&s, &global(1), &[]);
        assert_eq!(by_name(&f, "a2").wait_max_ms, 10 * MIN);
        assert_eq!(by_name(&f, "b1").wait_max_ms, 20 * MIN);
    }

    #[test]
    fn runs_longer_than_the_interval_overlap_themselves() {
        let s = [input("tick", "default", every_minutes(10), 15)];
        let f = run(&s, &Caps::default(), &[]);
        let t = &f.schedules[0];
        assert_eq!(t.firings, 144);
        // Every firing but the first finds the previous one still running.
        assert_eq!(t.self_overlaps, 143);
        assert_eq!(t.waited, 0);
        assert!(t.overlaps_with.is_empty());
    }

    #[test]
    fn a_cap_of_zero_blocks_and_terminates() {
        let s = [
            input("minutely", "a", every_minutes(1), 5),
            input("nine", "b", cron("0 9 * * *"), 10),
        ];
        let f = run(&s, &global(0), &[]);
        assert_eq!(by_name(&f, "minutely").firings, 1440);
        assert_eq!(by_name(&f, "minutely").blocked, 1440);
        assert_eq!(by_name(&f, "minutely").self_overlaps, 1439);
        assert_eq!(by_name(&f, "nine").blocked, 1);
        assert_eq!(total_waited(&f), 0);
        assert!(f.suggestions.is_empty());

        // A queue cap of 0 blocks only that queue.
        let caps = Caps {
            global: None,
            queues: BTreeMap::from([("a".to_string(), 0)]),
        };
        let f = run(&s, &caps, &[]);
        assert_eq!(by_name(&f, "minutely").blocked, 1440);
        assert_eq!(by_name(&f, "nine").blocked, 0);
        assert_eq!(by_name(&f, "nine").waited, 0);
    }

    #[test]
    fn busy_jobs_delay_the_first_firing() {
        let s = [input("nine", "default", cron("0 9 * * *"), 10)];
        let busy = [
            Busy {
                queue: "default".to_string(),
                until: ts("2026-03-02T09:05:00Z"),
            },
            // Already finished: holds nothing.
            Busy {
                queue: "default".to_string(),
                until: ts("2026-03-01T23:00:00Z"),
            },
        ];
        let f = run(&s, &global(1), &busy);
        assert_eq!(f.schedules[0].waited, 1);
        assert_eq!(f.schedules[0].wait_max_ms, 5 * MIN);
        // A busy job in another queue counts against the global cap only.
        let other = [Busy {
            queue: "other".to_string(),
            until: ts("2026-03-02T09:03:00Z"),
        }];
        assert_eq!(
            run(&s, &global(1), &other).schedules[0].wait_max_ms,
            3 * MIN
        );
        let caps = Caps {
            global: None,
            queues: BTreeMap::from([("default".to_string(), 1)]),
        };
        assert_eq!(run(&s, &caps, &other).schedules[0].waited, 0);
    }

    #[test]
    fn every_second_is_bounded() {
        let s = [ForecastInput {
            expected_duration: Duration::from_secs(2),
            ..input(
                "fast",
                "default",
                Rule::every(Duration::from_secs(1), None).unwrap(),
                0,
            )
        }];
        let f = run(&s, &global(1), &[]);
        let t = &f.schedules[0];
        assert_eq!(t.firings as usize, MAX_FIRINGS);
        // The n-th firing (from 0) starts n seconds late.
        assert_eq!(t.waited as usize, MAX_FIRINGS - 1);
        assert_eq!(t.wait_max_ms, (MAX_FIRINGS as i64 - 1) * 1000);
        // Too frequent to shift.
        assert!(f.suggestions.is_empty());
    }

    #[test]
    fn offsets_stay_under_half_the_period() {
        let s = [
            input("a", "default", every_minutes(10), 3),
            input("b", "default", every_minutes(10), 3),
        ];
        let f = run(&s, &global(1), &[]);
        assert_eq!(by_name(&f, "b").waited, 144);
        let b = &f.suggestions[0];
        assert_eq!((b.schedule.as_str(), b.offset_minutes), ("b", 3));
        assert_eq!(
            (b.waits_before, b.waits_after, b.total_waits_after),
            (144, 0, 0)
        );
        assert_eq!(b.first_fire_after_offset, ts("2026-03-02T00:03:00Z"));

        let times = |i: &ForecastInput| {
            shifted_fire_times(i, from(), from().saturating_add(DEFAULT_HORIZON), 0)
        };
        let until = from().saturating_add(DEFAULT_HORIZON);
        let bound = |i: &ForecastInput| max_offset_minutes(i, &times(i), until);
        assert_eq!(bound(&s[0]), 4);
        assert_eq!(bound(&input("x", "q", every_minutes(2), 1)), 0);
        assert_eq!(bound(&input("x", "q", cron("*/5 * * * *"), 1)), 2);
        assert_eq!(bound(&input("x", "q", cron("0 9 * * *"), 1)), 30);
    }

    #[test]
    fn a_zero_duration_still_takes_a_slot_for_an_instant() {
        let s = [
            input("a", "default", cron("0 9 * * *"), 0),
            input("b", "default", cron("0 9 * * *"), 0),
        ];
        let f = run(&s, &global(1), &[]);
        assert_eq!(by_name(&f, "b").wait_max_ms, 1);
        assert_eq!(by_name(&f, "b").expected_duration_ms, 0);
    }
}
