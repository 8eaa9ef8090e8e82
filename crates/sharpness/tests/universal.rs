//! The universal (φ,ψ,μ) class: sample weights are the exact derivatives of the sample
//! regulariser, the regularisers converge to their target measures on quadratics, Frob-SAM's m = 2
//! closed form, and the validation of m.

use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sharpness::universal::{
    DeterminantFunctional, FrobeniusFunctional, Functional, GeneralFunctional, Sampler,
    TraceFunctional, frob_sam,
};
use sharpness::{Evaluation, ParamSet};

/// Frob-SAM's biased form through the general (φ, ψ) interface: ψ = (t², t), φ(a, b) = (a − b²)/2.
fn frob_biased() -> GeneralFunctional {
    GeneralFunctional {
        name: "frob-biased".into(),
        phi: |p| (p[0] - p[1] * p[1]) / 2.0,
        psi: vec![|t| t * t, |t| t],
        psi_prime: vec![|t| 2.0 * t, |_| 1.0],
        phi_gradient: |p| vec![0.5, -p[1]],
    }
}

/// cᵢ = λ ∂R̂/∂Δᵢ, checked by central differences of `value`, for every functional (this is what
/// makes G the exact gradient of L + λρ²R̂ with the samples held fixed).
#[test]
fn weights_are_the_derivatives_of_the_sample_regulariser() {
    let deltas = [0.3, -0.7, 1.9, 0.05];
    let general = frob_biased();
    let functionals: Vec<Box<dyn Functional>> = vec![
        Box::new(TraceFunctional),
        Box::new(FrobeniusFunctional),
        Box::new(DeterminantFunctional),
        Box::new(general),
    ];
    for f in &functionals {
        for m in [2usize, 4] {
            let d = &deltas[..m];
            let weights = f.weights(d, 0.7);
            for i in 0..m {
                let h = 1e-6;
                let mut plus = d.to_vec();
                let mut minus = d.to_vec();
                plus[i] += h;
                minus[i] -= h;
                let numeric = 0.7 * (f.value(&plus) - f.value(&minus)) / (2.0 * h);
                assert!(
                    (weights[i] - numeric).abs() < 1e-7 * (1.0 + numeric.abs()),
                    "{} m={m} i={i}: {} vs {numeric}",
                    f.name(),
                    weights[i]
                );
            }
        }
    }
}

#[test]
fn frobenius_biased_general_form_is_the_unbiased_one_times_m_minus_one_over_m() {
    let general = frob_biased();
    let deltas = [0.3, -0.7, 1.9];
    let biased = general.weights(&deltas, 1.0);
    let unbiased = FrobeniusFunctional.weights(&deltas, 1.0);
    for (b, u) in biased.iter().zip(&unbiased) {
        assert!((b - u * 2.0 / 3.0).abs() < 1e-12);
    }
}

#[test]
fn det_weights_do_not_overflow() {
    // m = 1: c = λ e^{Δ}; Δ = 1000 would overflow e^{Δ} — clamped in log space, stays finite.
    let w = DeterminantFunctional.weights(&[1000.0], 1.0);
    assert!(w[0].is_finite() && w[0] > 1e300);
    let w = DeterminantFunctional.weights(&[3.0], 2.0);
    assert!((w[0] - 2.0 * 3f64.exp()).abs() < 1e-9);
    let w = DeterminantFunctional.weights(&[2000.0, 1999.0], 1.0);
    assert!(w.iter().all(|c| c.is_finite()));
}

#[test]
fn frob_sam_with_two_samples_equals_its_closed_form() {
    // G = g₀ + λ/(2ρ²)(L₁ − L₂)(g₁ − g₂)
    let d = Device::flex();
    let layout = ParamSet::from_values(&d, &[("a", &[2], &[0.0, 0.0]), ("b", &[1], &[0.0])]);
    let eval = |loss: f64, g: [f64; 3]| Evaluation {
        loss,
        grad: layout.with_values(&g),
    };
    let g0 = eval(1.0, [0.1, -0.2, 0.3]);
    let s1 = eval(1.3, [0.5, 0.1, -0.4]);
    let s2 = eval(0.8, [-0.2, 0.7, 0.2]);
    let (lambda, rho) = (0.05, 0.01);
    let frob = frob_sam(lambda, 2, 0).unwrap();
    let g = frob.combine(&g0, &[s1.clone(), s2.clone()], rho).to_vec();
    let k = lambda / (2.0 * rho * rho) * (1.3 - 0.8);
    let expected = [0.1 + k * 0.7, -0.2 + k * -0.6, 0.3 + k * -0.6];
    for (a, e) in g.iter().zip(expected) {
        assert!((a - e).abs() < 1e-9 * (1.0 + e.abs()), "{a} vs {e}");
    }
}

#[test]
fn frob_sam_rejects_a_single_sample() {
    let err = frob_sam(0.01, 1, 0).err().unwrap().to_string();
    assert!(
        err.contains("samples") && err.contains("at least 2"),
        "{err}"
    );
}

/// Quadratic L(w) = ½ wᵀHw at w = 0 with diagonal H = diag(h): Δ(u) = (L(ρu) − L(0))/ρ² = ½uᵀHu
/// exactly, so the regularisers are sample statistics of ½Σ hᵢuᵢ² with known moments.
fn deltas(sampler: Sampler, h: &[f64], m: usize, seed: u64) -> Vec<f64> {
    let d = Device::flex();
    let zeros = vec![0.0; h.len()];
    let layout = ParamSet::from_values(&d, &[("w", &[h.len()], &zeros)]);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..m)
        .map(|_| {
            let u = sampler.sample(&layout, &mut rng).to_vec();
            0.5 * u.iter().zip(h).map(|(u, h)| h * u * u).sum::<f64>()
        })
        .collect()
}

const H: [f64; 4] = [0.5, 1.0, 2.0, 3.0];

#[test]
fn trace_regulariser_converges_to_half_the_trace() {
    // Gaussian u: E Δ = ½ tr H, Var Δ = ½‖H‖²_F; tolerance 5 standard errors.
    let tr: f64 = H.iter().sum();
    let frob2: f64 = H.iter().map(|h| h * h).sum();
    for m in [100usize, 1000, 10000] {
        let value = TraceFunctional.value(&deltas(Sampler::Gaussian, &H, m, m as u64));
        let tol = 5.0 * (0.5 * frob2 / m as f64).sqrt();
        assert!(
            (value - 0.5 * tr).abs() < tol,
            "m={m}: {value} vs {}",
            0.5 * tr
        );
    }
    // On the unit sphere E uᵀHu = tr H/d.
    let m = 20000;
    let value = TraceFunctional.value(&deltas(Sampler::Sphere, &H, m, 7));
    assert!((value - 0.5 * tr / 4.0).abs() < 0.02, "{value}");
}

#[test]
fn frobenius_regulariser_converges_to_a_quarter_of_the_squared_frobenius_norm() {
    // X = ½Σhᵢzᵢ²: κ₂ = ½Σh², κ₄ = 3Σh⁴; ½ s² estimates ½κ₂ = ¼‖H‖²_F with
    // Var(½ s²) ≈ ¼(κ₄ + 2κ₂²)/m.
    let k2: f64 = 0.5 * H.iter().map(|h| h * h).sum::<f64>();
    let k4: f64 = 3.0 * H.iter().map(|h| h.powi(4)).sum::<f64>();
    let target = 0.5 * k2;
    let mut errors = Vec::new();
    for m in [100usize, 1000, 20000] {
        let value = FrobeniusFunctional.value(&deltas(Sampler::Gaussian, &H, m, 11 + m as u64));
        let tol = 5.0 * (0.25 * (k4 + 2.0 * k2 * k2) / m as f64).sqrt();
        assert!(
            (value - target).abs() < tol,
            "m={m}: {value} vs {target} (tol {tol})"
        );
        errors.push((value - target).abs());
    }
    assert!(errors[2] < 0.1 * target);
}

#[test]
fn determinant_regulariser_converges_to_the_determinant() {
    // u uniform in [−a, a]^d: c̄ = mean e^{−uᵀHu/4} → (4π)^{d/2} det(H)^{−1/2} / (2a)^d for a
    // large enough, so det H ≈ c̄⁻² (4π)^d / (2a)^{2d}. Tolerance from the sample's own spread
    // (delta method: rel. error of c̄⁻² ≈ 2 × rel. error of c̄).
    let det: f64 = H.iter().product();
    let a = 7.0;
    for m in [20000usize, 200000] {
        let ds = deltas(Sampler::Hypercube { half_width: a }, &H, m, 3 + m as u64);
        let psi: Vec<f64> = ds.iter().map(|d| (-d / 2.0).exp()).collect();
        let mean = psi.iter().sum::<f64>() / m as f64;
        let sd = (psi.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (m as f64 - 1.0)).sqrt();
        let rel_tol = 5.0 * 2.0 * sd / (mean * (m as f64).sqrt());
        let estimate = DeterminantFunctional.value(&ds) * (4.0 * std::f64::consts::PI).powi(4)
            / (2.0 * a).powi(8);
        assert!(
            (estimate / det - 1.0).abs() < rel_tol,
            "m={m}: {estimate} vs {det} (rel tol {rel_tol})"
        );
    }
}
