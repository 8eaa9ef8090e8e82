//! Fig. 1: GD, SAM and M-SAM trajectories on the banana from one start.

use std::path::Path;

use anyhow::Result;
use indicatif::ProgressBar;
use plotters::prelude::SeriesLabelPosition;
use serde_json::json;

use super::{Part, TrajRow, banana_background, landmarks};
use crate::methods::{Method, MethodParams};
use crate::report::{Arrow, Figure, Panel, Series, Style, csv_bytes, write_atomic};
use crate::toys::loss::Loss;
use crate::toys::sim;

/// `fig1_banana` (trajectories with the applied gradients, and the loss along them) and
/// `fig1_trajectories.csv`.
pub(super) fn fig1(dir: &Path, params: &MethodParams, progress: &ProgressBar) -> Result<Part> {
    let mut claims = vec![];
    progress.inc_length(3);
    progress.set_message("toys: Fig. 1 (banana trajectories)");
    let fig1_methods = [Method::Sgd, Method::Sam, Method::Msam];
    let start = [-1.5, 0.5];
    let mut fig1 = vec![];
    for m in fig1_methods {
        fig1.push((m, sim::run(Loss::Banana, m, params, 1.0, 0.01, 200, start)?));
        progress.inc(1);
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
    let body = String::from(
        "### Fig. 1 — banana trajectories\n\n![Fig. 1](toys/fig1_banana.png)\n\nArrows: the (negated, rescaled) gradient the base step applied, i.e. the gradient at the perturbed point, every 10 steps. Data: `toys/fig1_trajectories.csv`.\n\n",
    );
    Ok(Part {
        claims,
        summary: json!(ends),
        body,
    })
}
