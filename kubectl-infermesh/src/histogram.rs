//! Percentiles from bucket counts, as Prometheus's `histogram_quantile` estimates them: the
//! bucket that holds the rank, and a straight line through it.

/// The `q` quantile (0..=1) of a histogram with per-bucket `counts` over upper `bounds` (one
/// more count than bounds: the last is above every bound). `None` without samples. A rank in the
/// last bucket gives the highest bound: nothing is known above it.
pub fn quantile(q: f64, bounds: &[f64], counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && (below + c) as f64 >= rank {
            let Some(&hi) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
            return Some(lo + (hi - lo) * (rank - below as f64).max(0.0) / c as f64);
        }
        below += c;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [0.1, 0.5, 1.0];

    #[test]
    fn a_rank_is_placed_on_a_line_through_its_bucket() {
        let near = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        // 10 samples in (0.1, 0.5]: the median is halfway.
        assert!(near(quantile(0.5, &BOUNDS, &[0, 10, 0, 0]), 0.3));
        // 4 below 0.1, 6 in (0.5, 1]: p50 is the first of the six, a sixth of the way in.
        let p50 = quantile(0.5, &BOUNDS, &[4, 0, 6, 0]);
        assert!(near(p50, 0.5 + 0.5 / 6.0), "{p50:?}");
        assert!(near(
            quantile(0.25, &BOUNDS, &[4, 0, 6, 0]),
            0.1 * 2.5 / 4.0
        ));
    }

    #[test]
    fn beyond_the_last_bound_is_the_last_bound_and_no_samples_is_none() {
        assert_eq!(quantile(0.99, &BOUNDS, &[1, 0, 0, 99]), Some(1.0));
        assert_eq!(quantile(0.5, &BOUNDS, &[0, 0, 0, 0]), None);
        assert_eq!(quantile(0.5, &BOUNDS, &[]), None);
    }
}
