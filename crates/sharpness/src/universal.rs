//! The universal (φ,ψ,μ) class of sharpness measures and its SAM-style minimisers
//! (Tahmasebi, Soleymani, Bahri, Jegelka & Jaillet, ICML 2024; `docs/algorithms.md` §7).
//!
//! A (φ,ψ,μ)-sharpness is S(w) = φ(∫ψ(uᵀ∇²L(w)u) dμ(u)) (vector form: r functions ψ_k, one φ of
//! r arguments). Its sharpness-aware loss replaces uᵀHu by the finite difference
//! Δ_u = (L(w+ρu) − L(w))/ρ², and one step of the minimiser draws m samples uᵢ ~ μ, evaluates the
//! same batch at w + ρuᵢ (m extra passes) and applies
//!
//! G = g₀ + λ Σ_k ∂_kφ(Ψ̄) · (1/m) Σᵢ ψ_k′(Δᵢ)(gᵢ − g₀),   Ψ̄_k = (1/m) Σᵢ ψ_k(Δᵢ),
//!
//! which is exactly ∇ of L(w) + λρ²·φ(Ψ̄) with the samples held fixed (`docs/algorithms.md` §7.3, the reference
//! code's λ). Written as G = g₀ + Σᵢ cᵢ (gᵢ − g₀), a [`Functional`] only has to give the sample
//! weights cᵢ. Cost: m + 1 forward/backward passes, all on the same batch; BatchNorm statistics
//! come from the unperturbed pass only, and the weights are never modified (the oracle works on
//! copies), as for every estimator.

use burn::optim::{StateSink, StateSource, join_path};
use burn::tensor::Device;
use burn_pack::Scalar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};

use crate::error::{SharpnessError, check, check_non_negative};
use crate::estimator::{Evaluation, GradientEstimator, Lifecycle, Oracle, StepContext, missing};
use crate::params::ParamSet;

/// The pair (φ, ψ) of a universal sharpness measure: it turns the finite differences Δᵢ into the
/// sample weights cᵢ of G = g₀ + Σᵢ cᵢ(gᵢ − g₀).
pub trait Functional: Send + Sync {
    /// A short name.
    fn name(&self) -> String;

    /// The smallest number of samples the estimator is defined for.
    fn min_samples(&self) -> usize {
        1
    }

    /// The sample regulariser R̂ = φ(Ψ̄) for the differences Δᵢ (its expectation is the sharpness
    /// measure, up to the constants stated on each functional).
    fn value(&self, deltas: &[f64]) -> f64;

    /// cᵢ = λ ∂R̂/∂Δᵢ for the differences Δᵢ and strength λ.
    fn weights(&self, deltas: &[f64], lambda: f64) -> Vec<f64>;
}

/// A user-supplied (φ, ψ) in vector form: ψ_k, ψ_k′ (k = 1..r) and the gradient of φ.
///
/// cᵢ = (λ/m) Σ_k ∂_kφ(Ψ̄) ψ_k′(Δᵢ).
pub struct GeneralFunctional {
    /// A short name.
    pub name: String,
    /// φ(Ψ̄).
    pub phi: fn(&[f64]) -> f64,
    /// ψ_k(t), k = 0..r.
    pub psi: Vec<fn(f64) -> f64>,
    /// ψ_k′(t), k = 0..r.
    pub psi_prime: Vec<fn(f64) -> f64>,
    /// ∇φ at Ψ̄ (r components).
    pub phi_gradient: fn(&[f64]) -> Vec<f64>,
}

impl GeneralFunctional {
    fn psi_bar(&self, deltas: &[f64]) -> Vec<f64> {
        let m = deltas.len() as f64;
        self.psi
            .iter()
            .map(|psi| deltas.iter().map(|&d| psi(d)).sum::<f64>() / m)
            .collect()
    }
}

impl Functional for GeneralFunctional {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn value(&self, deltas: &[f64]) -> f64 {
        (self.phi)(&self.psi_bar(deltas))
    }

    fn weights(&self, deltas: &[f64], lambda: f64) -> Vec<f64> {
        let m = deltas.len() as f64;
        let dphi = (self.phi_gradient)(&self.psi_bar(deltas));
        deltas
            .iter()
            .map(|&d| {
                lambda / m
                    * dphi
                        .iter()
                        .zip(&self.psi_prime)
                        .map(|(dp, psi_p)| dp * psi_p(d))
                        .sum::<f64>()
            })
            .collect()
    }
}

/// Trace: φ = ψ = id, so S = E(uᵀHu) ∝ tr ∇²L (tr H/d on the unit sphere, tr H for N(0, I)).
/// cᵢ = λ/m. With λ = 1 and the sphere this is average-direction SAM (Wen et al. 2023).
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceFunctional;

impl Functional for TraceFunctional {
    fn name(&self) -> String {
        "trace-sam".into()
    }

    fn value(&self, deltas: &[f64]) -> f64 {
        deltas.iter().sum::<f64>() / deltas.len() as f64
    }

    fn weights(&self, deltas: &[f64], lambda: f64) -> Vec<f64> {
        vec![lambda / deltas.len() as f64; deltas.len()]
    }
}

/// Frobenius: ψ = (t², t), φ(a, b) = (a − b²)/2, so S = ½Var(uᵀHu) = ‖∇²L‖²_F for u ~ N(0, I)
/// (Var uᵀHu = 2‖H‖²_F). Biased form cᵢ = λ(Δᵢ − Δ̄)/m; the paper (Alg. 2) uses the **unbiased**
/// cross-covariance, cᵢ = λ(Δᵢ − Δ̄)/(m − 1), so m ≥ 2. For m = 2:
/// G = g₀ + λ/(2ρ²)(L₁ − L₂)(g₁ − g₂).
#[derive(Clone, Copy, Debug, Default)]
pub struct FrobeniusFunctional;

impl Functional for FrobeniusFunctional {
    fn name(&self) -> String {
        "frob-sam".into()
    }

    fn min_samples(&self) -> usize {
        2
    }

    /// ½ × the unbiased sample variance of Δ.
    fn value(&self, deltas: &[f64]) -> f64 {
        let m = deltas.len() as f64;
        let mean = deltas.iter().sum::<f64>() / m;
        0.5 * deltas.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (m - 1.0)
    }

    fn weights(&self, deltas: &[f64], lambda: f64) -> Vec<f64> {
        let m = deltas.len() as f64;
        let mean = deltas.iter().sum::<f64>() / m;
        deltas
            .iter()
            .map(|d| lambda * (d - mean) / (m - 1.0))
            .collect()
    }
}

/// Determinant: ψ(t) = e^{−t/2}, φ(t) = t⁻² (the constant (2π)^d is absorbed in λ), μ = Lebesgue
/// measure truncated to a hypercube: ∫e^{−uᵀHu/2}du ∝ det(H)^{−1/2}, so S ∝ det ∇²L (the product of
/// the non-zero eigenvalues in the rank-deficient case). cᵢ = λ c̄⁻³ e^{−Δᵢ/2}/m with
/// c̄ = (1/m)Σⱼ e^{−Δⱼ/2}, computed in log space (log-sum-exp) so that no exponential overflows;
/// m = 1 gives cᵢ = λ e^{Δ}. A weight whose logarithm exceeds 700 is clamped there.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeterminantFunctional;

impl Functional for DeterminantFunctional {
    fn name(&self) -> String {
        "det-sam".into()
    }

    /// c̄⁻², c̄ = (1/m)Σ e^{−Δᵢ/2}.
    fn value(&self, deltas: &[f64]) -> f64 {
        let m = deltas.len() as f64;
        let mean = deltas.iter().map(|d| (-d / 2.0).exp()).sum::<f64>() / m;
        mean.powi(-2)
    }

    fn weights(&self, deltas: &[f64], lambda: f64) -> Vec<f64> {
        let m = deltas.len() as f64;
        let exponents: Vec<f64> = deltas.iter().map(|d| -d / 2.0).collect();
        let max = exponents.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let log_mean = max + exponents.iter().map(|e| (e - max).exp()).sum::<f64>().ln() - m.ln();
        exponents
            .iter()
            .map(|e| lambda * (e - 3.0 * log_mean - m.ln()).min(700.0).exp())
            .collect()
    }
}

/// The sampling measure μ of the perturbation directions u (the perturbation is ρu).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// Uniform on the unit sphere S^{d−1} of all parameters together (‖u‖ = 1) — what the paper
    /// intends for Trace-SAM.
    Sphere,
    /// Independent N(0, 1) coordinates (‖u‖ ≈ √d) — Frob-SAM's measure, and what the reference
    /// code actually ran for Trace-SAM (its sphere normalisation is computed but never applied).
    Gaussian,
    /// Uniform in the hypercube [−a, a]^d (Det-SAM's truncated Lebesgue measure).
    Hypercube {
        /// The half-width a.
        half_width: f64,
    },
}

impl Sampler {
    /// Draws one direction u with the layout of `like`.
    pub fn sample(&self, like: &ParamSet, rng: &mut ChaCha8Rng) -> ParamSet {
        let n = like.num_elements();
        let values: Vec<f64> = match *self {
            Sampler::Sphere | Sampler::Gaussian => {
                (0..n).map(|_| StandardNormal.sample(&mut *rng)).collect()
            }
            Sampler::Hypercube { half_width } => {
                let uniform =
                    Uniform::new_inclusive(-half_width, half_width).expect("valid half-width");
                (0..n).map(|_| uniform.sample(&mut *rng)).collect()
            }
        };
        let sampled = like.with_values(&values);
        match self {
            Sampler::Sphere => {
                let norm = sampled.norm();
                sampled.scale(1.0 / norm)
            }
            _ => sampled,
        }
    }
}

/// The (φ,ψ,μ) sharpness-aware estimator with m samples per step (see the module docs).
#[derive(Clone)]
pub struct Universal<F> {
    functional: F,
    sampler: Sampler,
    lambda: f64,
    samples: usize,
    seed: u64,
    rng: ChaCha8Rng,
}

impl<F: Functional> Universal<F> {
    /// A universal estimator: strength λ ≥ 0, m ≥ the functional's minimum, a sampler and a seed
    /// for the sampler's random numbers (saved and restored with the optimizer state).
    pub fn new(
        functional: F,
        sampler: Sampler,
        lambda: f64,
        samples: usize,
        seed: u64,
    ) -> Result<Self, SharpnessError> {
        check_non_negative("lambda", lambda)?;
        let min = functional.min_samples();
        if samples < min {
            return Err(SharpnessError::InvalidHyperparameter {
                name: "samples",
                value: samples.to_string(),
                expected: if min == 2 {
                    "at least 2 (the unbiased covariance divides by m − 1)"
                } else {
                    "at least 1"
                },
            });
        }
        if let Sampler::Hypercube { half_width } = sampler {
            check(
                "half_width",
                half_width,
                half_width.is_finite() && half_width > 0.0,
                "a finite number > 0",
            )?;
        }
        Ok(Self {
            functional,
            sampler,
            lambda,
            samples,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// The functional.
    pub fn functional(&self) -> &F {
        &self.functional
    }

    /// G from pass 0 and the m evaluations at w + ρuᵢ (exposed for tests and custom loops).
    pub fn combine(&self, at_weights: &Evaluation, samples: &[Evaluation], rho: f64) -> ParamSet {
        let deltas: Vec<f64> = samples
            .iter()
            .map(|s| (s.loss - at_weights.loss) / (rho * rho))
            .collect();
        let weights = self.functional.weights(&deltas, self.lambda);
        let g0 = &at_weights.grad;
        let mut combined = g0.scale(1.0 - weights.iter().sum::<f64>());
        for (c, sample) in weights.iter().zip(samples) {
            combined = combined.add_scaled(*c, &sample.grad);
        }
        combined
    }
}

/// Trace-SAM (bias ≈ λρ²/2 · tr ∇²L for N(0, I); tr/d on the sphere): the paper's setting is
/// ρ = 0.01, m = 1. `sampler` is [`Sampler::Sphere`] (as intended) or [`Sampler::Gaussian`]
/// (as the reference code ran).
pub fn trace_sam(
    lambda: f64,
    samples: usize,
    sampler: Sampler,
    seed: u64,
) -> Result<Universal<TraceFunctional>, SharpnessError> {
    Universal::new(TraceFunctional, sampler, lambda, samples, seed)
}

/// Average-direction SAM (Wen et al. 2023): Trace-SAM on the sphere with λ = 1, i.e. the gradient
/// averaged over m random points at distance ρ.
pub fn average_direction_sam(
    samples: usize,
    seed: u64,
) -> Result<Universal<TraceFunctional>, SharpnessError> {
    Universal::new(TraceFunctional, Sampler::Sphere, 1.0, samples, seed)
}

/// Frob-SAM (bias ≈ λρ²/4 · ‖∇²L‖²_F plus λ/2‖∇L‖², Gaussian samples, m ≥ 2; paper: m = 2).
pub fn frob_sam(
    lambda: f64,
    samples: usize,
    seed: u64,
) -> Result<Universal<FrobeniusFunctional>, SharpnessError> {
    Universal::new(
        FrobeniusFunctional,
        Sampler::Gaussian,
        lambda,
        samples,
        seed,
    )
}

/// Det-SAM (bias ∝ det ∇²L over its non-zero eigenvalues; uniform samples in [−a, a]^d; paper:
/// ρ = 1, a = 0.01, m = 1).
pub fn det_sam(
    lambda: f64,
    samples: usize,
    half_width: f64,
    seed: u64,
) -> Result<Universal<DeterminantFunctional>, SharpnessError> {
    Universal::new(
        DeterminantFunctional,
        Sampler::Hypercube { half_width },
        lambda,
        samples,
        seed,
    )
}

/// The sampler's position: its seed and the 128-bit word position of its stream.
impl<F> Lifecycle for Universal<F> {
    fn save_state(&self, prefix: &str, out: &mut StateSink) {
        let pos = self.rng.get_word_pos();
        out.push_scalar(prefix, "seed", Scalar::from(self.seed));
        out.push_scalar(prefix, "word_pos_lo", Scalar::from(pos as u64));
        out.push_scalar(prefix, "word_pos_hi", Scalar::from((pos >> 64) as u64));
    }

    fn load_state(
        &mut self,
        prefix: &str,
        source: &mut StateSource,
        _device: &Device,
    ) -> Result<(), SharpnessError> {
        let mut integer = |leaf: &str| {
            source
                .take_scalar(prefix, leaf)
                .and_then(|s| u64::try_from(s).ok())
                .ok_or_else(|| missing(&join_path(prefix, leaf)))
        };
        let seed = integer("seed")?;
        let pos = integer("word_pos_lo")? as u128 | (integer("word_pos_hi")? as u128) << 64;
        self.seed = seed;
        self.rng = ChaCha8Rng::seed_from_u64(seed);
        self.rng.set_word_pos(pos);
        Ok(())
    }
}

impl<F: Functional + Clone + 'static> GradientEstimator for Universal<F> {
    fn name(&self) -> String {
        self.functional.name()
    }

    fn estimate(
        &mut self,
        at_weights: &Evaluation,
        oracle: &mut dyn Oracle,
        ctx: &StepContext,
    ) -> Result<ParamSet, SharpnessError> {
        if self.lambda == 0.0 || ctx.rho == 0.0 {
            return Ok(at_weights.grad.clone());
        }
        let mut evaluations = Vec::with_capacity(self.samples);
        for _ in 0..self.samples {
            let direction = self.sampler.sample(oracle.weights(), &mut self.rng);
            // w + ρu in one pass (the same values as w + (ρu)).
            let perturbed = oracle.weights().add_scaled(ctx.rho, &direction);
            evaluations.push(oracle.evaluate_at(&perturbed)?);
        }
        Ok(self.combine(at_weights, &evaluations, ctx.rho))
    }

    fn clone_box(&self) -> Box<dyn GradientEstimator> {
        Box::new(self.clone())
    }
}
