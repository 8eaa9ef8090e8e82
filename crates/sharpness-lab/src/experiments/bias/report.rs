//! The explicit-bias experiment's figures and report text, from its records alone.

use std::path::Path;

use anyhow::Result;
use plotters::style::RGBColor;

use super::{EpochRecord, Preset, Settings, runs, series_of};
use crate::report::{Figure, Panel, Series, Style, markdown_table};
use crate::stats::{self, Summary};

const COLORS: [RGBColor; 6] = [
    RGBColor(0, 0, 0),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// One of the two sweeps: Frob-SAM measured by ‖∇²L‖²_F, Trace-SAM by tr ∇²L.
#[derive(Clone, Copy, PartialEq)]
enum Sweep {
    Frob,
    Trace,
}

impl Sweep {
    fn method(self) -> &'static str {
        match self {
            Sweep::Frob => "frob-sam",
            Sweep::Trace => "trace-sam",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Sweep::Frob => "Frob-SAM",
            Sweep::Trace => "Trace-SAM",
        }
    }
    fn file(self) -> &'static str {
        match self {
            Sweep::Frob => "frobenius",
            Sweep::Trace => "trace",
        }
    }
    fn symbol(self) -> &'static str {
        match self {
            Sweep::Frob => "‖∇²L‖²_F",
            Sweep::Trace => "tr ∇²L",
        }
    }
    fn lambdas(self, settings: &Settings) -> &[f64] {
        match self {
            Sweep::Frob => &settings.frob_lambdas,
            Sweep::Trace => &settings.trace_lambdas,
        }
    }
    /// The measure and its standard error over probes.
    fn measure(self, r: &EpochRecord) -> (f64, f64) {
        match self {
            Sweep::Frob => (r.frobenius, r.frobenius_se),
            Sweep::Trace => (r.trace, r.trace_se),
        }
    }
}

/// The runs of one sweep at one λ, one series per seed (SGD for λ = 0).
fn seed_series<'a>(
    records: &'a [EpochRecord],
    sweep: Sweep,
    lambda: f64,
    seeds: &[u64],
) -> Vec<Vec<&'a EpochRecord>> {
    seeds
        .iter()
        .map(|&seed| {
            if lambda == 0.0 {
                series_of(records, "sgd", 0.0, seed)
            } else {
                series_of(records, sweep.method(), lambda, seed)
            }
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// The final values of one λ of a sweep, over seeds.
struct Final {
    lambda: f64,
    /// The measure, one value per seed.
    measure: Summary,
    /// Root mean square of the probes' standard errors.
    probe_se: f64,
    test_acc: Summary,
    train_loss: Summary,
}

impl Final {
    /// Half-width of the 95 % interval: over seeds (Student's t) when there are several, else
    /// over the probes of the one run (1.96 standard errors).
    fn half_width(&self) -> f64 {
        if self.measure.n > 1 {
            self.measure.ci95
        } else {
            1.96 * self.probe_se
        }
    }
}

fn finals(records: &[EpochRecord], sweep: Sweep, settings: &Settings) -> Vec<Final> {
    sweep
        .lambdas(settings)
        .iter()
        .filter_map(|&lambda| {
            let lasts: Vec<&EpochRecord> = seed_series(records, sweep, lambda, &settings.seeds)
                .iter()
                .filter_map(|s| s.last().copied())
                .collect();
            if lasts.is_empty() {
                return None;
            }
            let of = |f: &dyn Fn(&EpochRecord) -> f64| {
                Summary::of(&lasts.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let se2: Vec<f64> = lasts.iter().map(|r| sweep.measure(r).1.powi(2)).collect();
            Some(Final {
                lambda,
                measure: of(&|r| sweep.measure(r).0),
                probe_se: stats::mean(&se2).sqrt(),
                test_acc: of(&|r| 100.0 * r.test_acc),
                train_loss: of(&|r| r.train_loss),
            })
        })
        .collect()
}

/// How the final measure depends on λ: the decrease ΔM(λ) = M(0) − M(λ) per λ > 0, the ratio
/// ΔM/λ (constant if the decrease is proportional to λ), and the least-squares slope of
/// log ΔM against log λ (1 if proportional; defined when every ΔM > 0 and there are ≥ 2 λ).
pub struct Proportionality {
    /// (λ, ΔM(λ), ΔM(λ)/M(0), ΔM(λ)/λ) for each λ > 0.
    pub decreases: Vec<(f64, f64, f64, f64)>,
    /// Whether M decreases strictly from each λ to the next.
    pub monotone: bool,
    /// Slope of log ΔM against log λ.
    pub log_slope: Option<f64>,
}

/// [`Proportionality`] of the final means `(λ, M)`, λ ascending and starting at 0.
pub fn proportionality(points: &[(f64, f64)]) -> Option<Proportionality> {
    let (&(l0, m0), rest) = points.split_first()?;
    if l0 != 0.0 || rest.is_empty() {
        return None;
    }
    let decreases: Vec<(f64, f64, f64, f64)> = rest
        .iter()
        .map(|&(l, m)| (l, m0 - m, (m0 - m) / m0, (m0 - m) / l))
        .collect();
    let monotone = points.windows(2).all(|w| w[1].1 < w[0].1);
    let logs: Vec<(f64, f64)> = decreases
        .iter()
        .filter(|d| d.1 > 0.0)
        .map(|d| (d.0.ln(), d.1.ln()))
        .collect();
    let log_slope = (logs.len() == decreases.len() && logs.len() >= 2).then(|| {
        let mx = stats::mean(&logs.iter().map(|p| p.0).collect::<Vec<_>>());
        let my = stats::mean(&logs.iter().map(|p| p.1).collect::<Vec<_>>());
        let sxy: f64 = logs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let sxx: f64 = logs.iter().map(|p| (p.0 - mx).powi(2)).sum();
        sxy / sxx
    });
    Some(Proportionality {
        decreases,
        monotone,
        log_slope,
    })
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-9);
    (lo - pad, hi + pad)
}

/// The mean over seeds of a per-epoch quantity of one λ, per epoch.
fn mean_curve(
    series: &[Vec<&EpochRecord>],
    f: impl Fn(&EpochRecord) -> f64,
    skip_init: bool,
) -> Vec<(f64, f64)> {
    let epochs = series.iter().map(Vec::len).min().unwrap_or(0);
    (usize::from(skip_init)..epochs)
        .map(|e| {
            let values: Vec<f64> = series.iter().map(|s| f(s[e])).collect();
            (series[0][e].epoch as f64, stats::mean(&values))
        })
        .collect()
}

fn lambda_label(lambda: f64) -> String {
    if lambda == 0.0 {
        "SGD (λ = 0)".to_string()
    } else {
        format!("λ = {lambda}")
    }
}

pub(super) fn plot(settings: &Settings, records: &[EpochRecord], dir: &Path) -> Result<()> {
    let epochs = (0.0, settings.epochs as f64);
    for sweep in [Sweep::Frob, Sweep::Trace] {
        let lambdas: Vec<f64> = sweep.lambdas(settings).to_vec();
        if !lambdas.iter().any(|&l| l > 0.0) {
            continue;
        }
        let log_scale = sweep == Sweep::Frob;
        let scale = |v: f64| if log_scale { v.log10() } else { v };
        let label = if log_scale {
            format!("log10 {}", sweep.symbol())
        } else {
            sweep.symbol().to_string()
        };
        let curves: Vec<(f64, Vec<Vec<&EpochRecord>>)> = lambdas
            .iter()
            .map(|&l| (l, seed_series(records, sweep, l, &settings.seeds)))
            .filter(|(_, s)| !s.is_empty())
            .collect();
        let sharp_points: Vec<Vec<(f64, f64)>> = curves
            .iter()
            .map(|(_, s)| mean_curve(s, |r| scale(sweep.measure(r).0), false))
            .collect();
        let acc_points: Vec<Vec<(f64, f64)>> = curves
            .iter()
            .map(|(_, s)| mean_curve(s, |r| 100.0 * r.test_acc, true))
            .collect();
        let mut sharp = Panel::new(
            format!(
                "{label} over epochs (first {} training examples)",
                settings.measure_examples
            ),
            "epoch",
            &label,
            epochs,
            range(sharp_points.iter().flatten().map(|p| p.1)),
        );
        let mut acc = Panel::new(
            "test accuracy (%)",
            "epoch",
            "test accuracy (%)",
            epochs,
            range(acc_points.iter().flatten().map(|p| p.1)),
        );
        // One legend (the colours are shared), where the accuracy curves have risen.
        sharp.legend = None;
        acc.legend = Some(plotters::chart::SeriesLabelPosition::LowerRight);
        for (i, (lambda, _)) in curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let name = lambda_label(*lambda);
            sharp.series.push(Series::new(
                &name,
                sharp_points[i].clone(),
                color,
                Style::LinePoints(3),
            ));
            acc.series.push(Series::new(
                &name,
                acc_points[i].clone(),
                color,
                Style::LinePoints(3),
            ));
        }
        // The final measure against λ, with 95 % intervals.
        let finals = finals(records, sweep, settings);
        let max_lambda = lambdas.iter().copied().fold(0.0, f64::max);
        let mut vs_lambda = Panel::new(
            format!("final {} against λ (95 % intervals)", sweep.symbol()),
            "λ",
            sweep.symbol(),
            (-0.05 * max_lambda, 1.05 * max_lambda),
            range(finals.iter().flat_map(|f| {
                [
                    f.measure.mean - f.half_width(),
                    f.measure.mean + f.half_width(),
                    0.0,
                ]
            })),
        );
        let black = RGBColor(0, 0, 0);
        vs_lambda.series.push(Series::unlabelled(
            finals.iter().map(|f| (f.lambda, f.measure.mean)).collect(),
            black,
            Style::LinePoints(4),
        ));
        for f in &finals {
            vs_lambda.series.push(Series::unlabelled(
                vec![
                    (f.lambda, f.measure.mean - f.half_width()),
                    (f.lambda, f.measure.mean + f.half_width()),
                ],
                black,
                Style::Line,
            ));
        }
        Figure {
            title: format!(
                "{} on MNIST (6×128 ReLU MLP, ρ = {}, lr {}, {} training examples, {} epochs, {} probes, {} seed(s); mean over seeds)",
                sweep.title(),
                settings.rho,
                settings.lr,
                settings.train_examples,
                settings.epochs,
                settings.probes,
                settings.seeds.len()
            ),
            panels: vec![sharp, acc, vs_lambda],
            cols: 3,
            panel_size: (560, 440),
        }
        .save(&dir.join(sweep.file()))?;
    }
    Ok(())
}

/// The mean of the finite values (timings of runs that were not measured are NaN).
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let finite: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    stats::mean(&finite)
}

fn sweep_text(sweep: Sweep, settings: &Settings, records: &[EpochRecord]) -> String {
    let finals = finals(records, sweep, settings);
    let seeds = settings.seeds.len();
    let mut body = format!(
        "**{t}** ([PNG](bias/{f}.png), [SVG](bias/{f}.svg))\n\n![{t}](bias/{f}.png)\n\n",
        t = sweep.title(),
        f = sweep.file()
    );
    let interval = if seeds > 1 {
        format!("95 % interval over {seeds} seeds (Student's t)")
    } else {
        "95 % interval over the probes of the one seed (±1.96 s.e.)".to_string()
    };
    let rows: Vec<Vec<String>> = finals
        .iter()
        .map(|f| {
            let spread = |s: &Summary, digits: usize| {
                if s.n > 1 {
                    format!("{:.*} ± {:.*}", digits, s.mean, digits, s.std)
                } else {
                    format!("{:.*}", digits, s.mean)
                }
            };
            vec![
                if f.lambda == 0.0 {
                    "0 (SGD)".into()
                } else {
                    format!("{}", f.lambda)
                },
                format!(
                    "{:.4e} [{:.3e}, {:.3e}]",
                    f.measure.mean,
                    f.measure.mean - f.half_width(),
                    f.measure.mean + f.half_width()
                ),
                format!("{:.1e}", f.probe_se),
                spread(&f.test_acc, 2),
                spread(&f.train_loss, 4),
            ]
        })
        .collect();
    let symbol = sweep.symbol();
    body.push_str(&markdown_table(
        &[
            "λ",
            &format!("final {symbol}, mean [{interval}]"),
            "probe s.e.",
            "final test acc. (%)",
            "final train loss",
        ],
        &rows,
    ));
    let claim = match sweep {
        Sweep::Frob => {
            "**Paper** (Fig. 2): Frob-SAM lowers the Frobenius norm of the Hessian as λ grows, the decrease roughly proportional to λ, at test accuracy comparable to SGD's."
        }
        Sweep::Trace => {
            "**Expected** by the same theory (Theorem 3; not a figure of the paper): Trace-SAM's bias λρ²/2 · tr ∇²L lowers the trace as λ grows."
        }
    };
    body.push_str(&format!("\n{claim}\n\n"));
    let points: Vec<(f64, f64)> = finals.iter().map(|f| (f.lambda, f.measure.mean)).collect();
    let Some(p) = proportionality(&points) else {
        body.push_str("**Measured:** no λ > 0 next to SGD; nothing to compare.\n\n");
        return body;
    };
    let rows: Vec<Vec<String>> = p
        .decreases
        .iter()
        .map(|&(l, d, rel, per)| {
            vec![
                format!("{l}"),
                format!("{d:.4e}"),
                format!("{:.1} %", 100.0 * rel),
                format!("{per:.4e}"),
            ]
        })
        .collect();
    body.push_str(&markdown_table(
        &[
            "λ",
            &format!("Δ = {symbol}(0) − {symbol}(λ)"),
            "Δ relative to SGD",
            "Δ / λ",
        ],
        &rows,
    ));
    // Separated from SGD: the λ whose interval lies below SGD's.
    let sgd = &finals[0];
    let separated: Vec<String> = finals[1..]
        .iter()
        .filter(|f| f.measure.mean + f.half_width() < sgd.measure.mean - sgd.half_width())
        .map(|f| format!("{}", f.lambda))
        .collect();
    let proportional = match p.log_slope {
        Some(s) if p.monotone && (0.67..=1.5).contains(&s) => format!(
            "roughly proportional to λ: the slope of log Δ against log λ is {s:.2} (1 would be exact proportionality; the criterion here is 0.67–1.5)"
        ),
        Some(s) => format!(
            "**not** proportional to λ: the slope of log Δ against log λ is {s:.2} (1 would be proportional; {}), and Δ/λ ranges over {:.2e}–{:.2e}",
            if s < 1.0 {
                "below 1: the decrease saturates"
            } else {
                "above 1: it grows faster than λ"
            },
            p.decreases
                .iter()
                .map(|d| d.3)
                .fold(f64::INFINITY, f64::min),
            p.decreases
                .iter()
                .map(|d| d.3)
                .fold(f64::NEG_INFINITY, f64::max)
        ),
        None if p.decreases.len() < 2 => {
            "not tested for proportionality: that needs at least two λ > 0".to_string()
        }
        None => "not a decrease at every λ, so no proportionality fit".to_string(),
    };
    let acc_range = |f: &Final| f.test_acc.mean;
    body.push_str(&format!(
        "\n**Measured:** the final {symbol} {} with λ; intervals entirely below SGD's: {}; the decrease is {}. \
         Test accuracy {:.2} % for SGD, {:.2}–{:.2} % for λ > 0.\n\n",
        if p.monotone {
            "decreases monotonically"
        } else {
            "does **not** decrease monotonically"
        },
        if separated.is_empty() {
            "none".to_string()
        } else {
            format!("λ = {}", separated.join(", "))
        },
        proportional,
        acc_range(sgd),
        finals[1..]
            .iter()
            .map(acc_range)
            .fold(f64::INFINITY, f64::min),
        finals[1..]
            .iter()
            .map(acc_range)
            .fold(f64::NEG_INFINITY, f64::max),
    ));
    body
}

pub(super) fn section(
    preset: &str,
    settings: &Settings,
    records: &[EpochRecord],
    total_seconds: f64,
) -> String {
    let paper = Preset::Full.settings();
    let mut body = String::new();
    if preset == "Quick" {
        body.push_str(
            "**Smoke preset: the networks are not trained; nothing below is informative.**\n\n",
        );
    }
    body.push_str(&format!(
        "Preset `{preset}`: {} MNIST training examples, {} epochs, batch {}, momentum SGD (lr {}, momentum {}, \
         dampening 0, no weight decay), ρ = {}, Frob-SAM m = 2, Trace-SAM m = 1 with per-coordinate Gaussian samples \
         (as the reference code ran), seeds {:?}. Scale against the paper's (60 000 examples, 20 epochs, lr 10⁻³, \
         100 probes, Frob-SAM λ ∈ {:?}, Trace-SAM λ ∈ {:?}, one run per λ): {} examples × {} epochs = {:.0} % of its \
         training steps, {} probes. Model: 784–128–128–128–128–128–10 ReLU MLP with six distinct Linear layers as the \
         paper describes (the reference code applies `fc2` twice: seven affine maps, one shared). After every epoch: \
         ‖∇²L‖²_F (Gaussian probes, E‖Hv‖²) and tr ∇²L (Rademacher probes, Hutchinson) with {} probes on the first {} \
         training examples in batches of {} (evaluation mode, `f64`, central differences h = 10⁻⁵ with the ReLU \
         activation pattern frozen at w, i.e. the almost-everywhere Hessian that double backprop gives; \
         `sharpness::measure::Hessian`), and the accuracy on the 10 000 test images. Curves are means over seeds. \
         Run time {:.0} s.\n\n",
        settings.train_examples,
        settings.epochs,
        settings.batch_size,
        settings.lr,
        settings.momentum,
        settings.rho,
        settings.seeds,
        paper.frob_lambdas,
        paper.trace_lambdas,
        settings.train_examples,
        settings.epochs,
        100.0 * (settings.train_examples * settings.epochs) as f64
            / (paper.train_examples * paper.epochs) as f64,
        settings.probes,
        settings.probes,
        settings.measure_examples,
        settings.batch_size,
        total_seconds
    ));
    for sweep in [Sweep::Frob, Sweep::Trace] {
        if sweep.lambdas(settings).iter().any(|&l| l > 0.0) {
            body.push_str(&sweep_text(sweep, settings, records));
        }
    }
    // Timings and the full preset's expected run time.
    let epoch_time = |method: &str| {
        mean(
            records
                .iter()
                .filter(|r| r.method == method && r.epoch > 0)
                .map(|r| r.epoch_seconds),
        )
    };
    let measure_time = |f: fn(&EpochRecord) -> (f64, f64)| {
        mean(
            records
                .iter()
                .filter(|r| f(r).0.is_finite())
                .map(|r| f(r).1),
        )
    };
    let frob_time = measure_time(|r| (r.frobenius, r.frobenius_seconds));
    let trace_time = measure_time(|r| (r.trace, r.trace_seconds));
    let per_example = |method: &str| epoch_time(method) / settings.train_examples as f64;
    let per_probe = |t: f64| t / settings.probes as f64;
    let full_runs = runs(&paper);
    let full_seconds: f64 = full_runs
        .iter()
        .map(|r| {
            let method = r.method.name();
            // A sweep this invocation did not run is costed as the nearest one it did.
            let per = if per_example(method).is_finite() {
                per_example(method)
            } else {
                per_example("frob-sam")
            };
            let train = per * paper.train_examples as f64 * paper.epochs as f64;
            let probe = |run: bool, t: f64| {
                if run && t.is_finite() {
                    per_probe(t)
                } else if run {
                    per_probe(frob_time)
                } else {
                    0.0
                }
            };
            let measures = (paper.epochs + 1) as f64
                * paper.probes as f64
                * (probe(r.frobenius, frob_time) + probe(r.trace, trace_time));
            train + measures
        })
        .sum();
    body.push_str(&format!(
        "**Cost** (this machine, release build, while other processes shared its 2 cores): one epoch over {} \
         examples takes {:.1} s with SGD, {:.1} s with Frob-SAM (3 passes per step) and {:.1} s with Trace-SAM \
         (2 passes); one ‖∇²L‖²_F estimate ({} probes = {} gradients over {} examples in `f64`) takes {:.1} s \
         ({:.2} s per probe), one trace estimate {:.1} s. Expected time of the paper's preset (`sharpness-lab \
         bias`: {} runs × {} epochs on 60 000 examples, 100 probes after every epoch): about {:.0} min.\n",
        settings.train_examples,
        epoch_time("sgd"),
        epoch_time("frob-sam"),
        epoch_time("trace-sam"),
        settings.probes,
        2 * settings.probes,
        settings.measure_examples,
        frob_time,
        per_probe(frob_time),
        trace_time,
        full_runs.len(),
        paper.epochs,
        full_seconds / 60.0
    ));
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decrease_proportional_to_lambda_has_log_slope_one() {
        // M(λ) = 10 − 100 λ: Δ = 100 λ exactly.
        let points = [(0.0, 10.0), (1e-3, 9.9), (1e-2, 9.0), (5e-2, 5.0)];
        let p = proportionality(&points).unwrap();
        assert!(p.monotone);
        assert!((p.log_slope.unwrap() - 1.0).abs() < 1e-9);
        for d in &p.decreases {
            assert!((d.3 - 100.0).abs() < 1e-6, "{}", d.3);
        }
    }

    #[test]
    fn a_saturating_or_rising_measure_is_not_proportional() {
        // Δ = √λ: slope ½.
        let points: Vec<(f64, f64)> = [0.0, 1e-2, 4e-2, 9e-2]
            .iter()
            .map(|&l: &f64| (l, 1.0 - l.sqrt()))
            .collect();
        let p = proportionality(&points).unwrap();
        assert!((p.log_slope.unwrap() - 0.5).abs() < 1e-9);
        // A λ that raises the measure: not monotone, no fit.
        let p = proportionality(&[(0.0, 1.0), (0.1, 1.2), (0.2, 0.5)]).unwrap();
        assert!(!p.monotone);
        assert!(p.log_slope.is_none());
        // No λ > 0, or no SGD point: nothing to compare.
        assert!(proportionality(&[(0.0, 1.0)]).is_none());
        assert!(proportionality(&[(0.1, 1.0), (0.2, 0.5)]).is_none());
    }
}
