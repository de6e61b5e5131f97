//! Confidence intervals for the bench's figures: the median of repeated measurements and
//! a distribution-free 95% interval for it, from order statistics (no assumption about the
//! shape of the noise, which on a shared machine has long tails).
//!
//! For `n` values sorted as `x(1) <= ... <= x(n)`, the interval is `[x(k), x(n+1-k)]` with
//! the largest `k` such that a Binomial(n, 1/2) variable falls below `k` with probability
//! at most 2.5%: the true median lies outside it with probability at most 5%. Six values
//! are the fewest that give one (`k = 1`, 96.9%).

/// Fewest values that give a 95% interval for the median.
pub const MIN_VALUES: usize = 6;

/// A median and, with at least [`MIN_VALUES`] values, its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The median.
    pub median: f64,
    /// The interval, `None` with too few values.
    pub ci95: Option<(f64, f64)>,
    /// Values it was computed from.
    pub n: usize,
}

impl Estimate {
    /// The interval's width, `None` without one.
    pub fn width(&self) -> Option<f64> {
        self.ci95.map(|(lo, hi)| hi - lo)
    }
}

/// The median of `values` and its interval.
pub fn estimate(values: &[f64]) -> Estimate {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    let ci95 = rank(n).map(|k| (v[k - 1], v[n - k]));
    Estimate { median, ci95, n }
}

/// The 1-based rank `k` of the interval's lower end for `n` values: the largest `k` with
/// `P(Binomial(n, 1/2) < k) <= 0.025`, or `None` when even `k = 1` is not enough.
fn rank(n: usize) -> Option<usize> {
    // P(X = i) in logs (2^-n underflows past n = 1074).
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut below = 0.0f64; // P(X < k) for the k being tried
    let mut k = 0;
    for i in 0..n {
        let p = (ln_choose + ln_half_n).exp();
        if below + p > 0.025 {
            break;
        }
        below += p;
        k = i + 1;
        // C(n, i + 1) = C(n, i) * (n - i) / (i + 1)
        ln_choose += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    (k >= 1).then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranks_are_the_binomial_table() {
        // Tabulated 95% ranks for the median (e.g. Conover, Practical Nonparametric
        // Statistics): n = 6..8 -> 1, 9..11 -> 2, 12..14 -> 3, 20 -> 6, 100 -> 40.
        assert_eq!(rank(5), None);
        for (n, k) in [(6, 1), (8, 1), (9, 2), (11, 2), (12, 3), (14, 3), (20, 6), (100, 40)] {
            assert_eq!(rank(n), Some(k), "n = {n}");
        }
        // No underflow for long runs.
        assert!(rank(5000).is_some_and(|k| k > 2400 && k < 2500));
    }

    #[test]
    fn an_estimate_brackets_its_median() {
        let e = estimate(&[5.0, 1.0, 4.0, 2.0, 3.0]);
        assert_eq!((e.median, e.ci95, e.n), (3.0, None, 5));
        let e = estimate(&[6.0, 1.0, 5.0, 2.0, 4.0, 3.0, f64::NAN]);
        assert_eq!((e.median, e.ci95, e.n), (3.5, Some((1.0, 6.0)), 6));
        let values: Vec<f64> = (0..20).map(f64::from).collect();
        let e = estimate(&values);
        assert_eq!(e.ci95, Some((5.0, 14.0)));
        assert_eq!(e.width(), Some(9.0));
    }
}
