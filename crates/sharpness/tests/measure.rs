//! The sharpness measures against an independent dense Hessian.
//!
//! The network is Linear(3→4)–tanh–Linear(4→1) with mean-squared error on 8 examples in two
//! batches of 5 and 3 (21 parameters, f64). The reference Hessian comes from second differences
//! of **loss values** of the same network written out in plain Rust (no Burn, no gradients), so
//! it shares nothing with the code under test; its own error is ~1e-8 (step 1e-4: round-off
//! ε·L/h² ≈ 2e-8, truncation h²·L⁗/12 ≈ 1e-9). Stochastic estimators are checked against their
//! known variance: |mean − truth| ≤ 4σ/√N and the reported standard error within 30 % of σ/√N.

// Matrices and formulas transcribed index by index, signs as in the derivations.
#![allow(
    clippy::needless_range_loop,
    clippy::neg_multiply,
    clippy::type_complexity
)]

use burn::module::{Module, Param, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use sharpness::ParamSet;
use sharpness::measure::{
    Batches, Hessian, Lanczos, MeasureConfig, Precision, SamAscent, float_dtype,
};

const D_IN: usize = 3;
const HIDDEN: usize = 4;
const N: usize = 8;
const BATCHES: [(usize, usize); 2] = [(0, 5), (5, 8)];

#[derive(Module, Debug)]
struct Net {
    fc1: Linear,
    fc2: Linear,
}

impl Net {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.fc1.forward(x).tanh())
    }
}

fn device() -> Device {
    Device::flex().autodiff()
}

fn tensor<const D: usize>(values: &[f64], dims: [usize; D], dtype: DType) -> Tensor<D> {
    Tensor::<D>::from_data(
        TensorData::new(values.to_vec(), dims),
        (&device(), DType::F64),
    )
    .cast(dtype)
}

/// The weights θ in module order: fc1.weight [3×4] row-major, fc1.bias [4], fc2.weight [4×1],
/// fc2.bias [1].
fn theta() -> Vec<f64> {
    (0..21)
        .map(|k| 0.8 * ((k as f64) * 1.37 + 0.4).sin())
        .collect()
}

fn inputs() -> Vec<f64> {
    (0..N * D_IN)
        .map(|k| ((k as f64) * 0.73 + 1.1).cos() * 1.5)
        .collect()
}

fn targets() -> Vec<f64> {
    (0..N).map(|k| ((k as f64) * 2.1).sin()).collect()
}

fn net(theta: &[f64], dtype: DType) -> Net {
    let linear = |w: &[f64], dims: [usize; 2], b: &[f64]| Linear {
        weight: Param::from_tensor(tensor(w, dims, dtype)),
        bias: Some(Param::from_tensor(tensor(b, [b.len()], dtype))),
    };
    Net {
        fc1: linear(&theta[0..12], [D_IN, HIDDEN], &theta[12..16]),
        fc2: linear(&theta[16..20], [HIDDEN, 1], &theta[20..21]),
    }
}

/// The mean-squared error of the 8 examples, in plain Rust.
fn plain_loss(theta: &[f64]) -> f64 {
    let (x, y) = (inputs(), targets());
    let mut total = 0.0;
    for n in 0..N {
        let mut out = theta[20];
        for j in 0..HIDDEN {
            let pre = theta[12 + j]
                + (0..D_IN)
                    .map(|i| x[n * D_IN + i] * theta[i * HIDDEN + j])
                    .sum::<f64>();
            out += pre.tanh() * theta[16 + j];
        }
        total += (out - y[n]).powi(2);
    }
    total / N as f64
}

/// Dense Hessian by second differences of `plain_loss` (step 1e-4).
fn reference_hessian() -> Vec<Vec<f64>> {
    let w = theta();
    let d = w.len();
    let h = 1e-4;
    let at = |shifts: &[(usize, f64)]| {
        let mut v = w.clone();
        for &(i, s) in shifts {
            v[i] += s;
        }
        plain_loss(&v)
    };
    let mut hess = vec![vec![0.0; d]; d];
    for i in 0..d {
        hess[i][i] = (at(&[(i, h)]) - 2.0 * at(&[]) + at(&[(i, -h)])) / (h * h);
        for j in 0..i {
            let v = (at(&[(i, h), (j, h)]) - at(&[(i, h), (j, -h)]) - at(&[(i, -h), (j, h)])
                + at(&[(i, -h), (j, -h)]))
                / (4.0 * h * h);
            hess[i][j] = v;
            hess[j][i] = v;
        }
    }
    hess
}

/// The Burn side: MSE of each batch, inputs cast to the model's dtype.
fn data() -> Batches<impl FnMut(&Net, usize) -> (Tensor<1>, usize)> {
    let (x, y) = (inputs(), targets());
    Batches::new(BATCHES.len(), move |model: &Net, b: usize| {
        let (lo, hi) = BATCHES[b];
        let dtype = float_dtype(model).unwrap();
        let xb = tensor(&x[lo * D_IN..hi * D_IN], [hi - lo, D_IN], dtype);
        let yb = tensor(&y[lo..hi], [hi - lo, 1], dtype);
        ((model.forward(xb) - yb).square().mean(), hi - lo)
    })
}

fn hessian(
    config: MeasureConfig,
) -> Hessian<Net, Batches<impl FnMut(&Net, usize) -> (Tensor<1>, usize)>> {
    Hessian::new(&net(&theta(), DType::F64), data(), config).unwrap()
}

fn mat_vec(a: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
    a.iter()
        .map(|row| row.iter().zip(v).map(|(x, y)| x * y).sum())
        .collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    norm(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>()) / norm(b)
}

fn direction(seed: usize, d: usize) -> Vec<f64> {
    (0..d)
        .map(|i| ((i * 7 + seed * 13) as f64 * 0.91).sin())
        .collect()
}

/// Classical Jacobi (largest off-diagonal pivot), written independently of the library's.
fn jacobi_eigenvalues(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    for _ in 0..10_000 {
        let (mut p, mut q, mut max) = (0, 1, 0.0);
        for i in 0..n {
            for j in i + 1..n {
                if a[i][j].abs() > max {
                    (p, q, max) = (i, j, a[i][j].abs());
                }
            }
        }
        if max < 1e-14 {
            break;
        }
        let phi = 0.5 * (2.0 * a[p][q]).atan2(a[q][q] - a[p][p]);
        let (s, c) = phi.sin_cos();
        for k in 0..n {
            let (kp, kq) = (a[k][p], a[k][q]);
            a[k][p] = c * kp - s * kq;
            a[k][q] = s * kp + c * kq;
        }
        for k in 0..n {
            let (pk, qk) = (a[p][k], a[q][k]);
            a[p][k] = c * pk - s * qk;
            a[q][k] = s * pk + c * qk;
        }
    }
    let mut values: Vec<f64> = (0..n).map(|i| a[i][i]).collect();
    values.sort_by(|x, y| y.total_cmp(x));
    values
}

fn frobenius_squared(a: &[Vec<f64>]) -> f64 {
    a.iter().flatten().map(|x| x * x).sum()
}

fn square(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| (0..n).map(|k| a[i][k] * a[k][j]).sum())
                .collect()
        })
        .collect()
}

#[test]
fn loss_and_gradient_are_the_example_weighted_means_over_batches() {
    let mut h = hessian(MeasureConfig::default());
    assert_eq!(h.dim(), 21);
    let eval = h.gradient().unwrap();
    assert!(
        (eval.loss - plain_loss(&theta())).abs() < 1e-14,
        "{} vs {}",
        eval.loss,
        plain_loss(&theta())
    );
    let w = theta();
    let step = 1e-6;
    let fd: Vec<f64> = (0..w.len())
        .map(|i| {
            let (mut p, mut m) = (w.clone(), w.clone());
            p[i] += step;
            m[i] -= step;
            (plain_loss(&p) - plain_loss(&m)) / (2.0 * step)
        })
        .collect();
    assert!(
        rel_err(&eval.grad.to_vec(), &fd) < 1e-8,
        "gradient rel. error {}",
        rel_err(&eval.grad.to_vec(), &fd)
    );
    assert_eq!(h.gradient_evaluations(), 1);
}

#[test]
fn hvp_and_dense_hessian_match_the_reference() {
    let reference = reference_hessian();
    let mut h = hessian(MeasureConfig::default());
    for seed in 0..3 {
        let v = direction(seed, 21);
        let hv = h.hvp(&h.weights().with_values(&v)).unwrap().to_vec();
        let err = rel_err(&hv, &mat_vec(&reference, &v));
        assert!(err < 1e-6, "Hv rel. error {err:e}");
    }
    let dense = h.dense().unwrap();
    let max = (0..21)
        .flat_map(|i| (0..21).map(move |j| (i, j)))
        .map(|(i, j)| (dense[i][j] - reference[i][j]).abs());
    let max = max.fold(0.0, f64::max);
    assert!(max < 1e-6, "dense Hessian max |Δ| = {max:e}");
}

/// Why h = 1e-5 in f64 is the default: larger steps show the O(h²) truncation error, much
/// smaller ones the O(ε/h) round-off, and in f32 the round-off at h = 1e-5 is ~1 %.
#[test]
fn step_1e5_in_f64_is_accurate_where_larger_steps_and_f32_are_not() {
    let reference = reference_hessian();
    let v = direction(5, 21);
    let expected = mat_vec(&reference, &v);
    let error = |dtype: DType, precision: Precision, step: f64| {
        let config = MeasureConfig::default()
            .with_step(step)
            .with_precision(precision);
        let mut h = Hessian::new(&net(&theta(), dtype), data(), config).unwrap();
        rel_err(
            &h.hvp(&h.weights().with_values(&v)).unwrap().to_vec(),
            &expected,
        )
    };
    let errors: Vec<(f64, f64)> = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-9]
        .iter()
        .map(|&s| (s, error(DType::F64, Precision::F64, s)))
        .collect();
    let f32_error = error(DType::F32, Precision::Native, 1e-5);
    let f32_cast_to_f64 = error(DType::F32, Precision::F64, 1e-5);
    println!(
        "f64 errors by step: {errors:?}; f32 at 1e-5: {f32_error:e}; f32 model cast to f64: {f32_cast_to_f64:e}"
    );
    let at = |s: f64| errors.iter().find(|(x, _)| *x == s).unwrap().1;
    assert!(at(1e-5) < 1e-6);
    assert!(at(1e-2) > 100.0 * at(1e-5), "truncation at h = 1e-2");
    assert!(at(1e-9) > 10.0 * at(1e-5), "round-off at h = 1e-9");
    assert!(f32_error > 1e-3, "f32 round-off");
    // The default casts an f32 model to f64 first (weights rounded to f32: ~1e-7 relative).
    assert!(f32_cast_to_f64 < 1e-5);
}

#[test]
fn hutchinson_trace_is_within_its_standard_error() {
    let reference = reference_hessian();
    let trace: f64 = (0..21).map(|i| reference[i][i]).sum();
    // Var vᵀHv = 2(‖H‖²_F − Σ Hᵢᵢ²) for Rademacher v.
    let variance = 2.0
        * (frobenius_squared(&reference) - (0..21).map(|i| reference[i][i].powi(2)).sum::<f64>());
    let probes = 300;
    let sigma = (variance / probes as f64).sqrt();
    let mut h = hessian(MeasureConfig::default());
    let estimate = h.trace(probes, 7).unwrap();
    println!(
        "trace {trace:.6}: estimate {:.6} ± {:.6} (σ/√N = {sigma:.6})",
        estimate.mean, estimate.std_err
    );
    assert!(
        (estimate.mean - trace).abs() < 4.0 * sigma,
        "{} vs {trace}",
        estimate.mean
    );
    assert!(
        (estimate.std_err / sigma - 1.0).abs() < 0.3,
        "{} vs {sigma}",
        estimate.std_err
    );
    assert_eq!(estimate.samples.len(), probes);
    // Same seed, same samples; another seed, other samples.
    assert_eq!(
        h.trace(3, 7).unwrap().samples,
        estimate.samples[..3].to_vec()
    );
    assert_ne!(
        h.trace(3, 8).unwrap().samples,
        estimate.samples[..3].to_vec()
    );
}

#[test]
fn frobenius_norm_is_within_its_standard_error() {
    let reference = reference_hessian();
    let truth = frobenius_squared(&reference);
    // Var ‖Hv‖² = 2‖H²‖²_F for Gaussian v.
    let variance = 2.0 * frobenius_squared(&square(&reference));
    let probes = 300;
    let sigma = (variance / probes as f64).sqrt();
    let mut h = hessian(MeasureConfig::default());
    let estimate = h.frobenius_squared(probes, 11).unwrap();
    println!(
        "‖H‖²_F {truth:.6}: estimate {:.6} ± {:.6} (σ/√N = {sigma:.6})",
        estimate.mean, estimate.std_err
    );
    assert!(
        (estimate.mean - truth).abs() < 4.0 * sigma,
        "{} vs {truth}",
        estimate.mean
    );
    assert!(
        (estimate.std_err / sigma - 1.0).abs() < 0.3,
        "{} vs {sigma}",
        estimate.std_err
    );
}

#[test]
fn lanczos_top_eigenvalues_match_jacobi() {
    let expected = jacobi_eigenvalues(reference_hessian());
    let mut h = hessian(MeasureConfig::default());
    // Full Lanczos (m = d): exact up to the finite-difference error.
    let full = h
        .top_eigenvalues(3, Lanczos { steps: 21, seed: 1 })
        .unwrap();
    println!(
        "eigenvalues {:?} vs Jacobi {:?} (steps {})",
        full.values,
        &expected[..3],
        full.steps
    );
    for (k, (got, want)) in full.values.iter().zip(&expected).enumerate() {
        assert!(
            (got - want).abs() < 1e-6 * expected[0].abs().max(1.0),
            "λ_{k}: {got} vs {want}"
        );
    }
    // A Ritz pair is an eigenpair: ‖H y − θ y‖ small.
    let y = &full.vectors[0];
    let hy = h.hvp(y).unwrap();
    let residual = hy.add_scaled(-full.values[0], y).norm();
    assert!(residual < 1e-6, "residual {residual:e}");
    assert!((y.norm() - 1.0).abs() < 1e-9);
    // Few steps: the top eigenvalue converges first and lies within its residual bound.
    let short = h.top_eigenvalues(1, Lanczos { steps: 8, seed: 1 }).unwrap();
    let gap = (short.values[0] - expected[0]).abs();
    assert!(
        gap <= short.residuals[0] + 1e-6,
        "{gap:e} > bound {:e}",
        short.residuals[0]
    );
    assert!(
        gap < 1e-3 * expected[0].abs(),
        "8-step top eigenvalue {} vs {}",
        short.values[0],
        expected[0]
    );
}

/// A 2-D quadratic L(w) = ½ wᵀAw + bᵀw as a module with one parameter.
#[derive(Module, Debug)]
struct Point {
    w: Param<Tensor<1>>,
}

fn quadratic_loss(
    a: [[f64; 2]; 2],
    b: [f64; 2],
) -> Batches<impl FnMut(&Point, usize) -> (Tensor<1>, usize)> {
    Batches::new(1, move |p: &Point, _| {
        let w = p.w.val();
        let a_t = tensor(&[a[0][0], a[0][1], a[1][0], a[1][1]], [2, 2], DType::F64);
        let aw = a_t.matmul(w.clone().reshape([2, 1])).reshape([2]);
        let b_t = tensor(&b, [2], DType::F64);
        ((w.clone() * aw).sum().mul_scalar(0.5) + (w * b_t).sum(), 1)
    })
}

#[test]
fn sam_sharpness_matches_brute_force_on_quadratics() {
    let cases: [([[f64; 2]; 2], [f64; 2], [f64; 2], f64); 3] = [
        // Convex, gradient not along the top eigenvector: the 1-step SAM value is not the max.
        ([[3.0, 1.0], [1.0, 1.0]], [0.2, -0.5], [0.3, 0.4], 0.5),
        // Indefinite.
        ([[2.0, 0.0], [0.0, -1.0]], [0.0, 0.3], [0.1, 0.2], 0.3),
        // At a stationary point of a convex quadratic (∇L = 0: random start).
        ([[1.0, 0.5], [0.5, 2.0]], [0.0, 0.0], [0.0, 0.0], 0.2),
    ];
    for (a, b, w0, rho) in cases {
        let loss = |w: [f64; 2]| {
            0.5 * (w[0] * (a[0][0] * w[0] + a[0][1] * w[1])
                + w[1] * (a[1][0] * w[0] + a[1][1] * w[1]))
                + b[0] * w[0]
                + b[1] * w[1]
        };
        // Brute force over the disk (polar grid).
        let mut brute = f64::NEG_INFINITY;
        for r in 0..=50 {
            for k in 0..20_000 {
                let (s, c) = (k as f64 * std::f64::consts::TAU / 20_000.0).sin_cos();
                let radius = rho * r as f64 / 50.0;
                brute = brute.max(loss([w0[0] + radius * c, w0[1] + radius * s]) - loss(w0));
            }
        }
        let point = Point {
            w: Param::from_tensor(tensor(&w0, [2], DType::F64)),
        };
        let mut h = Hessian::new(&point, quadratic_loss(a, b), MeasureConfig::default()).unwrap();
        let one = h.sam_sharpness(&SamAscent::new(rho)).unwrap();
        let many = h
            .sam_sharpness(&SamAscent::new(rho).with_steps(50).with_step_size(0.5))
            .unwrap();
        println!(
            "A {a:?} b {b:?} w {w0:?} ρ {rho}: brute {brute:.8}, 1 step {:.8}, 50 steps {:.8}",
            one.value, many.value
        );
        // (The grid resolves the maximum to ~1e-9.)
        assert!(one.value <= brute + 1e-7 && many.value <= brute + 1e-7);
        assert!(
            (many.value - brute).abs() < 1e-6 * brute.abs().max(1e-3),
            "{} vs {brute}",
            many.value
        );
        assert!((many.epsilon.norm() - rho).abs() < 1e-9 || many.epsilon.norm() < rho);
        assert_eq!(many.values.len(), 50);
        if b != [0.0, 0.0] {
            // SAM's one-step value: L(w + ρg/‖g‖) − L(w).
            let g = [
                a[0][0] * w0[0] + a[0][1] * w0[1] + b[0],
                a[1][0] * w0[0] + a[1][1] * w0[1] + b[1],
            ];
            let gn = (g[0] * g[0] + g[1] * g[1]).sqrt();
            let sam = loss([w0[0] + rho * g[0] / gn, w0[1] + rho * g[1] / gn]) - loss(w0);
            assert!((one.value - sam).abs() < 1e-12, "{} vs {sam}", one.value);
        }
    }
}

/// Evaluation mode: BatchNorm uses (and keeps) its running statistics, and the caller's model is
/// untouched.
#[derive(Module, Debug)]
struct Normed {
    fc: Linear,
    bn: BatchNorm,
}

#[test]
fn batchnorm_is_evaluated_with_running_statistics_and_left_unchanged() {
    let dev = device();
    let mut bn: BatchNorm = BatchNormConfig::new(2).init(&dev);
    bn.running_mean = RunningState::new(tensor(&[0.5, -0.25], [2], DType::F32).inner());
    bn.running_var = RunningState::new(tensor(&[4.0, 0.25], [2], DType::F32).inner());
    let fc = Linear {
        weight: Param::from_tensor(tensor(&[1.0, 2.0, -1.0, 0.5], [2, 2], DType::F32)),
        bias: Some(Param::from_tensor(tensor(&[0.1, 0.2], [2], DType::F32))),
    };
    let model = Normed { fc, bn };
    let x = [1.0, 2.0, -0.5, 1.5, 0.0, -1.0];
    let data = Batches::new(1, move |m: &Normed, _| {
        let xb = tensor(&x, [3, 2], float_dtype(m).unwrap());
        (m.bn.forward(m.fc.forward(xb)).sum_dim(1).square().mean(), 3)
    });
    let mut h = Hessian::new(&model, data, MeasureConfig::default()).unwrap();
    let loss = h.loss().unwrap();
    h.frobenius_squared(2, 0).unwrap();
    // Plain evaluation with the running statistics (γ = 1, β = 0, ε = 1e-5).
    let (mean, var) = ([0.5, -0.25], [4.0, 0.25]);
    let mut expected = 0.0;
    for n in 0..3 {
        let z = [
            x[2 * n] * 1.0 + x[2 * n + 1] * -1.0 + 0.1,
            x[2 * n] * 2.0 + x[2 * n + 1] * 0.5 + 0.2,
        ];
        let s: f64 = (0..2)
            .map(|j| (z[j] - mean[j]) / (var[j] + 1e-5f64).sqrt())
            .sum();
        expected += s * s / 3.0;
    }
    assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
    let running: Vec<f64> = model
        .bn
        .running_mean
        .value_sync()
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap();
    assert_eq!(running, vec![0.5, -0.25]);
    assert_eq!(float_dtype(&model), Some(DType::F32));
    assert_eq!(float_dtype(h.model()), Some(DType::F64));
    let _: &ParamSet = h.weights();
}
