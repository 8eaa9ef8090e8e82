//! Sharpness measures of a trained model: Hessian-vector products and the estimators built on
//! them — Hutchinson's trace, the squared Frobenius norm, the top eigenvalues (Lanczos) and the
//! SAM sharpness max_{‖ε‖≤ρ} L(w+ε) − L(w).
//!
//! # The loss
//! All measures refer to the loss of a **fixed** set of examples, split into batches by a
//! [`DatasetLoss`] (PyHessian and the universal-SAM code use the first 1 280 training examples
//! in batches of 128). With batch b holding n_b examples and mean loss L_b,
//!
//! L(w) = Σ_b n_b L_b(w) / Σ_b n_b,   ∇L(w) = Σ_b n_b ∇L_b(w) / Σ_b n_b,
//!
//! i.e. the mean over all examples. The model is evaluated on a private copy in **evaluation
//! mode** (every `Param<Flag>` training flag off: BatchNorm uses its running statistics, which are
//! never updated, and dropout is off) while autodiff stays on, and by default in **`f64`**
//! ([`Precision::F64`]): every float parameter is cast, so the batches must be built in the
//! model's dtype (see [`float_dtype`]). The caller's model is never modified.
//!
//! # Hessian-vector products
//! Burn 0.22 has no double backward, so H v is a central difference of gradients along the
//! normalised direction v̂ = v/‖v‖ with step h:
//!
//! H v ≈ ‖v‖ · (∇L(w + h v̂) − ∇L(w − h v̂)) / (2h),
//!
//! with truncation error ‖v‖ h² |∇³L|/6 and round-off ≈ ‖v‖ ε_mach |∇L| / h. The default
//! h = 10⁻⁵ in `f64` balances the two at ~10⁻¹⁰ relative (measured against a dense Hessian from
//! second differences of loss values in `tests/measure.rs`: error ≤ 10⁻⁸, at the reference's own
//! precision), and a step of 10⁻⁵ along a unit direction rarely crosses a ReLU kink (h = 10⁻³
//! does, with errors of 100×). In `f32` (ε ≈ 10⁻⁷) the same h gives errors of ~1 %, which is why
//! `f64` is the default; with [`Precision::Native`] on an `f32` model use h ≈ 10⁻³…10⁻⁴ and expect
//! vᵀHv to ~0.5 % and Hv to ~10 % (measured on a ReLU MLP). Each product costs two gradients, i.e.
//! two forward/backward passes over every batch.
//!
//! **ReLU networks.** A difference crosses an activation kink wherever a pre-activation lies within
//! ~h‖x‖/√d of 0. On a 6×128 MNIST MLP over 1 280 examples that happens about once per gradient
//! at h = 10⁻⁵, and each crossing adds a spike ∝ 1/h (the lab measured ‖H‖²_F estimates jumping by
//! 10⁶ between epochs); a smaller h makes crossings rarer but the spikes larger. Freeze the
//! activation pattern at w in the [`DatasetLoss`] (compute the 0/1 masks once at w and multiply
//! by them instead of applying the ReLU): the difference then measures the Hessian of the linear
//! region containing w, which is the almost-everywhere Hessian that double backpropagation
//! (PyHessian) computes. `sharpness-lab`'s bias experiment does this.
//!
//! # Estimators (all seeded, `rand_chacha`)
//! - [`Hessian::trace`]: Hutchinson, tr H = E(vᵀHv) for Rademacher v (vᵢ = ±1);
//!   Var vᵀHv = 2(‖H‖²_F − Σᵢ Hᵢᵢ²).
//! - [`Hessian::frobenius_squared`]: ‖H‖²_F = tr H² = E‖Hv‖² for v ~ N(0, I);
//!   Var ‖Hv‖² = 2‖H²‖²_F. (The universal-SAM paper's metric, 100 probes.)
//! - [`Hessian::top_eigenvalues`]: Lanczos with full re-orthogonalisation; the k largest Ritz
//!   values θ of the tridiagonal matrix with residual bounds |θ − λ| ≤ β_m |s_m| for some
//!   eigenvalue λ of H.
//! - [`Hessian::sam_sharpness`]: projected normalised gradient ascent on the ρ-ball; its first
//!   iterate is SAM's ε = ρ∇L/‖∇L‖, and the best value over the iterates is a lower bound of the
//!   maximum that tightens with more steps.
//!
//! Stochastic estimators return an [`Estimate`]: the mean of the per-probe samples and its
//! standard error s/√N.

use burn::module::{Flag, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{SharpnessError, check};
use crate::estimator::Evaluation;
use crate::params::{AutodiffContext, ParamSet, fresh_copy};

/// The loss of a fixed set of examples, in batches (see the module docs).
///
/// `batch_loss` must be deterministic: the same batch for the same index every time (the
/// finite differences compare gradients at nearby weights on identical data).
pub trait DatasetLoss<M> {
    /// The number of batches.
    fn num_batches(&self) -> usize;

    /// The **mean** loss of batch `batch` for `model` (a one-element tensor, tracked by autodiff)
    /// and the number of examples it averages over. The inputs must have the model's float dtype
    /// ([`float_dtype`]; `f64` with [`Precision::F64`]).
    fn batch_loss(&mut self, model: &M, batch: usize) -> (Tensor<1>, usize);
}

/// A [`DatasetLoss`] from a closure `(model, batch index) -> (mean loss, examples)`.
pub struct Batches<F> {
    count: usize,
    f: F,
}

impl<F> Batches<F> {
    /// `count` batches evaluated by `f`.
    pub fn new(count: usize, f: F) -> Self {
        Self { count, f }
    }
}

impl<M, F: FnMut(&M, usize) -> (Tensor<1>, usize)> DatasetLoss<M> for Batches<F> {
    fn num_batches(&self) -> usize {
        self.count
    }

    fn batch_loss(&mut self, model: &M, batch: usize) -> (Tensor<1>, usize) {
        (self.f)(model, batch)
    }
}

/// The float type the measures evaluate the model in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Cast every float parameter (and BatchNorm statistic) to `f64` (the default).
    F64,
    /// Keep the model's own dtype.
    Native,
}

/// How a [`Hessian`] evaluates the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeasureConfig {
    /// The central-difference step h along a unit direction.
    pub step: f64,
    /// The float type of the evaluation.
    pub precision: Precision,
    /// Evaluation mode (training flags off: BatchNorm running statistics, no dropout).
    pub eval_mode: bool,
}

impl MeasureConfig {
    /// The default step h = 10⁻⁵ (for `f64`; see the module docs).
    pub const DEFAULT_STEP: f64 = 1e-5;

    /// The same configuration with step `h`.
    pub fn with_step(self, step: f64) -> Self {
        Self { step, ..self }
    }

    /// The same configuration with `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }
}

impl Default for MeasureConfig {
    fn default() -> Self {
        Self {
            step: Self::DEFAULT_STEP,
            precision: Precision::F64,
            eval_mode: true,
        }
    }
}

/// A Monte-Carlo estimate: the mean of independent samples and its standard error.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// The sample mean.
    pub mean: f64,
    /// s/√N with the unbiased sample standard deviation s (NaN for a single sample).
    pub std_err: f64,
    /// The per-probe values.
    pub samples: Vec<f64>,
}

impl Estimate {
    /// The estimate from per-probe values (at least one).
    pub fn from_samples(samples: Vec<f64>) -> Self {
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let std_err = if samples.len() > 1 {
            let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (var / n).sqrt()
        } else {
            f64::NAN
        };
        Self {
            mean,
            std_err,
            samples,
        }
    }
}

/// The Lanczos settings of [`Hessian::top_eigenvalues`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lanczos {
    /// Lanczos steps m (Hessian-vector products), at most the dimension; m = d is exact up to the
    /// finite-difference error. The extreme eigenvalues converge first: 20–50 steps are typical.
    pub steps: usize,
    /// Seed of the Gaussian start vector.
    pub seed: u64,
}

/// The result of [`Hessian::top_eigenvalues`].
#[derive(Clone, Debug)]
pub struct Eigenpairs {
    /// The largest Ritz values, in decreasing order (fewer than asked for if the Krylov space
    /// became invariant first).
    pub values: Vec<f64>,
    /// Residual bounds ‖H y − θ y‖ = β_m |s_m|: some eigenvalue of H lies within each.
    pub residuals: Vec<f64>,
    /// The unit Ritz vectors y (layout of [`Hessian::weights`]).
    pub vectors: Vec<ParamSet>,
    /// The Lanczos steps taken.
    pub steps: usize,
}

/// The settings of [`Hessian::sam_sharpness`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamAscent {
    /// The radius ρ of the ball.
    pub rho: f64,
    /// Ascent iterates (1 = SAM's single step ε = ρ∇L/‖∇L‖).
    pub steps: usize,
    /// The ascent step, as a fraction of ρ: ε ← Π_ρ(ε + η ρ ∇L(w+ε)/‖∇L(w+ε)‖).
    pub step_size: f64,
    /// Seed of a random start direction, used only where ∇L(w) = 0.
    pub seed: u64,
}

impl SamAscent {
    /// SAM's one-step sharpness L(w + ρ∇L/‖∇L‖) − L(w).
    pub fn new(rho: f64) -> Self {
        Self {
            rho,
            steps: 1,
            step_size: 1.0,
            seed: 0,
        }
    }

    /// The same with `steps` ascent iterates.
    pub fn with_steps(self, steps: usize) -> Self {
        Self { steps, ..self }
    }

    /// The same with step size η (a fraction of ρ).
    pub fn with_step_size(self, step_size: f64) -> Self {
        Self { step_size, ..self }
    }
}

/// The result of [`Hessian::sam_sharpness`].
#[derive(Clone, Debug)]
pub struct SamSharpness {
    /// max over the iterates of L(w+εₜ) − L(w): a lower bound of max_{‖ε‖≤ρ} L(w+ε) − L(w).
    pub value: f64,
    /// L(w+εₜ) − L(w) for each iterate (the first is SAM's).
    pub values: Vec<f64>,
    /// L(w).
    pub loss: f64,
    /// The maximising ε among the iterates.
    pub epsilon: ParamSet,
}

/// The Hessian of a [`DatasetLoss`] at the weights of a model, accessed through
/// Hessian-vector products (see the module docs).
pub struct Hessian<M, D> {
    model: M,
    data: D,
    weights: ParamSet,
    step: f64,
    gradients: usize,
}

impl<M: Module, D: DatasetLoss<M>> Hessian<M, D> {
    /// The Hessian of `data`'s loss at the weights of `model` (which is copied, never modified;
    /// its trainable parameters are the coordinates). Errors if h is not a finite number > 0, if
    /// `data` has no batch, or if the model has no trainable parameter.
    pub fn new(model: &M, data: D, config: MeasureConfig) -> Result<Self, SharpnessError> {
        check(
            "step",
            config.step,
            config.step.is_finite() && config.step > 0.0,
            "a finite number > 0",
        )?;
        if data.num_batches() == 0 {
            return Err(SharpnessError::Unsupported(
                "sharpness measure: the dataset has no batch".into(),
            ));
        }
        // A copy with running statistics of its own (a clone would share them), its parameters
        // on the autodiff device with their `require_grad` and autodiff context.
        let mut prepare = Prepare {
            cast: (config.precision == Precision::F64).then_some(DType::F64),
            eval_mode: config.eval_mode,
        };
        let model = fresh_copy(model).map(&mut prepare);
        let weights = ParamSet::trainable_weights(&model);
        if weights.is_empty() {
            return Err(SharpnessError::Unsupported(
                "sharpness measure: the model has no trainable parameter".into(),
            ));
        }
        Ok(Self {
            model,
            data,
            weights,
            step: config.step,
            gradients: 0,
        })
    }

    /// The weights w (the layout every vector argument must have).
    pub fn weights(&self) -> &ParamSet {
        &self.weights
    }

    /// The number of coordinates d.
    pub fn dim(&self) -> usize {
        self.weights.num_elements()
    }

    /// The prepared copy of the model (evaluation mode, `f64` by default).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The data.
    pub fn data_mut(&mut self) -> &mut D {
        &mut self.data
    }

    /// Full gradients computed so far (each is one forward/backward pass over every batch), a
    /// measure of cost.
    pub fn gradient_evaluations(&self) -> usize {
        self.gradients
    }

    /// L(w).
    pub fn loss(&mut self) -> Result<f64, SharpnessError> {
        self.loss_at(None)
    }

    /// (L(w), ∇L(w)).
    pub fn gradient(&mut self) -> Result<Evaluation, SharpnessError> {
        self.gradient_at(None)
    }

    /// L(w + δ) (forward passes only).
    pub fn loss_at(&mut self, delta: Option<&ParamSet>) -> Result<f64, SharpnessError> {
        let model = self.shifted(delta);
        let mut total = 0.0;
        let mut examples = 0;
        for batch in 0..self.data.num_batches() {
            let (loss, n) = self.data.batch_loss(&model, batch);
            total += n as f64 * self.scalar(loss, batch)?;
            examples += n;
        }
        mean(total, examples)
    }

    /// (L(w + δ), ∇L(w + δ)); parameters without a gradient get zeros.
    pub fn gradient_at(&mut self, delta: Option<&ParamSet>) -> Result<Evaluation, SharpnessError> {
        let model = self.shifted(delta);
        let mut total = 0.0;
        let mut examples = 0;
        let mut grad = self.weights.zeros_like();
        for batch in 0..self.data.num_batches() {
            let (loss, n) = self.data.batch_loss(&model, batch);
            total += n as f64 * self.scalar(loss.clone(), batch)?;
            examples += n;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let batch_grad = ParamSet::from_gradients(&model, &grads);
            let aligned = self.weights.map(|e| match batch_grad.get(e.id) {
                Some(g) => g.value.clone(),
                None => e.value.zeros_like(),
            });
            grad = grad.add_scaled(n as f64, &aligned);
        }
        self.gradients += 1;
        let loss = mean(total, examples)?;
        let grad = grad.scale(1.0 / examples as f64);
        if !grad.all_finite() {
            return Err(SharpnessError::NonFinite {
                step: self.gradients as u64,
                pass: 0,
                what: "gradient",
            });
        }
        Ok(Evaluation { loss, grad })
    }

    /// H v by central differences of gradients along v/‖v‖ (two gradients).
    pub fn hvp(&mut self, v: &ParamSet) -> Result<ParamSet, SharpnessError> {
        let v = self.conform(v);
        let norm = v.norm();
        if norm == 0.0 {
            return Ok(v);
        }
        let shift = v.scale(self.step / norm);
        let plus = self.gradient_at(Some(&shift))?.grad;
        let minus = self.gradient_at(Some(&shift.scale(-1.0)))?.grad;
        Ok(plus.sub(&minus).scale(norm / (2.0 * self.step)))
    }

    /// The dense Hessian (d products with the unit vectors, symmetrised), row-major d × d. Only
    /// for small models.
    pub fn dense(&mut self) -> Result<Vec<Vec<f64>>, SharpnessError> {
        let d = self.dim();
        let mut columns = Vec::with_capacity(d);
        for i in 0..d {
            let mut unit = vec![0.0; d];
            unit[i] = 1.0;
            let e = self.weights.with_values(&unit);
            columns.push(self.hvp(&e)?.to_vec());
        }
        Ok((0..d)
            .map(|i| {
                (0..d)
                    .map(|j| 0.5 * (columns[j][i] + columns[i][j]))
                    .collect()
            })
            .collect())
    }

    /// Hutchinson's estimate of tr H with `probes` Rademacher vectors:
    /// tr H = E(vᵀHv), Var vᵀHv = 2(‖H‖²_F − Σᵢ Hᵢᵢ²). Cost: 2 × `probes` gradients.
    pub fn trace(&mut self, probes: usize, seed: u64) -> Result<Estimate, SharpnessError> {
        check_probes(probes)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut samples = Vec::with_capacity(probes);
        for _ in 0..probes {
            let v = self.rademacher(&mut rng);
            let hv = self.hvp(&v)?;
            samples.push(v.dot(&hv));
        }
        Ok(Estimate::from_samples(samples))
    }

    /// The squared Frobenius norm ‖H‖²_F = Σᵢⱼ Hᵢⱼ² = tr H² = E‖Hv‖² with `probes` Gaussian vectors
    /// v ~ N(0, I); Var ‖Hv‖² = 2‖H²‖²_F. Cost: 2 × `probes` gradients.
    pub fn frobenius_squared(
        &mut self,
        probes: usize,
        seed: u64,
    ) -> Result<Estimate, SharpnessError> {
        check_probes(probes)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut samples = Vec::with_capacity(probes);
        for _ in 0..probes {
            let v = self.gaussian(&mut rng);
            samples.push(self.hvp(&v)?.squared_norm());
        }
        Ok(Estimate::from_samples(samples))
    }

    /// The k largest (algebraic) eigenvalues by Lanczos with full re-orthogonalisation, from a
    /// Gaussian start vector q₁: q_{j+1} β_j = H q_j − α_j q_j − β_{j−1} q_{j−1}, α_j = q_jᵀHq_j;
    /// the Ritz values are the eigenvalues of the tridiagonal T = tridiag(β, α, β). Cost: m
    /// Hessian-vector products (2m gradients) and O(m²) dot products.
    pub fn top_eigenvalues(
        &mut self,
        k: usize,
        lanczos: Lanczos,
    ) -> Result<Eigenpairs, SharpnessError> {
        let steps = lanczos.steps.min(self.dim());
        if k == 0 || k > steps {
            return Err(SharpnessError::InvalidHyperparameter {
                name: "k",
                value: k.to_string(),
                expected: "between 1 and the number of Lanczos steps (at most the dimension)",
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(lanczos.seed);
        let start = self.gaussian(&mut rng);
        let mut basis = vec![start.scale(1.0 / start.norm())];
        let mut alphas = Vec::new();
        let mut betas: Vec<f64> = Vec::new();
        let mut scale = 0.0_f64;
        let last_beta = loop {
            let j = alphas.len();
            let mut z = self.hvp(&basis[j])?;
            let alpha = basis[j].dot(&z);
            alphas.push(alpha);
            z = z.add_scaled(-alpha, &basis[j]);
            if j > 0 {
                z = z.add_scaled(-betas[j - 1], &basis[j - 1]);
            }
            // Full re-orthogonalisation, twice ("twice is enough").
            for _ in 0..2 {
                for q in &basis {
                    let c = q.dot(&z);
                    z = z.add_scaled(-c, q);
                }
            }
            let beta = z.norm();
            scale = scale.max(alpha.abs()).max(beta);
            if alphas.len() == steps || beta <= 1e-9 * scale {
                break beta;
            }
            betas.push(beta);
            basis.push(z.scale(1.0 / beta));
        };
        let m = alphas.len();
        let mut t = vec![vec![0.0; m]; m];
        for i in 0..m {
            t[i][i] = alphas[i];
            if i + 1 < m {
                t[i][i + 1] = betas[i];
                t[i + 1][i] = betas[i];
            }
        }
        let (values, vectors) = symmetric_eigen(t);
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        let mut out = Eigenpairs {
            values: Vec::new(),
            residuals: Vec::new(),
            vectors: Vec::new(),
            steps: m,
        };
        for &i in order.iter().take(k) {
            out.values.push(values[i]);
            out.residuals.push(last_beta * vectors[m - 1][i].abs());
            let mut y = basis[0].scale(vectors[0][i]);
            for (j, q) in basis.iter().enumerate().skip(1) {
                y = y.add_scaled(vectors[j][i], q);
            }
            out.vectors.push(y);
        }
        Ok(out)
    }

    /// The SAM sharpness max_{‖ε‖≤ρ} L(w+ε) − L(w), estimated from below by projected normalised
    /// gradient ascent: ε₁ = ρ∇L(w)/‖∇L(w)‖ (SAM's perturbation; a seeded random direction where
    /// ∇L(w) = 0), ε_{t+1} = Π_ρ(ε_t + ηρ ∇L(w+ε_t)/‖∇L(w+ε_t)‖) with Π_ρ the projection on the
    /// ball; the value is the best iterate. Cost: `steps` gradients and one loss evaluation.
    pub fn sam_sharpness(&mut self, ascent: &SamAscent) -> Result<SamSharpness, SharpnessError> {
        check(
            "rho",
            ascent.rho,
            ascent.rho.is_finite() && ascent.rho > 0.0,
            "a finite number > 0",
        )?;
        check(
            "step_size",
            ascent.step_size,
            ascent.step_size.is_finite() && ascent.step_size > 0.0,
            "a finite number > 0",
        )?;
        if ascent.steps == 0 {
            return Err(SharpnessError::InvalidHyperparameter {
                name: "steps",
                value: "0".into(),
                expected: "at least 1",
            });
        }
        let rho = ascent.rho;
        let at_weights = self.gradient_at(None)?;
        let start = if at_weights.grad.norm() > 0.0 {
            at_weights.grad.clone()
        } else {
            self.gaussian(&mut ChaCha8Rng::seed_from_u64(ascent.seed))
        };
        let mut epsilon = start.scale(rho / start.norm());
        let mut values = Vec::with_capacity(ascent.steps);
        let mut best = (f64::NEG_INFINITY, epsilon.clone());
        for t in 0..ascent.steps {
            let last = t + 1 == ascent.steps;
            let (loss, grad) = if last {
                (self.loss_at(Some(&epsilon))?, None)
            } else {
                let e = self.gradient_at(Some(&epsilon))?;
                (e.loss, Some(e.grad))
            };
            let value = loss - at_weights.loss;
            values.push(value);
            if value > best.0 {
                best = (value, epsilon.clone());
            }
            let Some(grad) = grad else { break };
            let norm = grad.norm();
            if norm == 0.0 {
                break;
            }
            let moved = epsilon.add_scaled(ascent.step_size * rho / norm, &grad);
            let length = moved.norm();
            epsilon = if length > rho {
                moved.scale(rho / length)
            } else {
                moved
            };
        }
        Ok(SamSharpness {
            value: best.0,
            values,
            loss: at_weights.loss,
            epsilon: best.1,
        })
    }

    /// A Rademacher vector (±1 coordinates) with the layout of the weights.
    pub fn rademacher(&self, rng: &mut ChaCha8Rng) -> ParamSet {
        let values: Vec<f64> = (0..self.dim())
            .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect();
        self.weights.with_values(&values)
    }

    /// A N(0, I) vector with the layout of the weights.
    pub fn gaussian(&self, rng: &mut ChaCha8Rng) -> ParamSet {
        let values: Vec<f64> = (0..self.dim())
            .map(|_| StandardNormal.sample(rng))
            .collect();
        self.weights.with_values(&values)
    }

    fn shifted(&self, delta: Option<&ParamSet>) -> M {
        match delta {
            Some(delta) => self.conform(delta).add_to_module(self.model.clone()),
            None => self.model.clone(),
        }
    }

    /// `v` cast to the weights' dtypes (panics if the layouts differ).
    fn conform(&self, v: &ParamSet) -> ParamSet {
        self.weights.zip_map(v, |w, x| x.cast(w.dtype()))
    }

    fn scalar(&self, loss: Tensor<1>, batch: usize) -> Result<f64, SharpnessError> {
        let value = loss.inner().sum().into_scalar::<f64>();
        if value.is_finite() {
            Ok(value)
        } else {
            Err(SharpnessError::NonFinite {
                step: self.gradients as u64,
                pass: batch,
                what: "loss",
            })
        }
    }
}

fn mean(total: f64, examples: usize) -> Result<f64, SharpnessError> {
    if examples == 0 {
        return Err(SharpnessError::Unsupported(
            "sharpness measure: the batches hold no example".into(),
        ));
    }
    Ok(total / examples as f64)
}

fn check_probes(probes: usize) -> Result<(), SharpnessError> {
    if probes == 0 {
        return Err(SharpnessError::InvalidHyperparameter {
            name: "probes",
            value: "0".into(),
            expected: "at least 1",
        });
    }
    Ok(())
}

/// The float dtype of the first trainable parameter of `model` (the dtype its inputs need), if
/// it has one.
pub fn float_dtype<M: Module>(model: &M) -> Option<DType> {
    struct First(Option<DType>);
    impl ModuleVisitor for First {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.0.is_none() {
                self.0 = Some(param.val().dtype());
            }
        }
    }
    let mut first = First(None);
    model.visit(&mut first);
    first.0
}

/// Casts float parameters (keeping ids and `require_grad`) and switches training flags off.
struct Prepare {
    cast: Option<DType>,
    eval_mode: bool,
}

impl ModuleMapper for Prepare {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(dtype) = self.cast else { return param };
        let (id, value, mapper) = param.consume();
        let cast = value.clone().inner().cast(dtype);
        let cast = match value.is_require_grad() {
            true => AutodiffContext::of(&value).apply(cast, id),
            false => cast.autodiff(),
        };
        Param::from_mapped_value(id, cast, mapper)
    }

    fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
        if self.eval_mode {
            flag.with_value(false)
        } else {
            flag
        }
    }
}

/// Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations: the eigenvalues
/// and the eigenvectors as columns (`vectors[row][k]`).
fn symmetric_eigen(mut a: Vec<Vec<f64>>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j].powi(2))
            .sum();
        let total: f64 = a.iter().flatten().map(|x| x * x).sum();
        if off <= 1e-30 * total || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q] == 0.0 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (upper, lower) = a.split_at_mut(q); // rows p < q
                for (apk, aqk) in upper[p].iter_mut().zip(lower[0].iter_mut()) {
                    let (x, y) = (*apk, *aqk);
                    *apk = c * x - s * y;
                    *aqk = s * x + c * y;
                }
                for row in v.iter_mut() {
                    let (vkp, vkq) = (row[p], row[q]);
                    row[p] = c * vkp - s * vkq;
                    row[q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i][i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalises_a_tridiagonal_matrix() {
        let t = vec![
            vec![2.0, 1.0, 0.0],
            vec![1.0, 2.0, 1.0],
            vec![0.0, 1.0, 2.0],
        ];
        let (mut values, vectors) = symmetric_eigen(t.clone());
        // A v = λ v for every column.
        for k in 0..3 {
            for i in 0..3 {
                let av: f64 = (0..3).map(|j| t[i][j] * vectors[j][k]).sum();
                assert!((av - values[k] * vectors[i][k]).abs() < 1e-12);
            }
        }
        values.sort_by(f64::total_cmp);
        let expected = [2.0 - 2f64.sqrt(), 2.0, 2.0 + 2f64.sqrt()];
        for (v, e) in values.iter().zip(expected) {
            assert!((v - e).abs() < 1e-12, "{v} vs {e}");
        }
    }

    #[test]
    fn estimate_has_the_standard_error_of_the_mean() {
        let e = Estimate::from_samples(vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(e.mean, 2.5);
        assert!((e.std_err - (5.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-15);
        assert!(Estimate::from_samples(vec![1.0]).std_err.is_nan());
    }
}
