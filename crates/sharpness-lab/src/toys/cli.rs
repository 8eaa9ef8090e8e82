//! `sharpness-lab toy …`: single runs, grids and stability matrices, optionally as JSON.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use super::loss::Loss;
use super::sim::{self, Trajectory};
use crate::limits;
use crate::methods::{Method, MethodParams};

/// Toy-landscape commands.
#[derive(Subcommand, Debug)]
pub enum ToyCommand {
    /// One optimizer run from one start.
    Run(RunArgs),
    /// Runs from every point of an n×n grid.
    Grid(GridArgs),
    /// The stability matrix A_ρ(θ) of `docs/algorithms.md` §9.2 at one point.
    Stability(StabilityArgs),
}

/// Settings shared by `toy run` and `toy grid`.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Toy loss (paraboloid is ℓ = θ₁², θ₂ inert).
    #[arg(long, value_enum, ignore_case = true, default_value_t = Loss::Banana)]
    pub loss: Loss,
    /// Method.
    #[arg(long, value_enum, ignore_case = true, default_value_t = Method::Msam)]
    pub method: Method,
    /// Perturbation radius ρ ≥ 0.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub rho: f64,
    /// Learning rate of the plain-SGD base step.
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    pub lr: f64,
    /// Number of steps.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub params: MethodParams,
}

/// `toy run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,
    /// Start θ₀ as `x,y` (write `--start=-1.5,0.5` for negative values).
    #[arg(long, default_value = "-1.5,0.5")]
    pub start: String,
    /// Include every iterate in the output.
    #[arg(long)]
    pub trajectory: bool,
}

/// `toy grid`.
#[derive(Args, Debug)]
pub struct GridArgs {
    #[command(flatten)]
    pub common: Common,
    /// Points per axis (starts: linspace(lo, hi, n)²).
    #[arg(long, default_value_t = 10)]
    pub grid: usize,
    /// Range `lo,hi` of both axes (write `--range=-3,3`).
    #[arg(long, default_value = "-3,3")]
    pub range: String,
}

/// `toy stability`.
#[derive(Args, Debug)]
pub struct StabilityArgs {
    /// Toy loss.
    #[arg(long, value_enum, ignore_case = true, default_value_t = Loss::Banana)]
    pub loss: Loss,
    /// Method: sgd, sam or msam.
    #[arg(long, value_enum, ignore_case = true, default_value_t = Method::Msam)]
    pub method: Method,
    /// Perturbation radius ρ ≥ 0.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub rho: f64,
    /// θ as `x,y` (write `--at=0.3,0.2`).
    #[arg(long)]
    pub at: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses `x,y` (exactly two finite numbers).
pub fn parse_pair(flag: &str, s: &str) -> Result<[f64; 2]> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 2 {
        bail!(
            "--{flag} needs exactly two comma-separated numbers `x,y` (got {} in `{s}`)",
            parts.len()
        );
    }
    let mut out = [0.0; 2];
    for (o, p) in out.iter_mut().zip(&parts) {
        *o = p
            .parse::<f64>()
            .map_err(|_| anyhow::anyhow!("--{flag}: `{p}` is not a number"))?;
        if !o.is_finite() {
            bail!("--{flag}: `{p}` is not finite");
        }
    }
    Ok(out)
}

/// A number as written, in scientific notation where that would be unreadable.
fn number(v: f64) -> String {
    if v.abs() < 1e6 {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// A coordinate with 6 decimals, in scientific notation where that would be unreadable.
fn coordinate(v: f64) -> String {
    if v.abs() < 1e6 {
        format!("{v:.6}")
    } else {
        format!("{v:.6e}")
    }
}

/// The loss, the method and the ρ it actually uses (plain gradient descent has none: 0 is
/// recorded, whatever `--rho` said).
fn parse_common(c: &Common) -> Result<(Loss, Method, f64)> {
    sim::check_settings(c.rho, c.lr)?;
    let rho = if c.method == Method::Sgd { 0.0 } else { c.rho };
    Ok((c.loss, c.method, rho))
}

/// Runs a `toy` subcommand, printing its result.
pub fn run(command: ToyCommand) -> Result<()> {
    match command {
        ToyCommand::Run(a) => {
            let (loss, method, rho) = parse_common(&a.common)?;
            let start = parse_pair("start", &a.start)?;
            let c = &a.common;
            if a.trajectory {
                // Every iterate: three points' worth of f64 plus its JSON text.
                limits::ensure_fits(c.steps as f64 * 128.0, &format!("--steps {}", c.steps))?;
            }
            let t: Trajectory = sim::run_keeping(
                loss,
                method,
                &c.params,
                rho,
                c.lr,
                c.steps,
                start,
                a.trajectory,
            )?;
            let last = t.last();
            if c.json {
                let mut v = json!({
                    "loss_name": loss.name(), "method": method.name(), "rho": rho, "lr": c.lr,
                    "steps": c.steps, "steps_done": t.steps_done, "start": start, "final": last,
                    "loss": loss.value(last), "diverged_at": t.diverged_at, "params": c.params,
                });
                if a.trajectory {
                    v["trajectory"] = json!(t.points);
                    v["losses"] = json!(t.losses);
                }
                println!("{v}");
            } else {
                let stopped = match t.diverged_at {
                    Some(step) => format!(
                        "diverged at step {step} (non-finite loss or gradient; last finite iterate)"
                    ),
                    None => format!("after {} steps", t.steps_done),
                };
                println!(
                    "{} on {}: {:?} -> [{}, {}] {stopped}, loss {:.6e}",
                    method.display_name(),
                    loss,
                    start,
                    coordinate(last[0]),
                    coordinate(last[1]),
                    loss.value(last)
                );
            }
        }
        ToyCommand::Grid(a) => {
            let (loss, method, rho) = parse_common(&a.common)?;
            let [lo, hi] = parse_pair("range", &a.range)?;
            // Not `lo >= hi`: a NaN bound must be refused too.
            if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) || a.grid == 0 {
                bail!("--range needs lo < hi and --grid at least 1");
            }
            // Per start: the start, the final point and a short trajectory, plus their JSON text.
            let n = a.grid as f64;
            limits::ensure_fits(n * n * 256.0, &format!("--grid {}", a.grid))?;
            let c = &a.common;
            let starts = sim::grid_starts(a.grid, lo, hi);
            let runs = sim::run_many_keeping(
                loss,
                method,
                &c.params,
                rho,
                c.lr,
                c.steps,
                &starts,
                &|| {},
                false,
            )?;
            let finals: Vec<[f64; 2]> = runs.iter().map(Trajectory::last).collect();
            let near_saddle = sim::fraction_near_saddle(&finals);
            let near_flat = sim::fraction_near_flattest(&finals);
            let diverged = runs.iter().filter(|t| t.diverged_at.is_some()).count();
            if c.json {
                let v = json!({
                    "loss_name": loss.name(), "method": method.name(), "rho": rho, "lr": c.lr,
                    "steps": c.steps, "grid": a.grid, "range": [lo, hi], "starts": starts,
                    "finals": finals, "fraction_near_saddle": near_saddle,
                    "fraction_near_flattest": near_flat, "diverged": diverged, "near_radius": sim::NEAR, "params": c.params,
                });
                println!("{v}");
            } else {
                println!(
                    "{} on {}, {}x{} grid on [{}, {}]²: {diverged} of {} runs diverged (their last finite iterate counts); {:.0}% end within {} of the saddle (0,0), {:.0}% within {} of (±1,±1)",
                    method.display_name(),
                    loss,
                    a.grid,
                    a.grid,
                    number(lo),
                    number(hi),
                    runs.len(),
                    100.0 * near_saddle,
                    sim::NEAR,
                    100.0 * near_flat,
                    sim::NEAR
                );
            }
        }
        ToyCommand::Stability(a) => {
            let (loss, method) = (a.loss, a.method);
            let at = parse_pair("at", &a.at)?;
            let s = sim::stability(loss, method, a.rho, at)?;
            let finite = s.eigenvalues.iter().flatten().all(|v| v.is_finite());
            if a.json {
                let v = json!({
                    "loss_name": loss.name(), "method": method.name(), "rho": a.rho, "at": at,
                    "gradient": s.gradient, "rho_tilde": s.rho_tilde, "perturbed": s.perturbed,
                    "matrix": s.matrix,
                    "eigenvalues": s.eigenvalues.iter().map(|e| json!({"re": e[0], "im": e[1]})).collect::<Vec<_>>(),
                    "finite": finite,
                    "stable": finite && s.eigenvalues.iter().all(|e| e[0] > 0.0),
                });
                println!("{v}");
            } else if !finite {
                println!(
                    "A_rho at {at:?} ({}, rho {}): not finite (the loss or its derivatives overflow at θ or at the perturbed point) -> undefined, not stable",
                    method.display_name(),
                    a.rho
                );
            } else {
                let [l1, l2] = s.eigenvalues;
                println!(
                    "A_rho at {at:?} ({}, rho {}): eigenvalues {:.6}{:+.6}i, {:.6}{:+.6}i (rho~ = {:.6}) -> {}",
                    method.display_name(),
                    a.rho,
                    l1[0],
                    l1[1],
                    l2[0],
                    l2[1],
                    s.rho_tilde,
                    if l1[0] > 0.0 { "stable" } else { "not stable" }
                );
            }
        }
    }
    Ok(())
}
