//! The optimizer wrapper, written once for every method: [`SharpnessAware`].

use std::cell::OnceCell;
use std::sync::Arc;

use burn::module::Module;
use burn::optim::StateSink;
use burn::optim::{
    AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig, decay::WeightDecayConfig,
    momentum::MomentumConfig,
};
use burn::tensor::{Bytes, Device, Tensor};
use burn_pack::Scalar;

use crate::error::{SharpnessError, check, check_non_negative};
use crate::estimator::{Evaluation, GradientEstimator, Oracle, StepContext};
use crate::params::{ParamSet, fresh_copy};
use crate::state::StateRecord;

/// The loss of the current step's batch, as a function of the model.
///
/// Every pass of a step calls [`Objective::loss`] on the **same** batch, so the API cannot reuse
/// the first gradient as the second (`docs/peers.md`, B5). Any `FnMut(&M) -> Tensor<1>` is an objective.
pub trait Objective<M> {
    /// The mean loss of this step's batch (a one-element tensor) for `model`.
    fn loss(&mut self, model: &M) -> Tensor<1>;

    /// The loss of a single training example, the `draw`-th of a Fisher estimate; the objective
    /// picks the example (e.g. at random from the training set). Only SSAM's mask needs it; the
    /// default is `None` ("not supported").
    fn example_loss(&mut self, _model: &M, _draw: usize) -> Option<Tensor<1>> {
        None
    }
}

impl<M, F: FnMut(&M) -> Tensor<1>> Objective<M> for F {
    fn loss(&mut self, model: &M) -> Tensor<1> {
        self(model)
    }
}

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

/// What [`SharpnessAware::estimate`] computed: the gradient to apply at w, and the model to apply
/// it to.
#[derive(Debug)]
pub struct Estimate<M> {
    /// The estimated gradient G (of the parameters that have one).
    pub grads: GradientsParams,
    /// The caller's model with the BatchNorm running statistics of pass 0 (the caller's weights
    /// unchanged): the model a base optimizer steps with `grads`.
    pub model: M,
    /// The batch loss at the unperturbed weights (pass 0).
    pub loss: f64,
    /// ‖g₀‖, the global gradient norm at the unperturbed weights.
    pub grad_norm: f64,
    /// The ρ used.
    pub rho: f64,
    /// Forward/backward passes on the batch (1 for plain steps, 2 for the two-pass family, m+1
    /// for the universal class).
    pub passes: usize,
}

/// What one step did.
#[derive(Clone, Debug)]
pub struct StepOutput<M> {
    /// The model after the base optimizer's step (BatchNorm statistics from pass 0 only).
    pub model: M,
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

/// A sharpness-aware optimizer: any [`GradientEstimator`] around any Burn optimizer.
///
/// One step: pass 0 at w on a fresh copy of the model (its BatchNorm running statistics are the
/// only ones kept); the estimator asks an [`Oracle`] for (L, ∇L) at perturbed weights on the same
/// batch, each on another fresh copy; the base optimizer steps **from w** with the estimated
/// gradient. The caller's model is never modified, so every perturbation is undone exactly
/// (bitwise), including for parameters that get no gradient in a later pass (`docs/peers.md`, B3, B8, B10).
/// If any loss or gradient is NaN/∞ the step returns [`SharpnessError::NonFinite`] naming the
/// step and pass, and the optimizer's state (base and estimator) is rolled back.
pub struct SharpnessAware {
    estimator: Box<dyn GradientEstimator>,
    base: ModuleOptimizer,
    rho: RhoSchedule,
    step: u64,
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
            estimator,
            base,
            rho,
            step: 0,
        }
    }

    /// The estimator's name.
    pub fn name(&self) -> String {
        self.estimator.name()
    }

    /// The number of steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One sharpness-aware step on the batch that `objective` evaluates:
    /// [`SharpnessAware::estimate`], then the base optimizer's step from w with the estimated
    /// gradient.
    pub fn step<M: Module>(
        &mut self,
        model: &M,
        lr: f64,
        objective: &mut impl Objective<M>,
    ) -> Result<StepOutput<M>, SharpnessError> {
        let estimate = self.estimate(model, lr, objective)?;
        Ok(StepOutput {
            model: self.base.step(lr, estimate.model, estimate.grads),
            loss: estimate.loss,
            grad_norm: estimate.grad_norm,
            rho: estimate.rho,
            passes: estimate.passes,
        })
    }

    /// The gradient a sharpness-aware step applies, without stepping the base optimizer: for a
    /// caller that owns the optimizer (e.g. Burn's `Learner`), which then steps
    /// [`Estimate::model`] with [`Estimate::grads`]. The step counter advances, and the
    /// estimator's state moves as in [`SharpnessAware::step`]; on an error it is left as it was
    /// before the call.
    pub fn estimate<M: Module>(
        &mut self,
        model: &M,
        lr: f64,
        objective: &mut impl Objective<M>,
    ) -> Result<Estimate<M>, SharpnessError> {
        let ctx = StepContext {
            step: self.step,
            rho: self.rho.rho(self.step, lr)?,
            lr,
        };
        let backup = self.estimator.clone_box();
        match self.try_estimate(model, objective, &ctx) {
            Ok(estimate) => {
                self.step += 1;
                Ok(estimate)
            }
            Err(error) => {
                self.estimator = backup;
                Err(error)
            }
        }
    }

    fn try_estimate<M: Module>(
        &mut self,
        model: &M,
        objective: &mut impl Objective<M>,
        ctx: &StepContext,
    ) -> Result<Estimate<M>, SharpnessError> {
        // Pass 0 on a copy with its own BatchNorm state (a plain clone would share it).
        let working = fresh_copy(model);
        let (at_weights, grad_squared_norm) = evaluate(&working, objective, ctx.step, 0)?;
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
        Ok(Estimate {
            grads: grad.to_gradients(),
            model: working,
            loss: at_weights.loss,
            grad_norm: grad_squared_norm.sqrt(),
            rho: ctx.rho,
            passes: oracle.passes,
        })
    }

    /// The complete optimizer state as one record: the step counter (scalar `step`), the
    /// estimator's state (under `estimator`) and the base optimizer's own burnpack record (under
    /// `base`). A resumed run continues bit-identically.
    pub fn state_record(&self) -> Result<StateRecord, SharpnessError> {
        let mut sink = StateSink::default();
        self.estimator.save_state("estimator", &mut sink);
        let mut record = StateRecord::from_sink(sink);
        record
            .scalars
            .insert("step".into(), Scalar::from(self.step));
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
        let step = record.integer("step")?;
        let mut estimator = self.estimator.clone_box();
        estimator.load_state("estimator", &mut record.into_source()?, device)?;
        (self.base, self.estimator, self.step) = (base, estimator, step);
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

/// Forward + backward of the objective on `model`, checked for NaN/∞.
fn evaluate<M: Module>(
    model: &M,
    objective: &mut impl Objective<M>,
    step: u64,
    pass: usize,
) -> Result<(Evaluation, f64), SharpnessError> {
    let loss = objective.loss(model);
    evaluate_loss(model, loss, step, pass)
}

fn evaluate_loss<M: Module>(
    model: &M,
    loss: Tensor<1>,
    step: u64,
    pass: usize,
) -> Result<(Evaluation, f64), SharpnessError> {
    let value = loss.clone().inner().sum().into_scalar::<f64>();
    if !value.is_finite() {
        return Err(SharpnessError::NonFinite {
            step,
            pass,
            what: "loss",
        });
    }
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let grad = ParamSet::from_gradients(model, &grads);
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

impl<'a, M: Module, O: Objective<M>> ModelOracle<'a, M, O> {
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

impl<M: Module, O: Objective<M>> Oracle for ModelOracle<'_, M, O> {
    fn weights(&self) -> &ParamSet {
        self.weights
            .get_or_init(|| ParamSet::weights_like(self.model, self.layout))
    }

    fn evaluate_at(&mut self, weights: &ParamSet) -> Result<Evaluation, SharpnessError> {
        let perturbed = weights.set_in_module(fresh_copy(self.model));
        let (evaluation, _) = evaluate(&perturbed, self.objective, self.step, self.passes)?;
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
        let (evaluation, _) = evaluate_loss(&copy, loss, self.step, self.passes)?;
        Ok(Evaluation {
            loss: evaluation.loss,
            grad: self.aligned(&evaluation.grad),
        })
    }
}
