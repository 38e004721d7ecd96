//! reeve's schedule domain (SPEC §7, §8, §11): when schedules fire and what
//! they fire, as pure data and pure functions.
//!
//! - [`cron`]: the cron rule language (parse, match wall times).
//! - [`rule`]: [`Rule`] (cron in an IANA zone, or `every` + `jitter`) and its
//!   nominal fire times, daylight-saving time done with jiff.
//! - [`policy`]: overlap, misfire and status policies; which missed times fire
//!   after downtime.
//! - [`spec`]: the declarative [`ScheduleSpec`], its validation into a
//!   [`ValidSchedule`], the firing idempotency key and [`diff`].
//! - [`apply`]: schedule files (TOML, JSON) for `reeve apply`, all errors at
//!   once.
//! - [`collision`]: the 5-minute-bucket collision warning.
//! - [`forecast`](mod@forecast): the capacity forecast for `reeve forecast`:
//!   predicted slot waits and overlaps under the caps, and minute offsets
//!   that remove the waits.
//!
//! **Architecture invariant:** no I/O and no clock. Every function takes the
//! instants it needs; nothing here reads a file, a database or `now()`. The
//! engine stores what these functions compute and the CLI reads the files
//! these functions parse.

pub mod apply;
pub mod collision;
pub mod cron;
pub mod forecast;
pub mod policy;
pub mod rule;
pub mod spec;

pub use apply::{ApplyError, ApplyErrors, Format, Loaded, load_all, parse_file};
pub use collision::{Collision, Planned, collisions};
pub use forecast::{Busy, Caps, Forecast, ForecastInput, ScheduleForecast, Suggestion, forecast};
pub use policy::{
    MisfirePlan, MisfirePolicy, OverlapPolicy, ScheduleStatus, misfire_fire_times, misfire_plan,
};
pub use rule::{Rule, jitter_offset};
pub use spec::{Change, JobTemplate, ScheduleSpec, ValidSchedule, diff, firing_key};
