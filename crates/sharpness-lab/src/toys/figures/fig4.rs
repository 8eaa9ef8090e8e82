//! Fig. 4: stability maps of SAM and M-SAM on the banana, and the equilibrium criterion at the
//! saddle (eq. 11).

use std::path::Path;

use anyhow::Result;
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use super::{Part, pct};
use crate::methods::Method;
use crate::report::{ColorMap, Field, Figure, Heatmap, Panel, csv_bytes, write_atomic};
use crate::toys::loss::{Loss, autodiff_gradient, device, hessian};
use crate::toys::sim;

/// ρ values of the stability maps (Fig. 4): the paper does not state them; 0 is GD.
pub const FIG4_RHOS: [f64; 4] = [0.0, 0.1, 0.5, 1.0];
/// Grid points per axis of the stability maps.
pub const FIG4_GRID: usize = 41;

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

/// `fig4_stability` (λ₂ of A_ρ(θ) on a grid, per method and ρ) and `fig4_stability.csv`; each
/// finished grid row advances `progress`.
pub(super) fn fig4(dir: &Path, progress: &ProgressBar) -> Result<Part> {
    let mut claims = vec![];
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
    let summary = json!({"rhos": FIG4_RHOS, "grid": FIG4_GRID, "range": [-3.0, 3.0], "hessian": "central differences of autodiff gradients, h = 1e-5", "results": fig4});
    let body = format!(
        "### Fig. 4 — stability maps\n\n![Fig. 4](toys/fig4_stability.png)\n\nA_ρ(θ) = (∇²ℓ(θ+ρ̃∇ℓ)[I+ρ̃∇²ℓ(θ)])ᵀ on a {FIG4_GRID}×{FIG4_GRID} grid of [−3,3]², ρ ∈ {{{}}} (the paper does not state its values; ρ = 0 is GD and is the same for both rows). δ = ρ̃∇ℓ is the library's own perturbation (`perturb::perturbation`), ρ̃ = ‖δ‖/‖∇ℓ‖; Hessians are central differences (h = 1e-5) of autodiff gradients. The black square is [−1,1]² (reference). Panel titles: share of grid points with λ₂ > 0 within 0.5 of the saddle / of the flattest minima. Data: `toys/fig4_stability.csv`.\n\n",
        FIG4_RHOS
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Part {
        claims,
        summary,
        body,
    })
}

/// Eq. 11: the saddle of the banana is stable iff ρ̃ > −1/λ, against a scan of ρ̃.
pub(super) fn equilibrium() -> Part {
    let mut claims = vec![];
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
    let summary = json!({"hessian_eigenvalues_at_saddle": [hev[0][0], hev[1][0]], "predicted_threshold": predicted, "measured_threshold": threshold, "scan_step": 1e-4});
    Part {
        claims,
        summary,
        body: String::new(),
    }
}
