//! The epoch loop and the evaluation that every experiment shares: `train` and the comparison
//! table through [`super::run`], the explicit-bias experiment directly. A new experiment that
//! trains a classifier calls [`train_epoch`] once per epoch with its own objective and
//! [`evaluate`] after it, and keeps only what is its own (what it measures, its figures, its text).

use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use indicatif::ProgressBar;
use sharpness::{Objective, SharpnessAware};

use super::batch_tensors;
use crate::data::Split;

/// A network of the lab: logits `[b, 10]` of images `[b, 1, 28, 28]`.
pub trait Classifier: Module {
    /// The logits of a batch of images.
    fn logits(&self, images: Tensor<4>) -> Tensor<2>;
}

/// A batch's objective as the epoch loop sees it: the loss, and the correct predictions at the
/// unperturbed weights (pass 0) when the objective counts them. Any closure `FnMut(&M) ->
/// Tensor<1>` is one that does not count.
pub trait TrainObjective<M>: Objective<M> {
    /// Correct predictions of pass 0 on the batch, if counted.
    fn correct(&self) -> Option<usize> {
        None
    }
}

impl<M, F: FnMut(&M) -> Tensor<1>> TrainObjective<M> for F {}

/// What one epoch measured.
#[derive(Clone, Copy, Debug)]
pub struct EpochSummary {
    /// Mean pass-0 loss over the epoch's steps.
    pub mean_loss: f64,
    /// Training accuracy of the pass-0 predictions (NaN when the objective does not count them).
    pub accuracy: f64,
    /// ρ at the epoch's last step.
    pub rho: f64,
    /// Examples stepped on.
    pub examples: usize,
    /// Wall-clock seconds of the steps (not deterministic).
    pub seconds: f64,
}

/// Runs `f` on a thread of the global rayon pool (the calling thread waits). Flex's kernels and
/// the library's per-tensor loops fork onto that pool: forking from one of its own threads
/// skips the hand-over from an outside thread at every parallel call of a step.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// One epoch: an `optimizer` step at learning rate `lr` on every full batch of `order` (the
/// last incomplete batch is dropped), the batch's objective built by `objective(indices, step)`
/// where `step` is the optimizer's step counter (for objectives that draw examples per step).
/// With a `bar`, it advances by one per batch and shows the running loss, accuracy and speed.
pub fn train_epoch<M: Module + Sync, O: TrainObjective<M> + Send>(
    optimizer: &mut SharpnessAware,
    mut model: M,
    lr: f64,
    order: &[usize],
    batch_size: usize,
    mut objective: impl FnMut(&[usize], u64) -> O,
    bar: Option<&ProgressBar>,
) -> Result<(M, EpochSummary)> {
    let started = Instant::now();
    let steps = order.len() / batch_size;
    let (mut loss_sum, mut correct, mut seen, mut rho) = (0.0, None::<usize>, 0usize, 0.0);
    for (b, batch) in order.chunks_exact(batch_size).enumerate() {
        let mut batch_objective = objective(batch, optimizer.steps());
        let step = in_pool(|| optimizer.step(&model, lr, &mut batch_objective))
            .with_context(|| format!("batch {b}"))?;
        model = step.model;
        rho = step.rho;
        loss_sum += step.loss;
        if let Some(c) = batch_objective.correct() {
            *correct.get_or_insert(0) += c;
        }
        seen += batch.len();
        if let Some(bar) = bar {
            bar.inc(1);
            if b % 10 == 0 || b + 1 == steps {
                let rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!(
                    "loss {:.4} acc {:.2}% {:.0} ex/s",
                    loss_sum / (b + 1) as f64,
                    100.0 * correct.unwrap_or(0) as f64 / seen as f64,
                    rate
                ));
            }
        }
    }
    let summary = EpochSummary {
        mean_loss: loss_sum / steps as f64,
        accuracy: correct.map_or(f64::NAN, |c| c as f64 / seen as f64),
        rho,
        examples: seen,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((model, summary))
}

/// Mean loss and accuracy on `split` in evaluation mode (batches of 1 000, without autodiff);
/// `loss` is the mean loss of a batch's logits against its labels.
pub fn evaluate<M: Classifier>(
    model: &M,
    split: &Split,
    loss: impl Fn(Tensor<2>, Tensor<1, Int>) -> Tensor<1>,
    device: &Device,
) -> (f64, f64) {
    let model = model.valid();
    let device = device.clone().inner();
    let (mut loss_sum, mut correct) = (0.0, 0usize);
    let indices: Vec<usize> = (0..split.n).collect();
    for chunk in indices.chunks(1000) {
        let (x, y) = batch_tensors(split, chunk, &device);
        let logits = model.logits(x);
        correct += count_correct(logits.clone(), y.clone());
        loss_sum += loss(logits, y).into_scalar::<f64>() * chunk.len() as f64;
    }
    let n = split.n.max(1) as f64;
    (loss_sum / n, correct as f64 / n)
}

/// Predictions (argmax of the logits) equal to the labels.
pub fn count_correct(logits: Tensor<2>, y: Tensor<1, Int>) -> usize {
    let [b, _] = logits.dims();
    logits
        .argmax(1)
        .reshape([b])
        .equal(y)
        .int()
        .sum()
        .into_scalar::<i64>() as usize
}

/// Mean negative log-likelihood of the log-softmax of the logits (= cross-entropy on logits),
/// written out so that it also runs in `f64` for the sharpness measures.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [b, _] = logits.dims();
    log_softmax(logits, 1)
        .gather(1, labels.reshape([b, 1]))
        .mean()
        .neg()
}
