//! `reproduce` for the toys: Figures 1–5 of the Monge SAM paper and the equilibrium criterion,
//! written under `out/toys/` with a report section. One module per figure; each computes its
//! runs, writes its figure and data, and returns its [`Part`] of the section.

mod fig1;
mod fig2;
mod fig3;
mod fig4;
mod fig5;

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use indicatif::ProgressBar;
use plotters::prelude::RGBColor;
use serde::Serialize;
use serde_json::json;

pub use fig2::{FIG2_SEED, SINC_RING};
pub use fig3::paraboloid_cycle;
pub use fig4::{FIG4_GRID, FIG4_RHOS};

use super::loss::Loss;
use crate::methods::MethodParams;
use crate::report::{
    ColorMap, Field, Heatmap, ReportSection, Series, Style, markdown_table, write_atomic,
};

/// What one figure contributes to the section: its rows of the claims table, its entry of
/// `toys_summary.json` and its text.
struct Part {
    claims: Vec<Vec<String>>,
    summary: serde_json::Value,
    body: String,
}

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

/// Runs every toy experiment into `out/toys/` and returns the report section (figure paths are
/// relative to `out`). Each finished run or map row advances `progress`.
pub fn reproduce(out: &Path, progress: &ProgressBar) -> Result<ReportSection> {
    let dir = out.join("toys");
    std::fs::create_dir_all(&dir)?;
    let params = toy_params();
    let started = Instant::now();
    let parts = [
        ("fig1", fig1::fig1(&dir, &params, progress)?),
        ("fig2", fig2::fig2(&dir, &params, progress)?),
        ("fig3", fig3::fig3(&dir, &params, progress)?),
        ("fig4", fig4::fig4(&dir, progress)?),
        ("equilibrium", fig4::equilibrium()),
        ("fig5", fig5::fig5(&dir, &params, progress)?),
    ];
    let mut body = String::from(
        "Toy landscapes of Jacobsen & Arvanitidis (2025), Figures 1–5 (`docs/algorithms.md` §9.1–9.2). Every toy is a Burn module with \
         one 2-element `f64` parameter, stepped by the library's `SharpnessAware::step` with a plain-SGD base (no momentum, \
         no weight decay); methods come from the lab's registry with library defaults (ASAM η = 0.01, Fisher η = 1, \
         SSAM-F with one Fisher draw since a deterministic toy has one example, universal class λ = 1).\n\n",
    );
    let mut summary = serde_json::Map::new();
    let mut claims = vec![];
    for (key, part) in parts {
        claims.extend(part.claims);
        summary.insert(key.into(), part.summary);
        body.push_str(&part.body);
    }
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
