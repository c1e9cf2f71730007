//! Axis ticks for the report's charts, computed rather than drawn by hand: counts in 1-2-5
//! steps, time in clock steps (seconds, minutes, hours, days) labelled in one unit chosen by
//! the run's length. At most [`MOST_INTERVALS`] intervals, so at most eight labels share an
//! axis and never overprint one another, whether the run took ten seconds or three days.

/// Most intervals between ticks on one axis (one more label than that).
pub(crate) const MOST_INTERVALS: u64 = 7;

/// Ticks from 0 to the first tick at or above `max`: `(ticks, top)`, the top being the axis'
/// end. Steps are 1, 2 or 5 times a power of ten; `max` 0 gives the axis 0–1.
pub(crate) fn counts(max: u64) -> (Vec<u64>, u64) {
    let max = max.max(1);
    let mut magnitude = 1u64;
    let step = loop {
        if let Some(step) = [1, 2, 5]
            .into_iter()
            .map(|m| m * magnitude)
            .find(|step| max.div_ceil(*step) <= MOST_INTERVALS)
        {
            break step;
        }
        magnitude = magnitude.saturating_mul(10);
    };
    let top = max.div_ceil(step) * step;
    ((0..=top / step).map(|k| k * step).collect(), top)
}

/// Clock steps, in seconds: round numbers of seconds, minutes, hours and days.
const TIME_STEPS: [u64; 21] = [
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    2 * 60,
    5 * 60,
    10 * 60,
    15 * 60,
    30 * 60,
    3_600,
    2 * 3_600,
    3 * 3_600,
    6 * 3_600,
    12 * 3_600,
    86_400,
    2 * 86_400,
    5 * 86_400,
    10 * 86_400,
];

/// Ticks of a time axis from 0 to `total` seconds, as `(seconds, label)`: the smallest clock
/// step that gives at most [`MOST_INTERVALS`] intervals, every label in the step's unit ("0 s …
/// 10 s", "0 min … 60 min", "0 h … 72 h", "0 d … 30 d"). A run under a second gets 0 and 1 s.
pub(crate) fn time(total: f64) -> Vec<(f64, String)> {
    let total = if total.is_finite() && total > 1.0 {
        total
    } else {
        1.0
    };
    let step = TIME_STEPS
        .into_iter()
        .find(|s| (total / *s as f64).floor() as u64 <= MOST_INTERVALS)
        .unwrap_or_else(|| {
            // Beyond 70 days: a whole number of 10-day steps.
            let tens = (total / (10.0 * 86_400.0 * MOST_INTERVALS as f64)).ceil() as u64;
            tens * 10 * 86_400
        });
    let (unit, name) = match step {
        s if s < 60 => (1, "s"),
        s if s < 3_600 => (60, "min"),
        s if s < 86_400 => (3_600, "h"),
        _ => (86_400, "d"),
    };
    let count = (total / step as f64).floor() as u64;
    (0..=count)
        .map(|k| {
            let at = k * step;
            ((at) as f64, format!("{} {name}", at / unit))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_step_by_one_two_or_five() {
        assert_eq!(counts(0), (vec![0, 1], 1));
        assert_eq!(counts(7), ((0..=7).collect(), 7));
        assert_eq!(counts(8), (vec![0, 2, 4, 6, 8], 8));
        assert_eq!(counts(13), (vec![0, 2, 4, 6, 8, 10, 12, 14], 14));
        assert_eq!(counts(1_234), ((0..=7).map(|k| k * 200).collect(), 1_400));
        assert_eq!(counts(5_000_000).1, 5_000_000);
    }

    #[test]
    fn time_labels_are_in_the_unit_of_the_runs_length() {
        let labels =
            |total: f64| -> Vec<String> { time(total).into_iter().map(|(_, l)| l).collect() };
        assert_eq!(labels(10.0), ["0 s", "2 s", "4 s", "6 s", "8 s", "10 s"]);
        assert_eq!(
            labels(3_600.0),
            ["0 min", "10 min", "20 min", "30 min", "40 min", "50 min", "60 min"]
        );
        assert_eq!(
            labels(3.0 * 86_400.0),
            ["0 h", "12 h", "24 h", "36 h", "48 h", "60 h", "72 h"]
        );
        assert_eq!(labels(0.2), ["0 s", "1 s"]);
        assert_eq!(
            labels(30.0 * 86_400.0),
            ["0 d", "5 d", "10 d", "15 d", "20 d", "25 d", "30 d"]
        );
        for total in [1.0, 59.0, 61.0, 599.0, 7_199.0, 86_399.0, 400.0 * 86_400.0] {
            let ticks = time(total);
            assert!(
                ticks.len() as u64 <= MOST_INTERVALS + 1,
                "{total}: {ticks:?}"
            );
            assert!(ticks.len() >= 2, "{total}: {ticks:?}");
            assert!(ticks.iter().all(|(at, _)| *at <= total.max(1.0)), "{total}");
        }
    }
}
