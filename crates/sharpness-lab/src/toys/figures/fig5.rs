//! Fig. 5: every method from a 10×10 grid of starts on the banana.

use std::path::Path;

use anyhow::Result;
use indicatif::ProgressBar;
use plotters::prelude::RGBColor;
use serde_json::json;
use strum::VariantArray;

use super::{FinalRow, Part, banana_background, pct};
use crate::methods::{Method, MethodParams};
use crate::report::{
    Figure, PALETTE, Panel, Series, Style, csv_bytes, histogram, markdown_table, write_atomic,
};
use crate::toys::loss::Loss;
use crate::toys::sim::{self, Trajectory};

/// `fig5_grid` (trajectories and end points per method), `fig5_histograms` (marginals of the end
/// points) and `fig5_finals.csv`, with the fractions near the saddle and the flattest minima.
pub(super) fn fig5(dir: &Path, params: &MethodParams, progress: &ProgressBar) -> Result<Part> {
    let tick = || progress.inc(1);
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
        let runs = sim::run_many(Loss::Banana, m, params, 1.0, 0.01, 200, &starts, &tick)?;
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
    let mut body = format!(
        "### Fig. 5 — all methods from a 10×10 grid\n\n![Fig. 5](toys/fig5_grid.png)\n\n![Fig. 5 histograms](toys/fig5_histograms.png)\n\nStarts linspace(−3, 3, 10)²; fractions of the 100 end points within {} of the saddle (0,0) and of a flattest minimum (±1,±1). Data: `toys/fig5_finals.csv`.\n\n",
        sim::NEAR
    );
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
    Ok(Part {
        claims: vec![],
        summary: json!({"near_radius": sim::NEAR, "results": fig5}),
        body,
    })
}
