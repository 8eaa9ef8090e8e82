//! What a step evaluates: the batch's loss ([`Objective`]) or, as Burn's `TrainStep::step`
//! returns it, its gradients and an output for the metrics ([`GradientObjective`]).
//!
//! Every pass of a step calls the objective on the **same** batch, so the API cannot reuse the
//! first gradient as the second (`docs/peers.md`, B5).

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;

use crate::error::{SharpnessError, at_least_one};

/// The loss of the current step's batch, as a function of the model. Any
/// `FnMut(&M) -> Tensor<1>` is an objective.
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

/// One forward/backward pass as a [`GradientObjective`] returns it.
#[derive(Debug)]
pub struct Pass<O> {
    /// The batch loss (a one-element tensor; only its value is read, to check it is finite).
    pub loss: Tensor<1>,
    /// Its gradients with respect to the model's parameters.
    pub grads: GradientsParams,
    /// Whatever the caller wants back from pass 0 (e.g. the output its metrics read); the output
    /// of the other passes is dropped.
    pub output: O,
}

impl<O> Pass<O> {
    /// The pass of `loss` (a one-element tensor computed from `model`): backward, and the
    /// gradients of `model`'s parameters.
    pub fn backward<M: Module>(model: &M, loss: Tensor<1>, output: O) -> Self {
        let grads = GradientsParams::from_grads(loss.backward(), model);
        Self {
            loss: loss.detach(),
            grads,
            output,
        }
    }
}

/// An objective that runs its own forward and backward pass and returns the gradients with an
/// output, as Burn's `TrainStep::step` does: the output of pass 0 comes back in
/// [`crate::Estimate::output`] (for the caller's metrics). Any `FnMut(&M) -> Pass<O>` is one.
pub trait GradientObjective<M> {
    /// What pass 0 hands back to the caller.
    type Output;

    /// Forward and backward on this step's batch at `model`.
    fn pass(&mut self, model: &M) -> Pass<Self::Output>;

    /// As [`Objective::example_loss`].
    fn example_loss(&mut self, _model: &M, _draw: usize) -> Option<Tensor<1>> {
        None
    }
}

impl<M, O, F: FnMut(&M) -> Pass<O>> GradientObjective<M> for F {
    type Output = O;

    fn pass(&mut self, model: &M) -> Pass<O> {
        self(model)
    }
}

/// A loss [`Objective`] as a [`GradientObjective`] with no output.
pub(crate) struct Losses<'a, O>(pub(crate) &'a mut O);

impl<M: Module, O: Objective<M>> GradientObjective<M> for Losses<'_, O> {
    type Output = ();

    fn pass(&mut self, model: &M) -> Pass<()> {
        Pass::backward(model, self.0.loss(model), ())
    }

    fn example_loss(&mut self, model: &M, draw: usize) -> Option<Tensor<1>> {
        self.0.example_loss(model, draw)
    }
}

/// **Exact gradient accumulation**: a batch given as k micro-batches, each pass run micro-batch
/// by micro-batch (the memory of one micro-batch), with the gradient of the mean loss
///
/// L = (1/k) Σᵢ Lᵢ,
///
/// where Lᵢ is micro-batch i's mean loss. Every pass of the step (pass 0 at w, and each pass at
/// perturbed weights) goes over all k micro-batches, so ε comes from the whole batch's gradient:
/// the step equals the whole-batch step up to float rounding, for every method (Fisher SAM, not
/// being scale-invariant, included). For micro-batches of unequal sizes nᵢ, scale micro-batch
/// i's loss by k·nᵢ/N to get the whole-batch mean. (Accumulating whole SAM steps instead, one ε
/// per micro-batch, is m-sharpness: [`crate::SharpnessGradient::estimate_chunks`].)
pub struct Accumulate<'a, O> {
    micro_batches: &'a mut [O],
}

impl<'a, O> Accumulate<'a, O> {
    /// The objective over `micro_batches` (at least one).
    pub fn new(micro_batches: &'a mut [O]) -> Result<Self, SharpnessError> {
        at_least_one("micro_batches", micro_batches.len())?;
        Ok(Self { micro_batches })
    }
}

impl<M: Module, O: Objective<M>> GradientObjective<M> for Accumulate<'_, O> {
    type Output = ();

    fn pass(&mut self, model: &M) -> Pass<()> {
        let k = self.micro_batches.len() as f64;
        let mut grads = GradientsAccumulator::new();
        let mut total: Option<Tensor<1>> = None;
        for micro_batch in self.micro_batches.iter_mut() {
            // Each micro-batch's graph is freed by its backward before the next is built.
            let pass = Pass::backward(model, micro_batch.loss(model).div_scalar(k), ());
            grads.accumulate(model, pass.grads);
            total = Some(match total {
                Some(total) => total + pass.loss,
                None => pass.loss,
            });
        }
        Pass {
            loss: total.expect("at least one micro-batch"),
            grads: grads.grads(),
            output: (),
        }
    }

    /// The example is picked by the first micro-batch's objective.
    fn example_loss(&mut self, model: &M, draw: usize) -> Option<Tensor<1>> {
        self.micro_batches[0].example_loss(model, draw)
    }
}
