//! The optimizer wrapper, written once for every method: [`SharpnessAware`].

use std::cell::OnceCell;
use std::sync::Arc;

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{
    AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig, StateSink,
    decay::WeightDecayConfig, momentum::MomentumConfig,
};
use burn::tensor::{Bytes, Device, Tensor};
use burn_pack::Scalar;

use crate::error::{SharpnessError, at_least_one, check, check_non_negative};
use crate::estimator::{Evaluation, GradientEstimator, Oracle, StepContext};
use crate::objective::{GradientObjective, Losses, Objective, Pass};
use crate::params::{ParamSet, fresh_copy};
use crate::state::StateRecord;

/// How the perturbation radius ρ evolves.
#[derive(Clone)]
pub enum RhoSchedule {
    /// A constant ρ.
    Constant(f64),
    /// ρ proportional to the learning rate, as GSAM (`docs/algorithms.md` §6):
    /// ρ_t = ρ_min + (ρ_max − ρ_min)(lr_t − lr_min)/(lr_max − lr_min), with lr_t clamped to
    /// [lr_min, lr_max] so that a warm-up from 0 never gives a negative ρ (big_vision #80).
    ProportionalToLr {
        /// ρ at lr_min.
        rho_min: f64,
        /// ρ at lr_max.
        rho_max: f64,
        /// The smallest learning rate of the schedule.
        lr_min: f64,
        /// The largest learning rate of the schedule.
        lr_max: f64,
    },
    /// A user function of (step, lr); a negative or non-finite value is an error at that step.
    Custom(Arc<dyn Fn(u64, f64) -> f64 + Send + Sync>),
}

impl std::fmt::Debug for RhoSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Constant(rho) => write!(f, "Constant({rho})"),
            Self::ProportionalToLr {
                rho_min,
                rho_max,
                lr_min,
                lr_max,
            } => {
                write!(
                    f,
                    "ProportionalToLr {{ rho: {rho_min}..{rho_max}, lr: {lr_min}..{lr_max} }}"
                )
            }
            Self::Custom(_) => write!(f, "Custom(..)"),
        }
    }
}

impl RhoSchedule {
    /// A constant ρ ≥ 0.
    pub fn constant(rho: f64) -> Result<Self, SharpnessError> {
        check_non_negative("rho", rho)?;
        Ok(Self::Constant(rho))
    }

    /// ρ proportional to the learning rate (see [`RhoSchedule::ProportionalToLr`]).
    pub fn proportional_to_lr(
        rho_min: f64,
        rho_max: f64,
        lr_min: f64,
        lr_max: f64,
    ) -> Result<Self, SharpnessError> {
        check_non_negative("rho_min", rho_min)?;
        check_non_negative("rho_max", rho_max)?;
        check_non_negative("lr_min", lr_min)?;
        check(
            "lr_max",
            lr_max,
            lr_max.is_finite() && lr_max > lr_min,
            "a finite number > lr_min",
        )?;
        Ok(Self::ProportionalToLr {
            rho_min,
            rho_max,
            lr_min,
            lr_max,
        })
    }

    /// A user-supplied ρ(step, lr).
    pub fn custom(f: impl Fn(u64, f64) -> f64 + Send + Sync + 'static) -> Self {
        Self::Custom(Arc::new(f))
    }

    /// ρ at this step and learning rate.
    pub fn rho(&self, step: u64, lr: f64) -> Result<f64, SharpnessError> {
        let rho = match self {
            Self::Constant(rho) => *rho,
            Self::ProportionalToLr {
                rho_min,
                rho_max,
                lr_min,
                lr_max,
            } => {
                let t = (lr.clamp(*lr_min, *lr_max) - lr_min) / (lr_max - lr_min);
                rho_min + (rho_max - rho_min) * t
            }
            Self::Custom(f) => f(step, lr),
        };
        check_non_negative("rho (from the schedule)", rho)?;
        Ok(rho)
    }
}

/// Base optimizers with PyTorch's conventions (so published hyperparameters mean the same here).
pub mod base {
    use super::*;

    /// SGD as `torch.optim.SGD`: momentum with dampening 0 (Burn's default is 0.1), L2 weight
    /// decay added to the gradient at the current weights, optional Nesterov.
    pub fn sgd(
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
    ) -> Result<ModuleOptimizer, SharpnessError> {
        check(
            "momentum",
            momentum,
            (0.0..1.0).contains(&momentum),
            "a number in [0, 1)",
        )?;
        check_non_negative("weight_decay", weight_decay)?;
        let momentum = (momentum > 0.0).then(|| {
            MomentumConfig::new()
                .with_momentum(momentum)
                .with_dampening(0.0)
                .with_nesterov(nesterov)
        });
        let weight_decay =
            (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32));
        Ok(SgdConfig::new()
            .with_momentum(momentum)
            .with_weight_decay(weight_decay)
            .init())
    }

    /// Adam as `torch.optim.Adam` (L2 weight decay in the gradient).
    pub fn adam(
        beta1: f64,
        beta2: f64,
        epsilon: f64,
        weight_decay: f64,
    ) -> Result<ModuleOptimizer, SharpnessError> {
        check_betas(beta1, beta2, epsilon)?;
        check_non_negative("weight_decay", weight_decay)?;
        let weight_decay =
            (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32));
        Ok(AdamConfig::new()
            .with_beta_1(beta1 as f32)
            .with_beta_2(beta2 as f32)
            .with_epsilon(epsilon as f32)
            .with_weight_decay(weight_decay)
            .init())
    }

    /// AdamW as `torch.optim.AdamW` (decoupled weight decay).
    pub fn adamw(
        beta1: f64,
        beta2: f64,
        epsilon: f64,
        weight_decay: f64,
    ) -> Result<ModuleOptimizer, SharpnessError> {
        check_betas(beta1, beta2, epsilon)?;
        check_non_negative("weight_decay", weight_decay)?;
        Ok(AdamWConfig::new()
            .with_beta_1(beta1 as f32)
            .with_beta_2(beta2 as f32)
            .with_epsilon(epsilon as f32)
            .with_weight_decay(weight_decay as f32)
            .init())
    }

    fn check_betas(beta1: f64, beta2: f64, epsilon: f64) -> Result<(), SharpnessError> {
        check(
            "beta1",
            beta1,
            (0.0..1.0).contains(&beta1),
            "a number in [0, 1)",
        )?;
        check(
            "beta2",
            beta2,
            (0.0..1.0).contains(&beta2),
            "a number in [0, 1)",
        )?;
        check(
            "epsilon",
            epsilon,
            epsilon.is_finite() && epsilon > 0.0,
            "a finite number > 0",
        )
    }
}

/// What a sharpness-aware gradient computation produced: the gradient to apply at w, and the
/// model to apply it to.
#[derive(Debug)]
pub struct Estimate<M, O = ()> {
    /// The estimated gradient G (of the parameters that have one).
    pub grads: GradientsParams,
    /// The caller's weights with the BatchNorm running statistics of pass 0: the model a base
    /// optimizer steps with `grads`.
    pub model: M,
    /// The output of pass 0 of a [`GradientObjective`] (`()` for a loss [`Objective`]).
    pub output: O,
    /// The batch loss at the unperturbed weights (pass 0).
    pub loss: f64,
    /// ‖g₀‖, the global gradient norm at the unperturbed weights.
    pub grad_norm: f64,
    /// The ρ used.
    pub rho: f64,
    /// Forward/backward passes on the batch (1 for plain steps, 2 for the two-pass family, m+1
    /// for the universal class; a pass over k micro-batches counts once).
    pub passes: usize,
}

/// What one step did.
#[derive(Clone, Debug)]
pub struct StepOutput<M, O = ()> {
    /// The model after the base optimizer's step (BatchNorm statistics from pass 0 only).
    pub model: M,
    /// The output of pass 0 of a [`GradientObjective`] (`()` for a loss [`Objective`]).
    pub output: O,
    /// The batch loss at the unperturbed weights (pass 0).
    pub loss: f64,
    /// ‖g₀‖, the global gradient norm at the unperturbed weights.
    pub grad_norm: f64,
    /// The ρ used.
    pub rho: f64,
    /// Forward/backward passes run (1 for plain steps, 2 for the two-pass family, m+1 for the
    /// universal class).
    pub passes: usize,
}

/// The sharpness-aware gradient of each batch: an estimator with its ρ schedule and step
/// counter, without a base optimizer. [`SharpnessAware`] is this plus a base optimizer; use this
/// alone where something else owns the optimizer (Burn's `Learner`: see the `train` feature).
///
/// One estimate: pass 0 at w on a fresh copy of the model (its BatchNorm running statistics are
/// the only ones kept); the estimator asks an [`Oracle`] for (L, ∇L) at perturbed weights on the
/// same batch, each on another fresh copy; the result is the gradient to apply **at w**. The
/// caller's model is never modified, so every perturbation is undone exactly (bitwise),
/// including for parameters that get no gradient in a later pass (`docs/peers.md`, B3, B8,
/// B10). If any loss or gradient is NaN/∞ the estimate returns [`SharpnessError::NonFinite`]
/// naming the step and pass, and the estimator's state is left as it was.
#[derive(Clone)]
pub struct SharpnessGradient {
    estimator: Box<dyn GradientEstimator>,
    rho: RhoSchedule,
    step: u64,
}

impl SharpnessGradient {
    /// An estimator with a ρ schedule.
    pub fn new(estimator: impl GradientEstimator + 'static, rho: RhoSchedule) -> Self {
        Self::from_boxed(Box::new(estimator), rho)
    }

    /// As [`SharpnessGradient::new`] with a boxed estimator.
    pub fn from_boxed(estimator: Box<dyn GradientEstimator>, rho: RhoSchedule) -> Self {
        Self {
            estimator,
            rho,
            step: 0,
        }
    }

    /// The estimator's name.
    pub fn name(&self) -> String {
        self.estimator.name()
    }

    /// The number of estimates made so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The gradient of a sharpness-aware step on the batch that `objective` evaluates. `lr` is
    /// the step's learning rate (a number, or Burn's per-group [`ModuleLearningRate`]); ρ
    /// schedules read its base value. The step counter advances; on an error nothing changes.
    pub fn estimate<M: Module>(
        &mut self,
        model: &M,
        lr: impl Into<ModuleLearningRate>,
        objective: &mut impl Objective<M>,
    ) -> Result<Estimate<M>, SharpnessError> {
        self.estimate_with(model, lr, &mut Losses(objective))
    }

    /// As [`SharpnessGradient::estimate`] for an objective that returns gradients and an output
    /// (as Burn's `TrainStep::step` does); pass 0's output is in [`Estimate::output`].
    pub fn estimate_with<M: Module, O: GradientObjective<M>>(
        &mut self,
        model: &M,
        lr: impl Into<ModuleLearningRate>,
        objective: &mut O,
    ) -> Result<Estimate<M, O::Output>, SharpnessError> {
        self.transaction(lr, |this, ctx| {
            Ok(this
                .estimate_once(model, fresh_copy(model), objective, ctx)?
                .into_estimate())
        })
    }

    /// As [`SharpnessGradient::estimate_with`], with pass 0 run on `model` itself rather than a
    /// copy: its BatchNorm running statistics (shared by every plain clone) are updated by pass 0
    /// as in Burn's own training loop, even if a later pass fails.
    #[cfg(feature = "train")]
    pub(crate) fn estimate_shared<M: Module, O: GradientObjective<M>>(
        &mut self,
        model: &M,
        lr: impl Into<ModuleLearningRate>,
        objective: &mut O,
    ) -> Result<Estimate<M, O::Output>, SharpnessError> {
        self.transaction(lr, |this, ctx| {
            Ok(this
                .estimate_once(model, model.clone(), objective, ctx)?
                .into_estimate())
        })
    }

    /// **m-sharpness** (Foret et al. 2021, §4; the `num_batch_splits` of the tf.keras port): the
    /// batch given as k chunks, each perturbed by its own ε from its own gradient, and the k
    /// gradients averaged, G = (1/k) Σᵢ ∇Lᵢ(w + εᵢ(gᵢ)). k = 1 is the plain estimate. This is
    /// what data-parallel SAM computes when each device perturbs with its own shard's gradient.
    ///
    /// Chunk by chunk, in order: pass 0 of each chunk runs on the model left by the previous
    /// chunk's, so the BatchNorm running statistics see every chunk once (as in gradient
    /// accumulation); a stateful geometry updates its state once per chunk. The loss and ‖g₀‖
    /// reported are those of the mean pass-0 gradient (the whole batch's, for equal chunks).
    pub fn estimate_chunks<M: Module, O: Objective<M>>(
        &mut self,
        model: &M,
        lr: impl Into<ModuleLearningRate>,
        chunks: &mut [O],
    ) -> Result<Estimate<M>, SharpnessError> {
        at_least_one("chunks", chunks.len())?;
        self.transaction(lr, |this, ctx| {
            let mut working = fresh_copy(model);
            let (mut sum, mut at_weights, mut loss, mut passes) = (None, None, 0.0, 0);
            for chunk in chunks.iter_mut() {
                let once = this.estimate_once(model, working, &mut Losses(chunk), ctx)?;
                sum = Some(match sum {
                    None => once.grad,
                    Some(sum) => once.grad.add(&sum),
                });
                at_weights = Some(match at_weights {
                    None => once.at_weights,
                    Some(g) => once.at_weights.add(&g),
                });
                (working, loss, passes) = (once.model, loss + once.loss, passes + once.passes);
            }
            let k = chunks.len() as f64;
            let scale = |set: Option<ParamSet>| set.expect("at least one chunk").scale(1.0 / k);
            Ok(Estimate {
                grads: scale(sum).to_gradients(),
                model: working,
                output: (),
                loss: loss / k,
                grad_norm: scale(at_weights).norm(),
                rho: ctx.rho,
                passes,
            })
        })
    }

    /// Runs `body` with this step's context; on success the step counter advances, on an error
    /// the estimator's state is restored.
    fn transaction<T>(
        &mut self,
        lr: impl Into<ModuleLearningRate>,
        body: impl FnOnce(&mut Self, &StepContext) -> Result<T, SharpnessError>,
    ) -> Result<T, SharpnessError> {
        let lr = lr.into().base();
        let ctx = StepContext {
            step: self.step,
            rho: self.rho.rho(self.step, lr)?,
            lr,
        };
        let backup = self.estimator.clone_box();
        match body(self, &ctx) {
            Ok(result) => {
                self.step += 1;
                Ok(result)
            }
            Err(error) => {
                self.estimator = backup;
                Err(error)
            }
        }
    }

    /// Pass 0 on `working`, then the estimator with an oracle around `model`.
    fn estimate_once<M: Module, O: GradientObjective<M>>(
        &mut self,
        model: &M,
        working: M,
        objective: &mut O,
        ctx: &StepContext,
    ) -> Result<Once<M, O::Output>, SharpnessError> {
        let (at_weights, grad_squared_norm, output) = evaluate(&working, objective, ctx.step, 0)?;
        if at_weights.grad.is_empty() {
            return Err(SharpnessError::NoGradient { step: ctx.step });
        }
        let mut oracle = ModelOracle::new(model, &at_weights.grad, objective, ctx.step);
        self.estimator.before_estimate(&mut oracle, ctx)?;
        let grad = self.estimator.estimate(&at_weights, &mut oracle, ctx)?;
        if !grad.all_finite() {
            return Err(SharpnessError::NonFinite {
                step: ctx.step,
                pass: oracle.passes,
                what: "combined gradient",
            });
        }
        Ok(Once {
            passes: oracle.passes,
            grad,
            model: working,
            output,
            loss: at_weights.loss,
            grad_norm: grad_squared_norm.sqrt(),
            rho: ctx.rho,
            at_weights: at_weights.grad,
        })
    }

    /// The step counter (scalar `step`) and the estimator's state (under `estimator`).
    pub fn state_record(&self) -> StateRecord {
        let mut sink = StateSink::default();
        self.estimator.save_state("estimator", &mut sink);
        let mut record = StateRecord::from_sink(sink);
        record
            .scalars
            .insert("step".into(), Scalar::from(self.step));
        record
    }

    /// Restores a state written by [`SharpnessGradient::state_record`] (tensors on `device`).
    /// Nothing changes unless the whole state loads.
    pub fn load_state_record(
        &mut self,
        record: StateRecord,
        device: &Device,
    ) -> Result<(), SharpnessError> {
        let step = record.integer("step")?;
        let mut estimator = self.estimator.clone_box();
        estimator.load_state("estimator", &mut record.into_source()?, device)?;
        (self.estimator, self.step) = (estimator, step);
        Ok(())
    }
}

/// One estimate on one batch (or chunk), before it is handed out.
struct Once<M, O> {
    grad: ParamSet,
    at_weights: ParamSet,
    model: M,
    output: O,
    loss: f64,
    grad_norm: f64,
    rho: f64,
    passes: usize,
}

impl<M, O> Once<M, O> {
    fn into_estimate(self) -> Estimate<M, O> {
        Estimate {
            grads: self.grad.to_gradients(),
            model: self.model,
            output: self.output,
            loss: self.loss,
            grad_norm: self.grad_norm,
            rho: self.rho,
            passes: self.passes,
        }
    }
}

/// A sharpness-aware optimizer: a [`SharpnessGradient`] (any [`GradientEstimator`] with a ρ
/// schedule) around any Burn optimizer, which steps **from w** with the estimated gradient.
/// See [`SharpnessGradient`] for what a step guarantees; on an error the base optimizer's state
/// is untouched too.
pub struct SharpnessAware {
    gradient: SharpnessGradient,
    base: ModuleOptimizer,
}

impl SharpnessAware {
    /// Wraps a base optimizer (see [`base`]) with an estimator and a ρ schedule.
    pub fn new(
        estimator: impl GradientEstimator + 'static,
        base: ModuleOptimizer,
        rho: RhoSchedule,
    ) -> Self {
        Self::from_boxed(Box::new(estimator), base, rho)
    }

    /// As [`SharpnessAware::new`] with a boxed estimator.
    pub fn from_boxed(
        estimator: Box<dyn GradientEstimator>,
        base: ModuleOptimizer,
        rho: RhoSchedule,
    ) -> Self {
        Self {
            gradient: SharpnessGradient::from_boxed(estimator, rho),
            base,
        }
    }

    /// The estimator's name.
    pub fn name(&self) -> String {
        self.gradient.name()
    }

    /// The number of steps taken so far.
    pub fn steps(&self) -> u64 {
        self.gradient.steps()
    }

    /// One sharpness-aware step on the batch that `objective` evaluates:
    /// [`SharpnessAware::estimate`], then the base optimizer's step from w with the estimated
    /// gradient. `lr` is a number or Burn's per-group [`ModuleLearningRate`].
    pub fn step<M: Module>(
        &mut self,
        model: &M,
        lr: impl Into<ModuleLearningRate>,
        objective: &mut impl Objective<M>,
    ) -> Result<StepOutput<M>, SharpnessError> {
        self.step_with(model, lr, &mut Losses(objective))
    }

    /// As [`SharpnessAware::step`] for an objective that returns gradients and an output
    /// ([`GradientObjective`], e.g. [`crate::objective::Accumulate`]).
    pub fn step_with<M: Module, O: GradientObjective<M>>(
        &mut self,
        model: &M,
        lr: impl Into<ModuleLearningRate>,
        objective: &mut O,
    ) -> Result<StepOutput<M, O::Output>, SharpnessError> {
        let lr = lr.into();
        let estimate = self.gradient.estimate_with(model, lr.clone(), objective)?;
        Ok(self.apply(lr, estimate))
    }

    /// One m-sharpness step ([`SharpnessGradient::estimate_chunks`]), then the base step.
    pub fn step_chunks<M: Module, O: Objective<M>>(
        &mut self,
        model: &M,
        lr: impl Into<ModuleLearningRate>,
        chunks: &mut [O],
    ) -> Result<StepOutput<M>, SharpnessError> {
        let lr = lr.into();
        let estimate = self.gradient.estimate_chunks(model, lr.clone(), chunks)?;
        Ok(self.apply(lr, estimate))
    }

    fn apply<M: Module, O>(
        &mut self,
        lr: ModuleLearningRate,
        e: Estimate<M, O>,
    ) -> StepOutput<M, O> {
        StepOutput {
            model: self.base.step(lr, e.model, e.grads),
            output: e.output,
            loss: e.loss,
            grad_norm: e.grad_norm,
            rho: e.rho,
            passes: e.passes,
        }
    }

    /// The gradient a sharpness-aware step applies, without stepping the base optimizer: for a
    /// caller that owns the optimizer, which then steps [`Estimate::model`] with
    /// [`Estimate::grads`] (or use a [`SharpnessGradient`] alone). The step counter advances,
    /// and the estimator's state moves as in [`SharpnessAware::step`]; on an error it is left as
    /// it was before the call.
    pub fn estimate<M: Module>(
        &mut self,
        model: &M,
        lr: impl Into<ModuleLearningRate>,
        objective: &mut impl Objective<M>,
    ) -> Result<Estimate<M>, SharpnessError> {
        self.gradient.estimate(model, lr, objective)
    }

    /// The complete optimizer state as one record: the step counter (scalar `step`), the
    /// estimator's state (under `estimator`) and the base optimizer's own burnpack record (under
    /// `base`). A resumed run continues bit-identically.
    pub fn state_record(&self) -> Result<StateRecord, SharpnessError> {
        let mut record = self.gradient.state_record();
        let base = self
            .base
            .into_bytes()
            .map_err(|e| SharpnessError::State(format!("base optimizer: {e}")))?;
        record.nest("base", StateRecord::from_bytes(base.to_vec())?);
        Ok(record)
    }

    /// Restores a state written by [`SharpnessAware::state_record`] (tensors are placed on
    /// `device`). Nothing changes unless the whole state loads.
    pub fn load_state_record(
        &mut self,
        mut record: StateRecord,
        device: &Device,
    ) -> Result<(), SharpnessError> {
        let base = record.take("base");
        if base.is_empty() {
            return Err(SharpnessError::State(
                "missing the base optimizer's state".into(),
            ));
        }
        let base = self
            .base
            .clone()
            .from_bytes(Bytes::from_bytes_vec(base.into_bytes()?))
            .map_err(|e| SharpnessError::State(format!("base optimizer: {e}")))?;
        let mut gradient = self.gradient.clone();
        gradient.load_state_record(record, device)?;
        (self.base, self.gradient) = (base, gradient);
        Ok(())
    }

    /// [`SharpnessAware::state_record`] as burnpack bytes.
    pub fn save_state(&self) -> Result<Vec<u8>, SharpnessError> {
        self.state_record()?.into_bytes()
    }

    /// Restores a state written by [`SharpnessAware::save_state`].
    pub fn load_state(&mut self, bytes: &[u8], device: &Device) -> Result<(), SharpnessError> {
        self.load_state_record(StateRecord::from_bytes(bytes.to_vec())?, device)
    }
}

/// Pass 0 of `objective` on `model`, checked for NaN/∞: the evaluation, ‖g‖² and the output.
fn evaluate<M: Module, O: GradientObjective<M>>(
    model: &M,
    objective: &mut O,
    step: u64,
    pass: usize,
) -> Result<(Evaluation, f64, O::Output), SharpnessError> {
    let Pass {
        loss,
        grads,
        output,
    } = objective.pass(model);
    let (evaluation, squared_norm) = checked(model, loss, &grads, step, pass)?;
    Ok((evaluation, squared_norm, output))
}

/// The loss value and the gradient set of one pass, checked for NaN/∞.
fn checked<M: Module>(
    model: &M,
    loss: Tensor<1>,
    grads: &GradientsParams,
    step: u64,
    pass: usize,
) -> Result<(Evaluation, f64), SharpnessError> {
    let value = loss.inner().sum().into_scalar::<f64>();
    if !value.is_finite() {
        return Err(SharpnessError::NonFinite {
            step,
            pass,
            what: "loss",
        });
    }
    let grad = ParamSet::from_gradients(model, grads);
    // One reduction serves the NaN/∞ check (see `ParamSet::all_finite`) and ‖g‖.
    let squared_norm = grad.squared_norm();
    if !squared_norm.is_finite() {
        return Err(SharpnessError::NonFinite {
            step,
            pass,
            what: "gradient",
        });
    }
    Ok((Evaluation { loss: value, grad }, squared_norm))
}

/// The [`Oracle`] of one step: evaluates the objective on fresh perturbed copies of `model`.
struct ModelOracle<'a, M, O> {
    model: &'a M,
    layout: &'a ParamSet,
    /// w, read from the model on first use (a plain step never needs it).
    weights: OnceCell<ParamSet>,
    objective: &'a mut O,
    step: u64,
    passes: usize,
}

impl<'a, M: Module, O: GradientObjective<M>> ModelOracle<'a, M, O> {
    fn new(model: &'a M, layout: &'a ParamSet, objective: &'a mut O, step: u64) -> Self {
        Self {
            model,
            layout,
            weights: OnceCell::new(),
            objective,
            step,
            passes: 1,
        }
    }

    /// A gradient with the layout of `weights`: zeros where `grad` has none. (`grad` itself when
    /// it has every tensor, so that the norm its NaN check computed is not computed again.)
    fn aligned(&self, grad: &ParamSet) -> ParamSet {
        if grad.same_layout(self.weights()) {
            return grad.clone();
        }
        self.weights().map(|e| {
            grad.get(e.id)
                .map(|g| g.value.clone())
                .unwrap_or_else(|| e.value.zeros_like())
        })
    }
}

impl<M: Module, O: GradientObjective<M>> Oracle for ModelOracle<'_, M, O> {
    fn weights(&self) -> &ParamSet {
        self.weights
            .get_or_init(|| ParamSet::weights_like(self.model, self.layout))
    }

    fn evaluate_at(&mut self, weights: &ParamSet) -> Result<Evaluation, SharpnessError> {
        let perturbed = weights.set_in_module(fresh_copy(self.model));
        let (evaluation, _, _) = evaluate(&perturbed, self.objective, self.step, self.passes)?;
        self.passes += 1;
        Ok(Evaluation {
            loss: evaluation.loss,
            grad: self.aligned(&evaluation.grad),
        })
    }

    fn evaluate_example(&mut self, draw: usize) -> Result<Evaluation, SharpnessError> {
        let copy = fresh_copy(self.model);
        let loss = self.objective.example_loss(&copy, draw).ok_or_else(|| {
            SharpnessError::Unsupported(
                "this method needs per-example losses: implement Objective::example_loss".into(),
            )
        })?;
        let grads = GradientsParams::from_grads(loss.backward(), &copy);
        let (evaluation, _) = checked(&copy, loss.detach(), &grads, self.step, self.passes)?;
        Ok(Evaluation {
            loss: evaluation.loss,
            grad: self.aligned(&evaluation.grad),
        })
    }
}
