//! What the fleet has cost so far, per UTC day: the fleet's cost per hour
//! integrated over time, tick by tick, kept in the store so a restart does
//! not forget the morning. Read by the status API and the dashboard ("spent
//! today"), and the ground for daily and monthly budgets.
//!
//! Between two meterings the fleet is taken to cost what it cost at the
//! first of them. A gap (flockd down, observations failing) is therefore
//! billed at the last known rate: the machines it cannot see keep billing,
//! so a budget errs on the side of spending less.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Millis;

const DAY_MS: Millis = 86_400_000;
const HOUR_MS: f64 = 3_600_000.0;
/// Days kept: enough for "this month" and the month before.
pub const KEEP_DAYS: u64 = 62;

/// One UTC day's spend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaySpend {
    /// In the config's currency.
    pub cost: f64,
    /// Counted up to this moment (unix ms).
    pub until: Millis,
    /// The fleet's cost per hour at `until`: what it costs from then on.
    pub rate_per_hour: f64,
}

/// Spend so far in the current UTC day and month.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Spent {
    pub today: f64,
    pub this_month: f64,
}

/// Counts the time since the last metering into `days` (keyed by
/// [`day_of`]) at the rate then, and notes `rate` (the fleet's cost per hour
/// now; `None` when it is unknown this tick: the last rate goes on).
pub fn meter(days: &mut BTreeMap<String, DaySpend>, now: Millis, rate: Option<f64>) {
    let last = days.values().max_by_key(|d| d.until).map(|d| (d.until, d.rate_per_hour));
    let (mut from, previous_rate) = last.unwrap_or((now, rate.unwrap_or(0.0)));
    while from < now {
        let day_end = (from / DAY_MS + 1) * DAY_MS;
        let to = day_end.min(now);
        let entry = days.entry(day_of(from)).or_insert(DaySpend { cost: 0.0, until: from, rate_per_hour: 0.0 });
        entry.cost += previous_rate * (to - from) as f64 / HOUR_MS;
        entry.until = to;
        entry.rate_per_hour = previous_rate;
        from = to;
    }
    let today = days.entry(day_of(now)).or_insert(DaySpend { cost: 0.0, until: now, rate_per_hour: previous_rate });
    today.until = today.until.max(now);
    today.rate_per_hour = rate.unwrap_or(previous_rate);
    let oldest = day_of(now.saturating_sub(KEEP_DAYS * DAY_MS));
    days.retain(|day, _| *day >= oldest);
}

/// Spend so far in the UTC day and month of a moment, and the hours left in
/// each: what the daily and monthly budgets clamp launches on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Periods {
    pub spent: Spent,
    pub day_hours_left: f64,
    pub month_hours_left: f64,
}

impl Periods {
    pub fn at(now: Millis, spent: Spent) -> Periods {
        let day_end = (now / DAY_MS + 1) * DAY_MS;
        let (y, m, _) = civil_from_days((now / DAY_MS) as i64);
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let month_end = days_from_civil(ny, nm, 1) as Millis * DAY_MS;
        Periods {
            spent,
            day_hours_left: (day_end - now) as f64 / HOUR_MS,
            month_hours_left: (month_end - now) as f64 / HOUR_MS,
        }
    }
}

/// Spend of the UTC day and month `now` falls in.
pub fn spent(days: &BTreeMap<String, DaySpend>, now: Millis) -> Spent {
    let today = day_of(now);
    let month = &today[..7];
    Spent {
        today: days.get(&today).map_or(0.0, |d| d.cost),
        this_month: days.iter().filter(|(day, _)| day.starts_with(month)).map(|(_, d)| d.cost).sum(),
    }
}

/// The UTC date of `ms`, "YYYY-MM-DD" (sorts as it reads).
pub fn day_of(ms: Millis) -> String {
    let (y, m, d) = civil_from_days((ms / DAY_MS) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01 (Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z.
    const JAN_1: Millis = 1_767_225_600_000;
    const HOUR: Millis = 3_600_000;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(JAN_1), "2026-01-01");
        assert_eq!(day_of(JAN_1 - 1), "2025-12-31");
        assert_eq!(day_of(JAN_1 + 59 * DAY_MS), "2026-03-01", "2026 is no leap year");
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
    }

    #[test]
    fn each_span_is_billed_at_the_rate_seen_at_its_start() {
        let mut days = BTreeMap::new();
        meter(&mut days, JAN_1 + HOUR, Some(2.0));
        assert_eq!(spent(&days, JAN_1 + HOUR).today, 0.0, "nothing before the first metering");
        meter(&mut days, JAN_1 + 2 * HOUR, Some(4.0));
        assert_eq!(spent(&days, JAN_1 + 2 * HOUR).today, 2.0, "an hour at 2/h");
        // A blind spell: the last known rate goes on.
        meter(&mut days, JAN_1 + 3 * HOUR, None);
        meter(&mut days, JAN_1 + 4 * HOUR, Some(0.0));
        assert_eq!(spent(&days, JAN_1 + 4 * HOUR).today, 10.0, "2 + 4 + 4");
        meter(&mut days, JAN_1 + 5 * HOUR, Some(1.0));
        assert_eq!(spent(&days, JAN_1 + 5 * HOUR).today, 10.0, "an hour at zero costs nothing");
    }

    #[test]
    fn a_span_across_midnight_is_split_between_the_days_and_months_sum_their_days() {
        let mut days = BTreeMap::new();
        let dec_31_22h = JAN_1 - 2 * HOUR;
        meter(&mut days, dec_31_22h, Some(1.0));
        meter(&mut days, JAN_1 + 3 * HOUR, Some(1.0));
        assert_eq!(days["2025-12-31"].cost, 2.0);
        assert_eq!(days["2026-01-01"].cost, 3.0);
        let now = JAN_1 + 3 * HOUR;
        assert_eq!(spent(&days, now), Spent { today: 3.0, this_month: 3.0 }, "December is another month");
        meter(&mut days, JAN_1 + DAY_MS + HOUR, Some(1.0));
        let spent = spent(&days, JAN_1 + DAY_MS + HOUR);
        assert_eq!((spent.today, spent.this_month), (1.0, 25.0));
    }

    #[test]
    fn the_hours_left_run_to_utc_midnight_and_the_first_of_next_month() {
        let p = Periods::at(JAN_1 + 6 * HOUR, Spent::default());
        assert_eq!(p.day_hours_left, 18.0);
        assert_eq!(p.month_hours_left, 31.0 * 24.0 - 6.0);
        let dec_31 = Periods::at(JAN_1 - HOUR, Spent::default());
        assert_eq!((dec_31.day_hours_left, dec_31.month_hours_left), (1.0, 1.0));
        for days in [0, 31, 59, 365, 10_000, 20_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn old_days_are_forgotten() {
        let mut days = BTreeMap::new();
        meter(&mut days, JAN_1, Some(1.0));
        meter(&mut days, JAN_1 + 100 * DAY_MS, Some(1.0));
        assert!(days.len() as u64 <= KEEP_DAYS + 1, "{}", days.len());
        assert!(!days.contains_key("2026-01-01"));
    }
}
