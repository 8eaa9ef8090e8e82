//! `reproduce` for the toys: Figures 1–5 of the Monge SAM paper and the equilibrium criterion,
//! written under `out/toys/` with a report section.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use indicatif::ProgressBar;
use plotters::prelude::{RGBColor, SeriesLabelPosition};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;
use strum::VariantArray;

use super::loss::{Loss, autodiff_gradient, device, hessian};
use super::sim::{self, Trajectory};
use crate::methods::{Method, MethodParams};
use crate::report::{
    Arrow, ColorMap, Field, Figure, Heatmap, PALETTE, Panel, ReportSection, Series, Style,
    csv_bytes, histogram, markdown_table, write_atomic,
};

/// ρ values of the stability maps (Fig. 4): the paper does not state them; 0 is GD.
pub const FIG4_RHOS: [f64; 4] = [0.0, 0.1, 0.5, 1.0];
/// Grid points per axis of the stability maps.
pub const FIG4_GRID: usize = 41;
/// Seed of Fig. 2's uniform starts.
pub const FIG2_SEED: u64 = 2025;
/// Radius of the ring of sinc minima, r* = √s*, tan s* = s*.
pub const SINC_RING: f64 = 2.119_8;

/// Settings of the toys in `reproduce`: library defaults, except SSAM's Fisher estimate uses one
/// draw (a deterministic toy has one "example", so 16 identical draws give the same mask).
pub fn toy_params() -> MethodParams {
    MethodParams {
        num_samples: 1,
        ..MethodParams::default()
    }
}

fn banana_background(range: (f64, f64)) -> Heatmap {
    let field = Field::sample(120, 120, range, range, |x, y| {
        Loss::Banana.value([x, y]).ln_1p()
    });
    Heatmap {
        field,
        colormap: ColorMap::Viridis,
        range: (0.0, 5.0),
        contours: [0.05, 0.3, 1.0, 3.0, 10.0, 30.0]
            .iter()
            .map(|l: &f64| l.ln_1p())
            .collect(),
    }
}

fn landmarks() -> Vec<Series> {
    vec![
        Series::new(
            "saddle (0,0)",
            vec![(0.0, 0.0)],
            RGBColor(255, 255, 255),
            Style::Squares(5),
        ),
        Series::new(
            "flattest minima",
            vec![(1.0, 1.0), (-1.0, -1.0)],
            RGBColor(255, 0, 0),
            Style::Squares(4),
        ),
    ]
}

fn pct(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

/// The 2-cycle amplitude a of ℓ = θ² (`docs/algorithms.md` §9.1): SAM a = αρ/(1 − α); M-SAM solves
/// a(1 − α)√(1 + 4a²) = αρ (bisection).
pub fn paraboloid_cycle(method: Method, lr: f64, rho: f64) -> f64 {
    match method {
        Method::Msam => {
            let (mut lo, mut hi) = (0.0, 10.0);
            for _ in 0..200 {
                let a = 0.5 * (lo + hi);
                if a * (1.0 - lr) * (1.0 + 4.0 * a * a).sqrt() < lr * rho {
                    lo = a
                } else {
                    hi = a
                }
            }
            0.5 * (lo + hi)
        }
        _ => lr * rho / (1.0 - lr),
    }
}

#[derive(Serialize)]
struct TrajRow<'a> {
    method: &'a str,
    step: usize,
    x: f64,
    y: f64,
    loss: f64,
    applied_grad_x: f64,
    applied_grad_y: f64,
}

#[derive(Serialize)]
struct FinalRow<'a> {
    method: &'a str,
    rho: f64,
    lr: f64,
    /// Fig. 2's start square [−h, h]² (0 where the starts are not drawn from a square).
    start_half_width: f64,
    start_x: f64,
    start_y: f64,
    x: f64,
    y: f64,
    loss: f64,
}

#[derive(Serialize)]
struct StabRow<'a> {
    method: &'a str,
    rho: f64,
    x: f64,
    y: f64,
    rho_tilde: f64,
    lambda1_re: f64,
    lambda1_im: f64,
    lambda2_re: f64,
    lambda2_im: f64,
}

/// Runs every toy experiment into `out/toys/` and returns the report section (figure paths are
/// relative to `out`). Each finished run or map row advances `progress`.
/// Fig. 2's two readings of "uniform in the centred unit square": half-widths ½ and 1.
const FIG2_READINGS: [(f64, &str); 2] = [(0.5, "[−½, ½]²"), (1.0, "[−1, 1]²")];
/// Fig. 2's strict criterion: converged to within this distance of the maximum (5 % of r*).
const FIG2_STRICT: f64 = 0.1;

/// Where one Fig. 2 configuration ends, from 200 starts.
struct Fig2Result {
    method: Method,
    rho: f64,
    finals: Vec<[f64; 2]>,
    /// Closer to the maximum than to the ring of minima (‖θ‖ < r*/2).
    loose: f64,
    /// Within [`FIG2_STRICT`] of the maximum.
    strict: f64,
    median_distance: f64,
}

/// Fig. 2 (attraction to the sinc's maximum) under both readings of the start square and both
/// criteria: the figures `fig2_sinc` (final points) and `fig2_distances` (histograms of the
/// final distance to the maximum), `fig2_finals.csv`, and the claims, summary and report text.
fn fig2(
    dir: &Path,
    params: &MethodParams,
    progress: &ProgressBar,
) -> Result<(Vec<Vec<String>>, serde_json::Value, String)> {
    let configs = [
        (Method::Sam, 0.2),
        (Method::Sam, 1.0),
        (Method::Msam, 0.2),
        (Method::Msam, 1.0),
    ];
    let runs_per_reading = configs.len() * 200;
    progress.inc_length((FIG2_READINGS.len() * runs_per_reading) as u64);
    progress.set_message("toys: Fig. 2 (sinc, 1600 runs)");
    let tick = || progress.inc(1);
    let range = (-3.0, 3.0);
    let (mut scatter, mut distances, mut rows, mut results) = (vec![], vec![], vec![], vec![]);
    for (half, reading) in FIG2_READINGS {
        let mut rng = StdRng::seed_from_u64(FIG2_SEED);
        let starts: Vec<[f64; 2]> = (0..200)
            .map(|_| [rng.random_range(-half..half), rng.random_range(-half..half)])
            .collect();
        let mut hist = Panel::new(
            format!("starts in {reading}: final distance to the maximum"),
            "‖θ‖ after 200 steps",
            "runs (of 200)",
            (0.0, 3.0),
            (0.0, 200.0),
        );
        let mut reading_results = vec![];
        for (k, (m, rho)) in configs.into_iter().enumerate() {
            let runs = sim::run_many(Loss::Sinc, m, params, rho, 0.05, 200, &starts, &tick)?;
            let finals: Vec<[f64; 2]> = runs.iter().map(Trajectory::last).collect();
            let r: Vec<f64> = finals.iter().map(|q| q[0].hypot(q[1])).collect();
            let share = |pred: &dyn Fn(f64) -> bool| {
                r.iter().filter(|&&d| pred(d)).count() as f64 / r.len() as f64
            };
            let result = Fig2Result {
                method: m,
                rho,
                loose: share(&|d| d < SINC_RING / 2.0),
                strict: share(&|d| d < FIG2_STRICT),
                median_distance: crate::stats::upper_median(&r),
                finals,
            };
            for (s, f) in starts.iter().zip(&result.finals) {
                rows.push(FinalRow {
                    method: m.name(),
                    rho,
                    lr: 0.05,
                    start_half_width: half,
                    start_x: s[0],
                    start_y: s[1],
                    x: f[0],
                    y: f[1],
                    loss: Loss::Sinc.value(*f),
                });
            }
            hist.series.push(Series::new(
                format!("{} ρ={rho}", m.display_name()),
                histogram(&r, 0.0, 3.0, 30),
                PALETTE[k],
                Style::LinePoints(2),
            ));
            scatter.push(fig2_panel(&starts, &result, reading, range));
            reading_results.push(result);
        }
        hist.legend = Some(SeriesLabelPosition::UpperRight);
        distances.push(hist);
        results.push(reading_results);
    }
    Figure {
        title: "Fig. 2 — sinc 5·sin(x²+y²)/(x²+y²): 200 starts, lr 0.05, 200 steps (rows: start squares)"
            .into(),
        panels: scatter,
        cols: 4,
        panel_size: (460, 440),
    }
    .save(&dir.join("fig2_sinc"))?;
    Figure {
        title: format!(
            "Fig. 2 — final distance to the maximum (strict: < {FIG2_STRICT}; loose: < r*/2 ≈ {:.2})",
            SINC_RING / 2.0
        ),
        panels: distances,
        cols: 2,
        panel_size: (560, 420),
    }
    .save(&dir.join("fig2_distances"))?;
    write_atomic(&dir.join("fig2_finals.csv"), &csv_bytes(&rows)?)?;

    // The claims, under each reading and criterion: SAM at ρ = 1 ends at the maximum more often
    // than at ρ = 0.2; M-SAM less often than SAM, even at ρ = 1. A difference of two fractions of
    // 200 runs counts when it exceeds two standard errors.
    let verdict = |smaller: f64, larger: f64| {
        let se = crate::stats::two_proportion_se(smaller, 200, larger, 200);
        match larger - smaller {
            d if d > 2.0 * se && d > 0.0 => "holds",
            d if d > 0.0 => "same direction, within 2 s.e.",
            _ => "does not hold",
        }
    };
    let mut table = vec![];
    let mut claims = vec![];
    let mut both = vec![];
    for ((_, reading), rs) in FIG2_READINGS.iter().zip(&results) {
        for r in rs {
            table.push(vec![
                reading.to_string(),
                format!("{} ρ={}", r.method.display_name(), r.rho),
                pct(r.loose),
                pct(r.strict),
                format!("{:.3}", r.median_distance),
            ]);
        }
        for (criterion, of) in [
            (
                "loose",
                (|r: &Fig2Result| r.loose) as fn(&Fig2Result) -> f64,
            ),
            ("strict", |r: &Fig2Result| r.strict),
        ] {
            let (sam02, sam1, msam02, msam1) = (of(&rs[0]), of(&rs[1]), of(&rs[2]), of(&rs[3]));
            let (first, second) = (verdict(sam02, sam1), verdict(msam1, sam1));
            claims.push(vec![
                "Fig. 2".into(),
                format!("{reading}, {criterion}: ρ = 1 makes the maximum a stronger attractor for SAM than ρ = 0.2"),
                format!("{first}: SAM {} (ρ=0.2) vs {} (ρ=1)", pct(sam02), pct(sam1)),
            ]);
            claims.push(vec![
                "Fig. 2".into(),
                format!("{reading}, {criterion}: M-SAM is attracted less to the maximum than SAM, even at ρ = 1"),
                format!(
                    "{second}: ρ=1 M-SAM {} vs SAM {} (ρ=0.2: {} vs {})",
                    pct(msam1),
                    pct(sam1),
                    pct(msam02),
                    pct(sam02)
                ),
            ]);
            if first == "holds" && second == "holds" {
                both.push(format!("{reading} with the {criterion} criterion"));
            }
        }
    }
    let summary = json!({
        "seed": FIG2_SEED,
        "loose_radius": SINC_RING / 2.0,
        "strict_radius": FIG2_STRICT,
        "results": FIG2_READINGS.iter().zip(&results).flat_map(|((half, _), rs)| rs.iter().map(move |r| json!({
            "start_half_width": half, "method": r.method.name(), "rho": r.rho,
            "fraction_at_maximum": r.loose, "fraction_within_strict_radius": r.strict,
            "median_distance": r.median_distance,
        }))).collect::<Vec<_>>(),
    });
    let body = format!(
        "### Fig. 2 — attraction to the maximum of the sinc\n\n![Fig. 2](toys/fig2_sinc.png)\n\n\
         ![Fig. 2 distances](toys/fig2_distances.png)\n\n\
         200 starts (seed {FIG2_SEED}) uniform in the centred unit square, under both readings: \
         [−½, ½]² and [−1, 1]². Two criteria for \"at the maximum\": loose, final ‖θ‖ < r*/2 ≈ {:.2} \
         (closer to the maximum than to the ring of minima r* ≈ {SINC_RING:.2}); strict, final ‖θ‖ < \
         {FIG2_STRICT}. A claim holds when the difference exceeds two standard errors of the two \
         fractions.\n\n{}\nBoth claims hold under: {}. Data: `toys/fig2_finals.csv`.\n\n",
        SINC_RING / 2.0,
        markdown_table(
            &[
                "start square",
                "method",
                "loose",
                "strict",
                "median final ‖θ‖"
            ],
            &table
        ),
        if both.is_empty() {
            "none of the four".to_string()
        } else {
            both.join("; ")
        },
    );
    Ok((claims, summary, body))
}

/// One Fig. 2 panel: the sinc, its ring of minima, the starts and where they ended.
fn fig2_panel(starts: &[[f64; 2]], r: &Fig2Result, reading: &str, range: (f64, f64)) -> Panel {
    let mut p = Panel::new(
        format!(
            "{} ρ={}, {reading}: {} / {} at the max",
            r.method.display_name(),
            r.rho,
            pct(r.loose),
            pct(r.strict)
        ),
        "x",
        "y",
        range,
        range,
    );
    p.heatmap = Some(Heatmap {
        field: Field::sample(120, 120, range, range, |x, y| Loss::Sinc.value([x, y])),
        colormap: ColorMap::Viridis,
        range: (-1.1, 5.0),
        contours: vec![-1.0, 0.0, 1.0, 2.5, 4.0],
    });
    let ring = (0..=120).map(|k| {
        let a = k as f64 / 120.0 * std::f64::consts::TAU;
        (SINC_RING * a.cos(), SINC_RING * a.sin())
    });
    p.series.push(Series::new(
        "ring of minima",
        ring.collect(),
        RGBColor(255, 255, 255),
        Style::Line,
    ));
    p.series.push(Series::new(
        "starts",
        starts.iter().map(|q| (q[0], q[1])).collect(),
        RGBColor(200, 200, 200),
        Style::Points(1),
    ));
    p.series.push(Series::new(
        "final θ",
        r.finals.iter().map(|q| (q[0], q[1])).collect(),
        r.method.spec().color,
        Style::Points(3),
    ));
    p.series.push(Series::new(
        "maximum",
        vec![(0.0, 0.0)],
        RGBColor(0, 0, 0),
        Style::Squares(4),
    ));
    p.legend = Some(SeriesLabelPosition::LowerRight);
    p
}

pub fn reproduce(out: &Path, progress: &ProgressBar) -> Result<ReportSection> {
    let dir = out.join("toys");
    std::fs::create_dir_all(&dir)?;
    let params = toy_params();
    let started = Instant::now();
    let tick = || progress.inc(1);
    let mut body = String::new();
    let mut summary = serde_json::Map::new();
    let mut claims: Vec<Vec<String>> = vec![];

    body.push_str(
        "Toy landscapes of Jacobsen & Arvanitidis (2025), Figures 1–5 (`docs/algorithms.md` §9.1–9.2). Every toy is a Burn module with \
         one 2-element `f64` parameter, stepped by the library's `SharpnessAware::step` with a plain-SGD base (no momentum, \
         no weight decay); methods come from the lab's registry with library defaults (ASAM η = 0.01, Fisher η = 1, \
         SSAM-F with one Fisher draw since a deterministic toy has one example, universal class λ = 1).\n\n",
    );

    // ---------------- Fig. 1 ----------------
    progress.inc_length(3);
    progress.set_message("toys: Fig. 1 (banana trajectories)");
    let fig1_methods = [Method::Sgd, Method::Sam, Method::Msam];
    let start = [-1.5, 0.5];
    let mut fig1 = vec![];
    for m in fig1_methods {
        fig1.push((
            m,
            sim::run(Loss::Banana, m, &params, 1.0, 0.01, 200, start)?,
        ));
        tick();
    }
    let range = (-2.5, 2.5);
    let mut p = Panel::new(
        "Banana ℓ=(1−θ₁θ₂)², ρ=1, lr 0.01, 200 steps",
        "θ₁",
        "θ₂",
        range,
        range,
    );
    p.heatmap = Some(banana_background(range));
    p.legend = Some(SeriesLabelPosition::LowerRight);
    for (m, t) in &fig1 {
        let pts: Vec<(f64, f64)> = t.points.iter().map(|q| (q[0], q[1])).collect();
        p.series.push(Series::new(
            m.display_name(),
            pts,
            m.spec().color,
            Style::Line,
        ));
        p.series.push(Series::unlabelled(
            vec![(t.last()[0], t.last()[1])],
            m.spec().color,
            Style::Points(5),
        ));
        for (k, g) in t.applied_gradients.iter().enumerate().step_by(10) {
            let n = g[0].hypot(g[1]);
            if n > 0.0 {
                let q = t.points[k];
                let s = 0.25 / n;
                p.arrows.push(Arrow {
                    from: (q[0], q[1]),
                    to: (q[0] - s * g[0], q[1] - s * g[1]),
                    color: m.spec().color,
                });
            }
        }
    }
    p.series.extend(landmarks());
    let mut p2 = Panel::new(
        "Loss along the trajectories",
        "step",
        "log₁₀ ℓ",
        (0.0, 200.0),
        (-12.0, 1.0),
    );
    for (m, t) in &fig1 {
        let pts = t
            .losses
            .iter()
            .enumerate()
            .map(|(k, l)| (k as f64, l.max(1e-12).log10()))
            .collect();
        p2.series.push(Series::new(
            m.display_name(),
            pts,
            m.spec().color,
            Style::Line,
        ));
    }
    let fig = Figure {
        title: "Fig. 1 — GD, SAM and M-SAM from (−1.5, 0.5)".into(),
        panels: vec![p, p2],
        cols: 2,
        panel_size: (620, 560),
    };
    fig.save(&dir.join("fig1_banana"))?;
    let mut rows = vec![];
    for (m, t) in &fig1 {
        for (k, q) in t.points.iter().enumerate() {
            let g = t.applied_gradients.get(k).copied().unwrap_or([f64::NAN; 2]);
            rows.push(TrajRow {
                method: m.name(),
                step: k,
                x: q[0],
                y: q[1],
                loss: t.losses[k],
                applied_grad_x: g[0],
                applied_grad_y: g[1],
            });
        }
    }
    write_atomic(&dir.join("fig1_trajectories.csv"), &csv_bytes(&rows)?)?;
    let ends: Vec<_> = fig1.iter().map(|(m, t)| json!({"method": m.name(), "final": t.last(), "loss": Loss::Banana.value(t.last())})).collect();
    summary.insert("fig1".into(), json!(ends));
    let end = |m: Method| {
        fig1.iter()
            .find(|(k, _)| *k == m)
            .map(|(_, t)| t.last())
            .unwrap()
    };
    let fmt = |q: [f64; 2]| format!("({:.3}, {:.3})", q[0], q[1]);
    claims.push(vec![
        "Fig. 1".into(),
        "M-SAM reaches the flattest minimum (−1, −1)".into(),
        format!("M-SAM ends at {}", fmt(end(Method::Msam))),
    ]);
    claims.push(vec![
        "Fig. 1".into(),
        "SAM is attracted to the saddle (0, 0)".into(),
        format!("SAM ends at {}", fmt(end(Method::Sam))),
    ]);
    claims.push(vec![
        "Fig. 1".into(),
        "GD reaches a (sharper) minimum of θ₁θ₂ = 1".into(),
        format!(
            "GD ends at {}, θ₁θ₂ = {:.3}",
            fmt(end(Method::Sgd)),
            end(Method::Sgd)[0] * end(Method::Sgd)[1]
        ),
    ]);
    body.push_str("### Fig. 1 — banana trajectories\n\n![Fig. 1](toys/fig1_banana.png)\n\nArrows: the (negated, rescaled) gradient the base step applied, i.e. the gradient at the perturbed point, every 10 steps. Data: `toys/fig1_trajectories.csv`.\n\n");

    // ---------------- Fig. 2 ----------------
    let (fig2_claims, fig2_summary, fig2_body) = fig2(&dir, &params, progress)?;
    claims.extend(fig2_claims);
    summary.insert("fig2".into(), fig2_summary);
    body.push_str(&fig2_body);

    // ---------------- Fig. 3 ----------------
    progress.inc_length(4);
    progress.set_message("toys: Fig. 3 (paraboloid)");
    let mut panels = vec![];
    let mut rows = vec![];
    let mut fig3 = vec![];
    let mut traj_panels = vec![];
    for lr in [0.66, 0.74] {
        let mut p = Panel::new(
            format!("ℓ=θ², ρ=0.3, lr {lr}, 11 steps"),
            "θ",
            "ℓ(θ)",
            (-1.2, 1.2),
            (0.0, 1.2),
        );
        p.series.push(Series::unlabelled(
            (-120..=120)
                .map(|k| {
                    let x = k as f64 / 100.0;
                    (x, x * x)
                })
                .collect(),
            RGBColor(120, 120, 120),
            Style::Line,
        ));
        let mut q = Panel::new(
            format!("iterates, lr {lr}"),
            "step",
            "θ",
            (0.0, 11.0),
            (-1.2, 1.2),
        );
        q.legend = Some(SeriesLabelPosition::LowerLeft);
        for m in [Method::Sam, Method::Msam] {
            let t = sim::run(Loss::Paraboloid, m, &params, 0.3, lr, 11, [0.5, 0.0])?;
            tick();
            let long = sim::run(Loss::Paraboloid, m, &params, 0.3, lr, 400, [0.5, 0.0])?;
            let amp = long.last()[0].abs();
            let closed = paraboloid_cycle(m, lr, 0.3);
            fig3.push(json!({"method": m.name(), "lr": lr, "amplitude_after_11": t.last()[0].abs(), "amplitude_limit": amp, "closed_form": closed}));
            p.series.push(Series::new(
                m.display_name(),
                t.points.iter().map(|z| (z[0], z[0] * z[0])).collect(),
                m.spec().color,
                Style::LinePoints(4),
            ));
            q.series.push(Series::new(
                format!("{} (cycle ±{closed:.3})", m.display_name()),
                t.points
                    .iter()
                    .enumerate()
                    .map(|(k, z)| (k as f64, z[0]))
                    .collect(),
                m.spec().color,
                Style::LinePoints(3),
            ));
            for (k, z) in t.points.iter().enumerate() {
                rows.push(TrajRow {
                    method: m.name(),
                    step: k,
                    x: z[0],
                    y: lr,
                    loss: z[0] * z[0],
                    applied_grad_x: f64::NAN,
                    applied_grad_y: f64::NAN,
                });
            }
            claims.push(vec![
                "Fig. 3".into(),
                format!(
                    "{} 2-cycle |θ| → {closed:.3} (lr {lr}, closed form)",
                    m.display_name()
                ),
                format!("|θ₄₀₀| = {amp:.6}, |θ₁₁| = {:.3}", t.last()[0].abs()),
            ]);
        }
        panels.push(p);
        traj_panels.push(q);
    }
    panels.extend(traj_panels);
    Figure {
        title: "Fig. 3 — SAM vs M-SAM on θ², θ₀ = 0.5".into(),
        panels,
        cols: 2,
        panel_size: (560, 440),
    }
    .save(&dir.join("fig3_paraboloid"))?;
    write_atomic(&dir.join("fig3_iterates.csv"), &csv_bytes(&rows)?)?;
    summary.insert("fig3".into(), json!(fig3));
    body.push_str("### Fig. 3 — conservativeness on θ²\n\n![Fig. 3](toys/fig3_paraboloid.png)\n\nθ₀ = 0.5 (not stated in the paper; `docs/algorithms.md` §9.1). The paraboloid is run as ℓ(θ₁, θ₂) = θ₁² with an inert θ₂ (column `y` of `toys/fig3_iterates.csv` holds the learning rate).\n\n");

    // ---------------- Fig. 4 ----------------
    let xs = sim::linspace(-3.0, 3.0, FIG4_GRID);
    progress.inc_length(FIG4_GRID as u64);
    progress.set_message("toys: Fig. 4 (stability maps)");
    let maps = [(Method::Sam, FIG4_RHOS), (Method::Msam, FIG4_RHOS)];
    // rows_out[j][i][k]: the stability at (xs[i], xs[j]) of map k (method-major, then ρ),
    // computed row by row on every core and collected in row order.
    let computed: Vec<Result<Vec<Vec<sim::Stability>>>> = (0..FIG4_GRID)
        .into_par_iter()
        .map(|j| {
            let device = device();
            let mut row = vec![];
            for &x in &xs {
                let theta = [x, xs[j]];
                let g = autodiff_gradient(Loss::Banana, theta, &device).1;
                let h = hessian(Loss::Banana, theta, &device);
                let mut cell = vec![];
                for (m, rhos) in &maps {
                    for &rho in rhos {
                        cell.push(sim::stability_with(
                            Loss::Banana,
                            *m,
                            rho,
                            theta,
                            g,
                            h,
                            &device,
                        )?);
                    }
                }
                row.push(cell);
            }
            progress.inc(1);
            Ok(row)
        })
        .collect();
    let rows_out = computed.into_iter().collect::<Result<Vec<_>>>()?;
    let mut panels = vec![];
    let mut rows = vec![];
    let mut fig4 = vec![];
    let compress = |v: f64| v.signum() * v.abs().ln_1p();
    for (mi, (m, rhos)) in maps.iter().enumerate() {
        for (ri, &rho) in rhos.iter().enumerate() {
            let k = mi * rhos.len() + ri;
            let mut vals = Vec::with_capacity(FIG4_GRID * FIG4_GRID);
            let (mut stable_saddle, mut n_saddle, mut stable_flat, mut n_flat) = (0, 0, 0, 0);
            for (j, row) in rows_out.iter().enumerate() {
                for (i, cell) in row.iter().enumerate() {
                    let s = &cell[k];
                    let l2 = s.eigenvalues[0][0];
                    vals.push(compress(l2));
                    rows.push(StabRow {
                        method: m.name(),
                        rho,
                        x: xs[i],
                        y: xs[j],
                        rho_tilde: s.rho_tilde,
                        lambda1_re: s.eigenvalues[1][0],
                        lambda1_im: s.eigenvalues[1][1],
                        lambda2_re: l2,
                        lambda2_im: s.eigenvalues[0][1],
                    });
                    let (x, y) = (xs[i], xs[j]);
                    if x.hypot(y) < 0.5 {
                        n_saddle += 1;
                        if l2 > 0.0 {
                            stable_saddle += 1;
                        }
                    }
                    if (x - 1.0).hypot(y - 1.0) < 0.5 || (x + 1.0).hypot(y + 1.0) < 0.5 {
                        n_flat += 1;
                        if l2 > 0.0 {
                            stable_flat += 1;
                        }
                    }
                }
            }
            let fs = stable_saddle as f64 / n_saddle.max(1) as f64;
            let ff = stable_flat as f64 / n_flat.max(1) as f64;
            fig4.push(json!({"method": m.name(), "rho": rho, "stable_fraction_near_saddle": fs, "stable_fraction_near_flattest": ff}));
            let name = if rho == 0.0 {
                "GD (ρ=0)".to_string()
            } else {
                format!("{} ρ={rho}", m.display_name())
            };
            let mut p = Panel::new(
                format!("{name}: stable {} / {}", pct(fs), pct(ff)),
                "θ₁",
                "θ₂",
                (-3.0, 3.0),
                (-3.0, 3.0),
            );
            p.heatmap = Some(Heatmap {
                field: Field {
                    nx: FIG4_GRID,
                    ny: FIG4_GRID,
                    x: (-3.0, 3.0),
                    y: (-3.0, 3.0),
                    values: vals,
                },
                colormap: ColorMap::Diverging,
                range: (-3.0, 3.0),
                contours: vec![0.0],
            });
            p.outlines
                .push(vec![(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]);
            p.legend = None;
            panels.push(p);
        }
    }
    Figure {
        title: "Fig. 4 — λ₂ (smaller real part) of A_ρ(θ) on the banana; red: λ₂ > 0 (stable), blue: unstable; colour ∝ sign·log(1+|λ₂|)".into(),
        panels,
        cols: FIG4_RHOS.len(),
        panel_size: (420, 420),
    }
    .save(&dir.join("fig4_stability"))?;
    write_atomic(&dir.join("fig4_stability.csv"), &csv_bytes(&rows)?)?;
    let f4 = |m: &str, rho: f64, key: &str| {
        fig4.iter()
            .find(|v| v["method"] == m && v["rho"].as_f64() == Some(rho))
            .unwrap()[key]
            .as_f64()
            .unwrap()
    };
    for rho in [0.5, 1.0] {
        claims.push(vec![
            "Fig. 4".into(),
            format!("ρ={rho}: M-SAM's region of attraction is smaller than SAM's near the saddle"),
            format!(
                "stable within 0.5 of (0,0): SAM {}, M-SAM {}",
                pct(f4("sam", rho, "stable_fraction_near_saddle")),
                pct(f4("msam", rho, "stable_fraction_near_saddle"))
            ),
        ]);
        claims.push(vec![
            "Fig. 4".into(),
            format!("ρ={rho}: … but larger near the flattest minima"),
            format!(
                "stable within 0.5 of (±1,±1): SAM {}, M-SAM {}",
                pct(f4("sam", rho, "stable_fraction_near_flattest")),
                pct(f4("msam", rho, "stable_fraction_near_flattest"))
            ),
        ]);
    }
    claims.push(vec![
        "Fig. 4".into(),
        "ρ = 0 (GD): the saddle neighbourhood is not stable".into(),
        format!(
            "stable within 0.5 of (0,0): {}",
            pct(f4("sam", 0.0, "stable_fraction_near_saddle"))
        ),
    ]);
    summary.insert("fig4".into(), json!({"rhos": FIG4_RHOS, "grid": FIG4_GRID, "range": [-3.0, 3.0], "hessian": "central differences of autodiff gradients, h = 1e-5", "results": fig4}));
    body.push_str(&format!("### Fig. 4 — stability maps\n\n![Fig. 4](toys/fig4_stability.png)\n\nA_ρ(θ) = (∇²ℓ(θ+ρ̃∇ℓ)[I+ρ̃∇²ℓ(θ)])ᵀ on a {FIG4_GRID}×{FIG4_GRID} grid of [−3,3]², ρ ∈ {{{}}} (the paper does not state its values; ρ = 0 is GD and is the same for both rows). δ = ρ̃∇ℓ is the library's own perturbation (`perturb::perturbation`), ρ̃ = ‖δ‖/‖∇ℓ‖; Hessians are central differences (h = 1e-5) of autodiff gradients. The black square is [−1,1]² (reference). Panel titles: share of grid points with λ₂ > 0 within 0.5 of the saddle / of the flattest minima. Data: `toys/fig4_stability.csv`.\n\n", FIG4_RHOS.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")));

    // Equilibrium criterion at the saddle (eq. 11).
    let device = device();
    let h0 = hessian(Loss::Banana, [0.0, 0.0], &device);
    let hev = sim::eigenvalues2(h0);
    let predicted = -1.0 / hev[0][0];
    let mut threshold = f64::NAN;
    for k in 0..=20000 {
        let rt = k as f64 * 1e-4;
        let s = sim::stability_from_hessians([0.0; 2], [0.0; 2], rt, [0.0; 2], h0, h0);
        if s.eigenvalues[0][0] > 0.0 {
            threshold = rt;
            break;
        }
    }
    claims.push(vec![
        "eq. 11".into(),
        format!(
            "saddle (H eigenvalues {:.6}, {:.6}) is stable iff ρ̃ > −1/λ = {predicted:.6}",
            hev[0][0], hev[1][0]
        ),
        format!("smallest stable ρ̃ on a 1e-4 scan: {threshold:.4}"),
    ]);
    summary.insert("equilibrium".into(), json!({"hessian_eigenvalues_at_saddle": [hev[0][0], hev[1][0]], "predicted_threshold": predicted, "measured_threshold": threshold, "scan_step": 1e-4}));

    // ---------------- Fig. 5 ----------------
    let starts = sim::grid_starts(10, -3.0, 3.0);
    progress.inc_length((Method::VARIANTS.len() * starts.len()) as u64);
    let mut panels = vec![];
    let mut hist_panels = vec![];
    let mut rows = vec![];
    let mut fig5 = vec![];
    let mut table = vec![];
    let range = (-3.2, 3.2);
    let background = banana_background(range);
    for &m in Method::VARIANTS {
        progress.set_message(format!("toys: Fig. 5 ({})", m.display_name()));
        let runs = sim::run_many(Loss::Banana, m, &params, 1.0, 0.01, 200, &starts, &tick)?;
        let finals: Vec<[f64; 2]> = runs.iter().map(Trajectory::last).collect();
        let (fs, ff) = (
            sim::fraction_near_saddle(&finals),
            sim::fraction_near_flattest(&finals),
        );
        fig5.push(
            json!({"method": m.name(), "fraction_near_saddle": fs, "fraction_near_flattest": ff}),
        );
        for (s, f) in starts.iter().zip(&finals) {
            rows.push(FinalRow {
                method: m.name(),
                rho: 1.0,
                lr: 0.01,
                start_half_width: 0.0,
                start_x: s[0],
                start_y: s[1],
                x: f[0],
                y: f[1],
                loss: Loss::Banana.value(*f),
            });
        }
        let mut p = Panel::new(
            format!(
                "{}: saddle {}, flattest {}",
                m.display_name(),
                pct(fs),
                pct(ff)
            ),
            "θ₁",
            "θ₂",
            range,
            range,
        );
        p.heatmap = Some(background.clone());
        for t in &runs {
            p.series.push(Series::unlabelled(
                t.points.iter().map(|q| (q[0], q[1])).collect(),
                RGBColor(255, 255, 255),
                Style::Line,
            ));
        }
        p.series.push(Series::new(
            "final θ",
            finals.iter().map(|q| (q[0], q[1])).collect(),
            RGBColor(230, 30, 30),
            Style::Points(3),
        ));
        p.legend = None;
        panels.push(p);
        let mut h = Panel::new(
            format!("{}: end points", m.display_name()),
            "θ",
            "count",
            (-3.2, 3.2),
            (0.0, 60.0),
        );
        h.series.push(Series::new(
            "θ₁",
            histogram(
                &finals.iter().map(|q| q[0]).collect::<Vec<_>>(),
                -3.2,
                3.2,
                32,
            ),
            PALETTE[0],
            Style::Bars(0.2),
        ));
        h.series.push(Series::new(
            "θ₂",
            histogram(
                &finals.iter().map(|q| q[1]).collect::<Vec<_>>(),
                -3.2,
                3.2,
                32,
            ),
            PALETTE[1],
            Style::Bars(0.2),
        ));
        hist_panels.push(h);
        let claim = match m {
            Method::Sam => "notable tendency to converge to the saddle",
            Method::Msam | Method::Fisher => {
                "explores the valley and locates the flattest minima; M-SAM ≈ Fisher SAM"
            }
            Method::Asam => {
                "mostly avoids the saddle, ends anywhere on the valley, generally not the flattest"
            }
            _ => "not in the paper",
        };
        let diverged = runs.iter().filter(|t| t.diverged_at.is_some()).count();
        table.push(vec![
            m.display_name().to_string(),
            pct(fs),
            pct(ff),
            format!("{diverged} of {}", runs.len()),
            claim.to_string(),
        ]);
    }
    Figure { title: "Fig. 5 — 10×10 grid on [−3,3]², ρ=1, lr 0.01, 200 steps (white: trajectories, red: end points)".into(), panels, cols: 5, panel_size: (400, 400) }
        .save(&dir.join("fig5_grid"))?;
    Figure {
        title: "Fig. 5 — marginal histograms of the end points".into(),
        panels: hist_panels,
        cols: 5,
        panel_size: (400, 320),
    }
    .save(&dir.join("fig5_histograms"))?;
    write_atomic(&dir.join("fig5_finals.csv"), &csv_bytes(&rows)?)?;
    summary.insert(
        "fig5".into(),
        json!({"near_radius": sim::NEAR, "results": fig5}),
    );
    body.push_str(&format!("### Fig. 5 — all methods from a 10×10 grid\n\n![Fig. 5](toys/fig5_grid.png)\n\n![Fig. 5 histograms](toys/fig5_histograms.png)\n\nStarts linspace(−3, 3, 10)²; fractions of the 100 end points within {} of the saddle (0,0) and of a flattest minimum (±1,±1). Data: `toys/fig5_finals.csv`.\n\n", sim::NEAR));
    body.push_str(&markdown_table(
        &[
            "method",
            "near saddle",
            "near flattest",
            "diverged (NaN/∞)",
            "paper's claim",
        ],
        &table,
    ));
    body.push('\n');

    // ---------------- Summary ----------------
    let elapsed = started.elapsed().as_secs_f64();
    summary.insert("seconds".into(), json!(elapsed));
    write_atomic(
        &dir.join("toys_summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    let mut section = String::from("### Paper's claims vs measured\n\n");
    section.push_str(&markdown_table(
        &["figure", "paper's claim", "measured"],
        &claims,
    ));
    section.push_str(&format!(
        "\nAll numbers: `toys/toys_summary.json`. Toy experiments took {elapsed:.1} s.\n\n"
    ));
    section.push_str(&body);
    Ok(ReportSection {
        title: "Toy landscapes (Monge SAM, Figures 1–5)".into(),
        body: section,
    })
}
