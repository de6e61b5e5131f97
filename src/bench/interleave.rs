//! Compared modes run side by side: every repetition runs each mode once, in an order that
//! rotates from one repetition to the next (no mode always goes first, into a cold cache
//! or right after another's writes), and each reported difference is computed within a
//! repetition, so the machine's slow drift is shared by both sides. Repetitions continue
//! until every difference's 95% interval is narrower than the target, or the time
//! allowance is spent: the result says which.

use std::time::{Duration, Instant};

use super::interval::{Estimate, estimate};
use crate::exit_code::CliError;

/// How long a comparison may repeat.
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    /// Repetitions always run (at least `interval::MIN_VALUES` for an interval).
    pub min_reps: usize,
    /// Repetitions never exceeded.
    pub max_reps: usize,
    /// Time after which no new repetition starts once `min_reps` ran.
    pub time: Duration,
    /// Widest interval accepted for every difference (in the difference's own units: 0.02
    /// is 2 points of a fraction).
    pub width: f64,
}

/// A figure computed from one repetition's measurements of every mode, in mode order.
pub struct Difference {
    /// Its JSON key.
    pub name: &'static str,
    /// The figure from one repetition.
    pub of: fn(&[f64]) -> f64,
}

/// What a comparison measured.
pub struct Compared {
    /// Each mode's measurements, one per repetition.
    pub modes: Vec<Vec<f64>>,
    /// Each difference's median and interval over the repetitions.
    pub differences: Vec<(&'static str, Estimate)>,
    /// True when every difference's interval is narrower than the allowance's width.
    pub converged: bool,
    /// Seconds spent.
    pub seconds: f64,
}

impl Compared {
    /// The estimate of mode `i`'s measurements.
    pub fn mode(&self, i: usize) -> Estimate {
        estimate(&self.modes[i])
    }

    /// The estimate of the difference named `name`.
    pub fn difference(&self, name: &str) -> Estimate {
        self.differences.iter().find(|(n, _)| *n == name).map_or(estimate(&[]), |(_, e)| *e)
    }
}

/// Runs `modes` modes interleaved (`run(mode, repetition)` measures one) until every one
/// of `differences` has an interval narrower than `allow.width`, or the allowance ends.
///
/// # Errors
/// The first error of a measurement.
pub fn interleaved(
    modes: usize,
    allow: Allowance,
    differences: &[Difference],
    mut run: impl FnMut(usize, usize) -> Result<f64, CliError>,
) -> Result<Compared, CliError> {
    let start = Instant::now();
    let mut values = vec![Vec::new(); modes];
    let mut rep = 0;
    loop {
        for j in 0..modes {
            let mode = (rep + j) % modes;
            values[mode].push(run(mode, rep)?);
        }
        rep += 1;
        let ests = summarize(&values, differences);
        let converged = ests.iter().all(|(_, e)| e.width().is_some_and(|w| w < allow.width));
        let spent = start.elapsed() >= allow.time;
        if rep >= allow.max_reps || (rep >= allow.min_reps && (converged || spent)) {
            return Ok(Compared {
                modes: values,
                differences: ests,
                converged,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
    }
}

fn summarize(values: &[Vec<f64>], differences: &[Difference]) -> Vec<(&'static str, Estimate)> {
    let reps = values.iter().map(Vec::len).min().unwrap_or(0);
    differences
        .iter()
        .map(|d| {
            let per_rep: Vec<f64> =
                (0..reps).map(|r| (d.of)(&values.iter().map(|m| m[r]).collect::<Vec<f64>>())).collect();
            (d.name, estimate(&per_rep))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_rotate_and_differences_pair_within_a_repetition() {
        let mut order = Vec::new();
        // Mode 1 is always 10% slower than mode 0 in the same repetition, whatever the
        // drift between repetitions.
        let allow = Allowance { min_reps: 3, max_reps: 50, time: Duration::from_secs(3600), width: 1e-9 };
        let diff = [Difference { name: "loss", of: |m| 1.0 - m[1] / m[0] }];
        let c = interleaved(3, allow, &diff, |mode, rep| {
            order.push(mode);
            let base = 100.0 * (1.0 + rep as f64);
            Ok(if mode == 1 { base * 0.9 } else { base })
        })
        .unwrap();
        assert_eq!(&order[..9], &[0, 1, 2, 1, 2, 0, 2, 0, 1], "each repetition starts with the next mode");
        // Converged: every repetition gives exactly 0.1, so the interval has no width.
        assert!(c.converged);
        let e = c.difference("loss");
        assert_eq!(e.n, super::super::interval::MIN_VALUES);
        assert!((e.median - 0.1).abs() < 1e-12 && e.width().unwrap() < 1e-9);
    }

    #[test]
    fn it_stops_at_the_allowance_and_says_it_did_not_converge() {
        let allow = Allowance { min_reps: 2, max_reps: 8, time: Duration::from_secs(3600), width: 0.02 };
        let diff = [Difference { name: "noise", of: |m| m[0] }];
        let mut x = 0.0;
        let c = interleaved(1, allow, &diff, |_, _| {
            x += 1.0;
            Ok(x)
        })
        .unwrap();
        assert!(!c.converged);
        assert_eq!(c.modes[0].len(), 8, "max_reps");
    }
}
