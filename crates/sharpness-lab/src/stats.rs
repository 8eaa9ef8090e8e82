//! The lab's one statistics helper: mean, sample standard deviation, standard error and a 95 %
//! confidence interval of a sample, plus the two order and proportion statistics the reports use.
//!
//! Undefined quantities are NaN (the mean of nothing, the spread of one value), so that a report
//! shows "NaN" rather than a made-up 0.

/// A sample's summary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (divisor n − 1).
    pub std: f64,
    /// Standard error of the mean, std / √n.
    pub se: f64,
    /// Half-width of the two-sided 95 % confidence interval of the mean, t₀.₉₇₅(n − 1) · se:
    /// Student's t, not the normal 1.96, because the lab's samples are a few seeds.
    pub ci95: f64,
}

impl Summary {
    /// Summarises `values` (in their order: the sums are taken left to right).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        let mean = mean(values);
        let std = if n > 1 {
            let squares: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (squares / (n - 1) as f64).sqrt()
        } else {
            f64::NAN
        };
        let se = std / (n as f64).sqrt();
        let ci95 = if n > 1 { t_975(n - 1) * se } else { f64::NAN };
        Self {
            n,
            mean,
            std,
            se,
            ci95,
        }
    }
}

/// The arithmetic mean (NaN for no values).
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// The upper median: element n/2 of the sorted values, i.e. for an even count the larger of the
/// two middle values (what the lab's reports have always shown; NaN for no values).
pub fn upper_median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The standard error of the difference of two independent proportions p₁ of n₁ and p₂ of n₂
/// trials, √(p₁(1 − p₁)/n₁ + p₂(1 − p₂)/n₂) (the binomial, normal-approximation one).
pub fn two_proportion_se(p1: f64, n1: usize, p2: f64, n2: usize) -> f64 {
    (p1 * (1.0 - p1) / n1 as f64 + p2 * (1.0 - p2) / n2 as f64).sqrt()
}

/// The 0.975 quantile of Student's t with `df` ≥ 1 degrees of freedom: tabulated to 6 digits up
/// to 30, then the Cornish–Fisher expansion around the normal quantile (error below 1e-5 there).
pub fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
        2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
        2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
        2.048407, 2.045230, 2.042272,
    ];
    assert!(df >= 1, "Student's t needs at least one degree of freedom");
    if let Some(&t) = TABLE.get(df - 1) {
        return t;
    }
    let z: f64 = 1.959_963_984_540_054;
    let v = df as f64;
    let (z3, z5, z7) = (z.powi(3), z.powi(5), z.powi(7));
    z + (z3 + z) / (4.0 * v)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * v * v)
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * v * v * v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn summary_of_a_small_sample_matches_hand_computed_values() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations 32, sample variance 32/7.
        let s = Summary::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(s.n, 8);
        assert_eq!(s.mean, 5.0);
        assert!(close(s.std, (32.0f64 / 7.0).sqrt(), 1e-15), "{}", s.std);
        assert!(close(s.se, (32.0f64 / 7.0 / 8.0).sqrt(), 1e-15), "{}", s.se);
        // t₀.₉₇₅(7) = 2.364624.
        assert!(close(s.ci95, 2.364624 * (4.0f64 / 7.0).sqrt(), 1e-12));
    }

    #[test]
    fn two_values_use_the_closed_form_t_quantile_with_one_degree_of_freedom() {
        // t₀.₉₇₅(1) = tan(0.475π); std of {1, 3} is √2, se 1.
        let s = Summary::of(&[1.0, 3.0]);
        assert!(close(s.se, 1.0, 1e-15));
        let exact = (0.475 * std::f64::consts::PI).tan();
        assert!(close(s.ci95, exact, 1e-5), "{} vs {exact}", s.ci95);
    }

    #[test]
    fn t_quantiles_match_closed_forms_and_approach_the_normal() {
        // df = 2: t = (2p − 1)/√(2p(1 − p)) at p = 0.975.
        let df2 = 0.95 / (2.0 * 0.975 * 0.025f64).sqrt();
        assert!(close(t_975(2), df2, 1e-6), "{}", t_975(2));
        // df = 4: t = 2√(cos(arccos(√a)/3)/√a − 1) with a = 4p(1 − p).
        let a = 4.0 * 0.975 * 0.025f64;
        let df4 = 2.0 * ((a.sqrt().acos() / 3.0).cos() / a.sqrt() - 1.0).sqrt();
        assert!(close(t_975(4), df4, 1e-6), "{}", t_975(4));
        // Past the table: published t₀.₉₇₅(31) = 2.039513, (60) = 2.000298, (120) = 1.979930.
        assert!(close(t_975(31), 2.039513, 1e-5), "{}", t_975(31));
        assert!(close(t_975(60), 2.000298, 1e-5), "{}", t_975(60));
        assert!(close(t_975(120), 1.979930, 1e-5), "{}", t_975(120));
        assert!(close(t_975(1_000_000), 1.959964, 1e-5));
    }

    #[test]
    fn undefined_quantities_are_nan() {
        assert!(mean(&[]).is_nan());
        let one = Summary::of(&[3.0]);
        assert_eq!(one.mean, 3.0);
        assert!(one.std.is_nan() && one.se.is_nan() && one.ci95.is_nan());
        assert!(upper_median(&[]).is_nan());
    }

    #[test]
    fn the_upper_median_takes_the_larger_middle_value() {
        assert_eq!(upper_median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(upper_median(&[5.0, 1.0, 3.0]), 3.0);
    }

    #[test]
    fn two_proportion_standard_error() {
        // p = ½ of 100 and p = 0.1 of 400: √(0.25/100 + 0.09/400) = √0.002725.
        assert!(close(
            two_proportion_se(0.5, 100, 0.1, 400),
            0.002725f64.sqrt(),
            1e-15
        ));
    }
}
