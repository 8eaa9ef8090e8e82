//! Running toy optimizations through the library's [`SharpnessAware`] step, and the stability
//! matrix A_ρ(θ) of `docs/algorithms.md` §9.2.

use anyhow::{Result, bail};
use rayon::prelude::*;
use serde::Serialize;
use sharpness::optim::base;
use sharpness::perturb::{MongeSam, Sam, perturbation};
use sharpness::{ParamSet, RhoSchedule, SharpnessAware};

use super::loss::{Loss, Point, ToyObjective, autodiff_gradient, device, hessian};
use crate::methods::{Method, MethodParams, estimator};

/// One optimizer run on a toy loss.
#[derive(Clone, Debug, Serialize)]
pub struct Trajectory {
    /// θ₀, θ₁, …, θ_T (steps + 1 points).
    pub points: Vec<[f64; 2]>,
    /// ℓ at each point.
    pub losses: Vec<f64>,
    /// The gradient the base optimizer applied at each step (for two-pass methods the gradient at
    /// the perturbed point), recovered exactly from plain SGD: (θ_t − θ_{t+1}) / lr.
    pub applied_gradients: Vec<[f64; 2]>,
    /// The step at which the loss or a gradient became non-finite (the run stops there and
    /// `points` ends at the last finite iterate).
    pub diverged_at: Option<usize>,
    /// Steps actually taken (fewer than asked when the run diverged).
    pub steps_done: usize,
}

impl Trajectory {
    /// The last point.
    pub fn last(&self) -> [f64; 2] {
        *self.points.last().expect("a trajectory has its start")
    }
}

/// Checks a run's settings; every message is one line.
pub fn check_settings(rho: f64, lr: f64) -> Result<()> {
    if !(rho.is_finite() && rho >= 0.0) {
        bail!("--rho must be a finite number >= 0 (got {rho})");
    }
    if !(lr.is_finite() && lr > 0.0) {
        bail!("--lr must be a finite number > 0 (got {lr})");
    }
    Ok(())
}

/// Runs `steps` steps of `method` (plain SGD base, no momentum or weight decay, as `docs/algorithms.md` §9.1)
/// with constant ρ from `start`, keeping every iterate.
pub fn run(
    loss: Loss,
    method: Method,
    params: &MethodParams,
    rho: f64,
    lr: f64,
    steps: usize,
    start: [f64; 2],
) -> Result<Trajectory> {
    run_keeping(loss, method, params, rho, lr, steps, start, true)
}

/// As [`run`]; without `keep_iterates` the trajectory holds only the start and the last iterate
/// (`points`, `losses`) and no applied gradients, so memory does not grow with `steps`.
#[allow(clippy::too_many_arguments)]
pub fn run_keeping(
    loss: Loss,
    method: Method,
    params: &MethodParams,
    rho: f64,
    lr: f64,
    steps: usize,
    start: [f64; 2],
    keep_iterates: bool,
) -> Result<Trajectory> {
    check_settings(rho, lr)?;
    let device = device();
    let mut optimizer = SharpnessAware::from_boxed(
        estimator(method, params)?,
        base::sgd(0.0, 0.0, false)?,
        RhoSchedule::constant(rho)?,
    );
    let mut objective = ToyObjective(loss);
    let mut point = Point::new(start, &device);
    let mut theta = start;
    let mut traj = Trajectory {
        points: vec![start],
        losses: vec![loss.value(start)],
        applied_gradients: vec![],
        diverged_at: None,
        steps_done: 0,
    };
    for step in 0..steps {
        let out = match optimizer.step(&point, lr, &mut objective) {
            Ok(out) => out,
            Err(sharpness::SharpnessError::NonFinite { .. }) => {
                traj.diverged_at = Some(step);
                break;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "{} on {} at step {step}",
                    method.name(),
                    loss.name()
                )));
            }
        };
        point = out.model;
        let next = point.theta();
        if keep_iterates {
            traj.applied_gradients
                .push([(theta[0] - next[0]) / lr, (theta[1] - next[1]) / lr]);
            traj.points.push(next);
            traj.losses.push(loss.value(next));
        }
        theta = next;
        traj.steps_done = step + 1;
    }
    if !keep_iterates && traj.steps_done > 0 {
        traj.points.push(theta);
        traj.losses.push(loss.value(theta));
    }
    Ok(traj)
}

/// Runs one trajectory per start, spread over the available cores (rayon's work stealing, so
/// runs that stop early do not leave a core idle). Results are in the order of `starts`.
#[allow(clippy::too_many_arguments)]
pub fn run_many(
    loss: Loss,
    method: Method,
    params: &MethodParams,
    rho: f64,
    lr: f64,
    steps: usize,
    starts: &[[f64; 2]],
    on_done: &(dyn Fn() + Sync),
) -> Result<Vec<Trajectory>> {
    run_many_keeping(loss, method, params, rho, lr, steps, starts, on_done, true)
}

/// As [`run_many`], keeping iterates only when `keep_iterates` (see [`run_keeping`]).
#[allow(clippy::too_many_arguments)]
pub fn run_many_keeping(
    loss: Loss,
    method: Method,
    params: &MethodParams,
    rho: f64,
    lr: f64,
    steps: usize,
    starts: &[[f64; 2]],
    on_done: &(dyn Fn() + Sync),
    keep_iterates: bool,
) -> Result<Vec<Trajectory>> {
    check_settings(rho, lr)?;
    // Every run is independent of the others and of the thread it runs on; results are
    // collected in the order of `starts`, and the first failure in that order is reported.
    let runs: Vec<Result<Trajectory>> = starts
        .par_iter()
        .map(|&start| {
            let t = run_keeping(loss, method, params, rho, lr, steps, start, keep_iterates);
            on_done();
            t
        })
        .collect();
    runs.into_iter().collect()
}

/// `n` evenly spaced values from `lo` to `hi` (numpy's linspace).
pub fn linspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![lo],
        _ => (0..n)
            .map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
            .collect(),
    }
}

/// The n×n grid linspace(lo, hi, n)², row-major in θ₂ then θ₁.
pub fn grid_starts(n: usize, lo: f64, hi: f64) -> Vec<[f64; 2]> {
    let xs = linspace(lo, hi, n);
    xs.iter()
        .flat_map(|&y| xs.iter().map(move |&x| [x, y]))
        .collect()
}

/// Radius of the "near a point" balls of Fig. 5.
pub const NEAR: f64 = 0.3;

/// Fraction of `finals` within [`NEAR`] of the banana's saddle (0, 0).
pub fn fraction_near_saddle(finals: &[[f64; 2]]) -> f64 {
    fraction(finals, |p| p[0].hypot(p[1]) < NEAR)
}

/// Fraction of `finals` within [`NEAR`] of a flattest banana minimum, (1, 1) or (−1, −1).
pub fn fraction_near_flattest(finals: &[[f64; 2]]) -> f64 {
    fraction(finals, |p| {
        (p[0] - 1.0).hypot(p[1] - 1.0) < NEAR || (p[0] + 1.0).hypot(p[1] + 1.0) < NEAR
    })
}

/// Fraction of points satisfying `pred` (0 for no points).
pub fn fraction(points: &[[f64; 2]], pred: impl Fn(&[f64; 2]) -> bool) -> f64 {
    if points.is_empty() {
        0.0
    } else {
        points.iter().filter(|p| pred(p)).count() as f64 / points.len() as f64
    }
}

/// An eigenvalue as (real, imaginary).
pub type Complex = [f64; 2];

/// Eigenvalues of a real 2×2 matrix, ascending by real part (then imaginary part).
pub fn eigenvalues2(m: [[f64; 2]; 2]) -> [Complex; 2] {
    let tr = m[0][0] + m[1][1];
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let disc = tr * tr / 4.0 - det;
    if disc >= 0.0 {
        let r = disc.sqrt();
        [[tr / 2.0 - r, 0.0], [tr / 2.0 + r, 0.0]]
    } else {
        let r = (-disc).sqrt();
        [[tr / 2.0, -r], [tr / 2.0, r]]
    }
}

fn matmul(a: [[f64; 2]; 2], b: [[f64; 2]; 2]) -> [[f64; 2]; 2] {
    let mut c = [[0.0; 2]; 2];
    for i in 0..2 {
        for j in 0..2 {
            c[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j];
        }
    }
    c
}

/// The stability matrix at one point.
#[derive(Clone, Debug, Serialize)]
pub struct Stability {
    /// θ.
    pub at: [f64; 2],
    /// ∇ℓ(θ).
    pub gradient: [f64; 2],
    /// The effective radius ρ̃ = ‖δ‖/‖∇ℓ‖ of the library's perturbation δ (0 for GD and at
    /// stationary points, where the library's δ is 0).
    pub rho_tilde: f64,
    /// z = θ + δ.
    pub perturbed: [f64; 2],
    /// A_ρ(θ) = (∇²ℓ(z)[I + ρ̃∇²ℓ(θ)])ᵀ, row-major.
    pub matrix: [[f64; 2]; 2],
    /// Its eigenvalues (real, imaginary), ascending by real part.
    pub eigenvalues: [Complex; 2],
}

/// The methods whose perturbation is ρ̃∇ℓ, for which A_ρ is defined (`docs/algorithms.md` §9.2).
pub const STABILITY_METHODS: [Method; 3] = [Method::Sgd, Method::Sam, Method::Msam];

/// A_ρ(θ) of `docs/algorithms.md` §9.2 for `method` ∈ {sgd, sam, msam}. The perturbation δ comes from the
/// library's own `perturb::perturbation`, ρ̃ = ‖δ‖/‖∇ℓ‖ is held constant (its derivative is
/// ignored, as in the paper), Hessians are central differences of autodiff gradients.
pub fn stability(loss: Loss, method: Method, rho: f64, theta: [f64; 2]) -> Result<Stability> {
    let device = device();
    let g = autodiff_gradient(loss, theta, &device).1;
    let h_theta = hessian(loss, theta, &device);
    stability_with(loss, method, rho, theta, g, h_theta, &device)
}

/// As [`stability`] with ∇ℓ(θ) and ∇²ℓ(θ) already computed (they do not depend on the method).
pub fn stability_with(
    loss: Loss,
    method: Method,
    rho: f64,
    theta: [f64; 2],
    g: [f64; 2],
    h_theta: [[f64; 2]; 2],
    device: &burn::prelude::Device,
) -> Result<Stability> {
    if !(rho.is_finite() && rho >= 0.0) {
        bail!("--rho must be a finite number >= 0 (got {rho})");
    }
    let delta = match method {
        Method::Sgd => [0.0, 0.0],
        Method::Sam | Method::Msam => {
            let gs = ParamSet::from_values(device, &[("weight", &[2], &g)]);
            let ws = gs.with_values(&theta);
            let d = match method {
                Method::Sam => perturbation(&Sam, rho, &gs, &ws),
                _ => perturbation(&MongeSam, rho, &gs, &ws),
            }
            .epsilon()
            .to_vec();
            [d[0], d[1]]
        }
        other => bail!(
            "stability is defined for gd, sam and msam (perturbation ρ̃∇ℓ, `docs/algorithms.md` §9.2), not `{}`",
            other.name()
        ),
    };
    let gnorm = g[0].hypot(g[1]);
    let rho_tilde = if gnorm > 0.0 {
        delta[0].hypot(delta[1]) / gnorm
    } else {
        0.0
    };
    let z = [theta[0] + delta[0], theta[1] + delta[1]];
    let h_z = if delta == [0.0, 0.0] {
        h_theta
    } else {
        hessian(loss, z, device)
    };
    Ok(stability_from_hessians(
        theta, g, rho_tilde, z, h_theta, h_z,
    ))
}

/// A = (H(z)[I + ρ̃H(θ)])ᵀ and its eigenvalues.
pub fn stability_from_hessians(
    theta: [f64; 2],
    g: [f64; 2],
    rho_tilde: f64,
    z: [f64; 2],
    h_theta: [[f64; 2]; 2],
    h_z: [[f64; 2]; 2],
) -> Stability {
    let m = [
        [1.0 + rho_tilde * h_theta[0][0], rho_tilde * h_theta[0][1]],
        [rho_tilde * h_theta[1][0], 1.0 + rho_tilde * h_theta[1][1]],
    ];
    let p = matmul(h_z, m);
    let a = [[p[0][0], p[1][0]], [p[0][1], p[1][1]]];
    Stability {
        at: theta,
        gradient: g,
        rho_tilde,
        perturbed: z,
        matrix: a,
        eigenvalues: eigenvalues2(a),
    }
}
