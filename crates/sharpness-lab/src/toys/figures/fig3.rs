//! Fig. 3: the conservativeness of SAM and M-SAM on the paraboloid θ² (2-cycles against their
//! closed forms).

use std::path::Path;

use anyhow::Result;
use indicatif::ProgressBar;
use plotters::prelude::{RGBColor, SeriesLabelPosition};
use serde_json::json;

use super::{Part, TrajRow};
use crate::methods::{Method, MethodParams};
use crate::report::{Figure, Panel, Series, Style, csv_bytes, write_atomic};
use crate::toys::loss::Loss;
use crate::toys::sim;

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

/// `fig3_paraboloid` (the loss and the iterates at two learning rates) and `fig3_iterates.csv`.
pub(super) fn fig3(dir: &Path, params: &MethodParams, progress: &ProgressBar) -> Result<Part> {
    let mut claims = vec![];
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
            let t = sim::run(Loss::Paraboloid, m, params, 0.3, lr, 11, [0.5, 0.0])?;
            progress.inc(1);
            let long = sim::run(Loss::Paraboloid, m, params, 0.3, lr, 400, [0.5, 0.0])?;
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
    let body = String::from(
        "### Fig. 3 — conservativeness on θ²\n\n![Fig. 3](toys/fig3_paraboloid.png)\n\nθ₀ = 0.5 (not stated in the paper; `docs/algorithms.md` §9.1). The paraboloid is run as ℓ(θ₁, θ₂) = θ₁² with an inert θ₂ (column `y` of `toys/fig3_iterates.csv` holds the learning rate).\n\n",
    );
    Ok(Part {
        claims,
        summary: json!(fig3),
        body,
    })
}
