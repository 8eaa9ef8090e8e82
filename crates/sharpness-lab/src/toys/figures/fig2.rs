//! Fig. 2: attraction to the sinc's maximum, under both readings of the start square and both
//! criteria of "at the maximum".

use std::path::Path;

use anyhow::Result;
use indicatif::ProgressBar;
use plotters::prelude::{RGBColor, SeriesLabelPosition};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use super::{FinalRow, Part, pct};
use crate::methods::{Method, MethodParams};
use crate::report::{
    ColorMap, Field, Figure, Heatmap, PALETTE, Panel, Series, Style, csv_bytes, histogram,
    markdown_table, write_atomic,
};
use crate::toys::loss::Loss;
use crate::toys::sim::{self, Trajectory};

/// Seed of Fig. 2's uniform starts.
pub const FIG2_SEED: u64 = 2025;
/// Radius of the ring of sinc minima, r* = √s*, tan s* = s*.
pub const SINC_RING: f64 = 2.119_8;
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
pub(super) fn fig2(dir: &Path, params: &MethodParams, progress: &ProgressBar) -> Result<Part> {
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
    Ok(Part {
        claims,
        summary,
        body,
    })
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
