//! Each perturbation against hand-computed values on a three-tensor parameter set (so the norms
//! are global), and the properties the papers state (proptest).

// Matrices and formulas transcribed index by index, signs as in the derivations.
#![allow(
    clippy::needless_range_loop,
    clippy::neg_multiply,
    clippy::type_complexity
)]

use burn::tensor::Device;
use proptest::prelude::*;
use sharpness::ParamSet;
use sharpness::perturb::{
    Asam, AsamScope, FisherSam, InfoSam, MongeSam, Preconditioner, Sam, XI, perturbation,
};

fn device() -> Device {
    Device::flex()
}

/// g = ([1, 2], [[2]], [0]) with ‖g‖ = 3, w = ([0.5, −1], [[2]], [3]); paths name a weight, a
/// norm scale and a bias.
fn example() -> (ParamSet, ParamSet) {
    let d = device();
    let w = ParamSet::from_values(
        &d,
        &[
            ("fc.weight", &[2], &[0.5, -1.0]),
            ("bn.gamma", &[1, 1], &[2.0]),
            ("fc.bias", &[1], &[3.0]),
        ],
    );
    let g = w.with_values(&[1.0, 2.0, 2.0, 0.0]);
    (g, w)
}

fn eps<P: Preconditioner>(p: P, rho: f64, g: &ParamSet, w: &ParamSet) -> Vec<f64> {
    perturbation(&p, rho, g, w).epsilon().to_vec()
}

fn assert_close(actual: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol * (1.0 + e.abs()),
            "coordinate {i}: {a} vs {e}\n{actual:?}\n{expected:?}"
        );
    }
}

#[test]
fn sam_is_rho_times_the_globally_normalised_gradient() {
    let (g, w) = example();
    assert_close(&eps(Sam, 0.3, &g, &w), &[0.1, 0.2, 0.2, 0.0], 1e-12);
}

#[test]
fn monge_matches_its_closed_form() {
    // ρ g / (‖g‖ √(1+‖g‖²)) = 0.3 g / (3 √10)
    let (g, w) = example();
    let s = 0.3 / (3.0 * 10f64.sqrt());
    assert_close(
        &eps(MongeSam, 0.3, &g, &w),
        &[s, 2.0 * s, 2.0 * s, 0.0],
        1e-12,
    );
}

#[test]
fn fisher_is_normalised_in_the_fisher_metric() {
    // h = g/(1+g²) = [1/2, 2/5, 2/5, 0]; gᵀh = 1/2 + 4/5 + 4/5 = 2.1; ε = ρ h/√2.1
    let (g, w) = example();
    let k = 0.3 / 2.1f64.sqrt();
    let e = eps(FisherSam::new(1.0).unwrap(), 0.3, &g, &w);
    assert_close(&e, &[0.5 * k, 0.4 * k, 0.4 * k, 0.0], 1e-12);
    // εᵀ(I + η diag g²)ε = ρ², and it is not the Euclidean normalisation (`docs/peers.md`, B6).
    let gv = g.to_vec();
    let fisher_norm: f64 = e.iter().zip(&gv).map(|(e, g)| e * e * (1.0 + g * g)).sum();
    assert!((fisher_norm - 0.09).abs() < 1e-12);
    let euclid: f64 = e.iter().map(|e| e * e).sum::<f64>().sqrt();
    assert!((euclid - 0.3).abs() > 1e-3);
}

#[test]
fn asam_official_scope_rescales_weights_and_norm_scales_only() {
    // t = [0.51, 1.01] (weight), [2.01] (gamma), 1 (bias); ε = ρ t²g/‖tg‖
    let (g, w) = example();
    let t = [0.51, 1.01, 2.01, 1.0];
    let gv = [1.0, 2.0, 2.0, 0.0];
    let tg: Vec<f64> = t.iter().zip(&gv).map(|(t, g)| t * g).collect();
    let norm = tg.iter().map(|x| x * x).sum::<f64>().sqrt();
    let expected: Vec<f64> = t
        .iter()
        .zip(&gv)
        .map(|(t, g)| 0.3 * t * t * g / norm)
        .collect();
    assert_close(&eps(Asam::default(), 0.3, &g, &w), &expected, 1e-12);
}

#[test]
fn asam_all_tensors_with_zero_eta_is_davda54_adaptive() {
    // davda54 adaptive: ε = ρ w²g/‖|w| g‖ on every tensor, bias included (`docs/peers.md`, B7).
    let d = device();
    let w = ParamSet::from_values(
        &d,
        &[("fc.weight", &[2], &[0.5, -1.0]), ("fc.bias", &[1], &[3.0])],
    );
    let g = w.with_values(&[1.0, 2.0, -1.0]);
    let wg = [0.5 * 1.0, 1.0 * 2.0, 3.0 * -1.0];
    let norm = wg.iter().map(|x: &f64| x * x).sum::<f64>().sqrt();
    let expected = [
        0.25 * 1.0 * 0.3 / norm,
        1.0 * 2.0 * 0.3 / norm,
        9.0 * -1.0 * 0.3 / norm,
    ];
    assert_close(
        &eps(Asam::new(0.0, AsamScope::All).unwrap(), 0.3, &g, &w),
        &expected,
        1e-12,
    );
}

#[test]
fn infosam_first_step_is_sam_then_inverse_variance_weighted() {
    let (g1, w) = example();
    let mut info = InfoSam::new(0.5, 1e-8).unwrap();
    let sam = eps(Sam, 0.3, &g1, &w);
    assert_close(
        &perturbation(&info, 0.3, &g1, &w).epsilon().to_vec(),
        &sam,
        1e-12,
    );
    info.commit(&g1);
    // m = 0.5 g1 + 0.5 g2; σ̂² = (m − g2)² = 0.25 (g1 − g2)²
    let g2 = g1.with_values(&[3.0, 2.0, 1.0, 1.0]);
    let var = [0.25 * 4.0, 0.0, 0.25 * 1.0, 0.25 * 1.0];
    let d: Vec<f64> = [3.0, 2.0, 1.0, 1.0]
        .iter()
        .zip(var)
        .map(|(g, v)| g / (v + 1e-8))
        .collect();
    let n = d.iter().map(|x| x * x).sum::<f64>().sqrt();
    let expected: Vec<f64> = d.iter().map(|x| 0.3 * x / (n + XI)).collect();
    assert_close(
        &perturbation(&info, 0.3, &g2, &w).epsilon().to_vec(),
        &expected,
        1e-9,
    );
    // What a step does: w + ε from the current average, then m₂ = 0.5 m₁ + 0.5 g₂.
    let w_plus: Vec<f64> = w
        .to_vec()
        .iter()
        .zip(&expected)
        .map(|(w, e)| w + e)
        .collect();
    let p = perturbation(&info, 0.3, &g2, &w);
    assert_close(&p.apply_to(&w).to_vec(), &w_plus, 1e-9);
    info.commit(&g2);
    assert_eq!(info.mean().unwrap().to_vec(), [2.0, 2.0, 1.5, 0.5]);
}

#[test]
fn zero_gradient_gives_a_finite_zero_perturbation() {
    let (g, w) = example();
    let zero = g.zeros_like();
    for e in [
        eps(Sam, 0.5, &zero, &w),
        eps(MongeSam, 0.5, &zero, &w),
        eps(FisherSam::default(), 0.5, &zero, &w),
        eps(Asam::default(), 0.5, &zero, &w),
    ] {
        assert!(e.iter().all(|x| *x == 0.0), "{e:?}");
    }
}

#[test]
fn invalid_hyperparameters_are_rejected_with_a_message() {
    let err = FisherSam::new(-1.0).unwrap_err().to_string();
    assert!(err.contains("eta") && err.contains("-1"), "{err}");
    assert!(Asam::new(f64::NAN, AsamScope::Weights).is_err());
    assert!(InfoSam::new(1.0, 1e-8).is_err());
    assert!(InfoSam::new(0.9, 0.0).is_err());
    assert!(sharpness::perturb::Ssam::new(1.0, 16, 1).is_err());
    assert!(sharpness::perturb::Ssam::new(-0.1, 16, 1).is_err());
    assert!(sharpness::perturb::Ssam::new(0.5, 0, 1).is_err());
    assert!(
        sharpness::RhoSchedule::constant(-0.05)
            .unwrap_err()
            .to_string()
            .contains("rho")
    );
}

fn vectors(n: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(-3.0f64..3.0, n)
}

fn set_of(values: &[f64]) -> ParamSet {
    // Two tensors of 3 and 2 coordinates: "l.weight" (3) and "l.bias" (2).
    let d = device();
    ParamSet::from_values(
        &d,
        &[
            ("l.weight", &[3], &values[..3]),
            ("l.bias", &[2], &values[3..]),
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sam_has_norm_rho(g in vectors(5), rho in 0.01f64..2.0) {
        let g = set_of(&g);
        prop_assume!(g.norm() > 1e-3);
        let e = perturbation(&Sam, rho, &g, &g).epsilon();
        prop_assert!((e.norm() - rho).abs() < 1e-9 * rho.max(1.0));
    }

    #[test]
    fn monge_lies_on_the_monge_ball_inside_the_sam_ball(g in vectors(5), rho in 0.01f64..2.0) {
        let g = set_of(&g);
        prop_assume!(g.norm() > 1e-3);
        let e = perturbation(&MongeSam, rho, &g, &g).epsilon();
        // εᵀ(I + ggᵀ)ε = ‖ε‖² + (gᵀε)² = ρ²
        let quad = e.squared_norm() + g.dot(&e).powi(2);
        prop_assert!((quad - rho * rho).abs() < 1e-9 * (1.0 + rho * rho));
        prop_assert!(e.norm() <= rho + 1e-12);
    }

    #[test]
    fn monge_tends_to_sam_for_small_gradients(g in vectors(5), scale in 1e-6f64..1e-4) {
        let g = set_of(&g);
        prop_assume!(g.norm() > 1e-2);
        let small = g.scale(scale);
        let monge = perturbation(&MongeSam, 0.1, &small, &small).epsilon();
        let sam = perturbation(&Sam, 0.1, &small, &small).epsilon();
        prop_assert!(monge.sub(&sam).norm() < 1e-6);
    }

    #[test]
    fn fisher_with_zero_eta_equals_sam(g in vectors(5), rho in 0.01f64..2.0) {
        let g = set_of(&g);
        let fisher = perturbation(&FisherSam::new(0.0).unwrap(), rho, &g, &g).epsilon();
        let sam = perturbation(&Sam, rho, &g, &g).epsilon();
        prop_assert!(fisher.sub(&sam).norm() < 1e-12);
    }

    #[test]
    fn fisher_has_fisher_norm_rho(g in vectors(5), eta in 0.0f64..5.0, rho in 0.01f64..2.0) {
        let g = set_of(&g);
        prop_assume!(g.norm() > 1e-3);
        let e = perturbation(&FisherSam::new(eta).unwrap(), rho, &g, &g).epsilon();
        let ev = e.to_vec();
        let q: f64 = ev.iter().zip(g.to_vec()).map(|(e, g)| e * e * (1.0 + eta * g * g)).sum();
        prop_assert!((q - rho * rho).abs() < 1e-9 * (1.0 + rho * rho));
    }

    /// The preSAM constraint form ε = ρ C g/√(gᵀCg) with explicit matrices C reproduces SAM (C = I),
    /// ASAM (C = T²), Fisher (C = F⁻¹) and Monge (C = (I + ggᵀ)⁻¹, a dense matrix).
    #[test]
    fn preconditioned_form_reproduces_the_named_methods(g in vectors(5), w in vectors(5), eta in 0.0f64..2.0) {
        let gs = set_of(&g);
        let ws = gs.with_values(&w);
        prop_assume!(gs.norm() > 1e-3);
        let rho = 0.2;
        let cp = |c: &dyn Fn(&[f64]) -> Vec<f64>| {
            let cg = c(&g);
            let n = g.iter().zip(&cg).map(|(a, b)| a * b).sum::<f64>().sqrt();
            cg.iter().map(|x| rho * x / n).collect::<Vec<f64>>()
        };
        let identity = cp(&|v| v.to_vec());
        let t: Vec<f64> = w.iter().enumerate().map(|(i, w)| if i < 3 { w.abs() + 0.01 } else { 1.0 }).collect();
        let asam = cp(&|v| v.iter().zip(&t).map(|(v, t)| t * t * v).collect());
        let fisher = cp(&|v| v.iter().zip(&g).map(|(v, g)| v / (1.0 + eta * g * g)).collect());
        // Monge: solve (I + ggᵀ) x = v by Gaussian elimination on the dense 5×5 matrix.
        let monge = cp(&|v| solve_dense(&g, v));
        assert_close(&perturbation(&Sam, rho, &gs, &ws).epsilon().to_vec(), &identity, 1e-9);
        assert_close(&perturbation(&Asam::default(), rho, &gs, &ws).epsilon().to_vec(), &asam, 1e-9);
        assert_close(&perturbation(&FisherSam::new(eta).unwrap(), rho, &gs, &ws).epsilon().to_vec(), &fisher, 1e-9);
        assert_close(&perturbation(&MongeSam, rho, &gs, &ws).epsilon().to_vec(), &monge, 1e-9);
    }
}

/// x = (I + ggᵀ)⁻¹ v by Gaussian elimination (independent of Sherman–Morrison).
fn solve_dense(g: &[f64], v: &[f64]) -> Vec<f64> {
    let n = g.len();
    let mut a: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| g[i] * g[j] + if i == j { 1.0 } else { 0.0 })
                .collect()
        })
        .collect();
    let mut b = v.to_vec();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
            .unwrap();
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            for k in col..n {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        x[row] = (b[row] - (row + 1..n).map(|k| a[row][k] * x[k]).sum::<f64>()) / a[row][row];
    }
    x
}
