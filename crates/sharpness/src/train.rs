//! Sharpness-aware training inside Burn's own training loop (feature `train`).
//!
//! - [`SharpnessAwareTraining`]: a training strategy for
//!   `SupervisedTraining::with_training_strategy` that runs every batch through any method of the
//!   library (stateful ones included; SSAM also needs
//!   [`SharpnessAwareTraining::with_example_losses`]) and steps the `Learner`'s own optimizer with
//!   the estimated gradient. ρ schedules follow the `Learner`'s learning-rate scheduler; validation, metrics
//!   (fed with the output of pass 0), checkpointing, early stopping and interruption run as in
//!   Burn's single-device loop, and the estimator's state is saved beside the `Learner`'s
//!   checkpoints and restored on resume. The one-line change:
//!
//! ```ignore
//! let sam = Arc::new(SharpnessAwareTraining::new(device, gradient, ARTIFACTS));
//! let training = SupervisedTraining::new(ARTIFACTS, train, valid)
//!     .with_training_strategy(sam.clone().into_strategy()); // the one line
//! ```
//!
//! (`examples/learner.rs` is a complete program.)
//!
//! - [`sharpness_aware_step`]: for a user's own `TrainStep::step`, with a stateless geometry and a
//!   constant ρ. It works under every Burn execution strategy: with several devices each device
//!   perturbs with the gradient of its own shard (m-sharpness with k = the number of devices,
//!   which is what data-parallel SAM computes).
//!
//! Under distributed data parallelism (parameters marked distributed), Burn synchronises the
//! gradients of every backward pass, pass 0 included: ε then comes from the global batch
//! gradient (SAM on the whole batch, not m-sharpness), and the perturbed copies keep the
//! distributed mark (tested in `tests/optimizer.rs`), so the second pass is synchronised too.
//!
//! Pass 0 runs on the `Learner`'s model itself, as in Burn's loop: its BatchNorm running
//! statistics are updated by pass 0 (only), even when a later pass of that step fails.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use burn::train::checkpoint::CheckpointerError;
use burn::train::{
    ClassificationOutput, EventProcessorTraining, InferenceStep, Interrupter, Learner,
    LearnerEvent, LearnerModel, MultiLabelClassificationOutput, RegressionOutput, SequenceOutput,
    SupervisedLearningStrategy, SupervisedTrainingEventProcessor, TrainLoader, TrainOutput,
    TrainStep, TrainingComponents, TrainingError, TrainingItem, TrainingStrategy, ValidLoader,
};

use crate::error::SharpnessError;
use crate::objective::{GradientObjective, Pass};
use crate::optim::{RhoSchedule, SharpnessGradient};
use crate::perturb::{Preconditioner, TwoPass};
use crate::state::StateRecord;

/// A training output that carries its batch loss (Burn's classification, regression and
/// sequence outputs do): the library checks it for NaN/∞ at every pass.
pub trait LossOutput {
    /// The batch loss (a one-element tensor).
    fn loss(&self) -> Tensor<1>;
}

macro_rules! loss_field {
    ($($output:ty),*) => {$(
        impl LossOutput for $output {
            fn loss(&self) -> Tensor<1> {
                self.loss.clone()
            }
        }
    )*};
}
loss_field!(
    ClassificationOutput,
    MultiLabelClassificationOutput,
    RegressionOutput,
    SequenceOutput
);

/// Per-example losses for SSAM's Fisher mask: the loss of the `draw`-th example of a batch.
pub type ExampleLosses<M> =
    Box<dyn Fn(&M, &<M as TrainStep>::Input, usize) -> Tensor<1> + Send + Sync>;

/// A batch through the model's own `TrainStep::step`, as an objective.
struct TrainPass<'a, M: TrainStep> {
    item: &'a M::Input,
    examples: Option<&'a ExampleLosses<M>>,
}

impl<M: TrainStep> GradientObjective<M> for TrainPass<'_, M>
where
    M::Input: Clone,
    M::Output: LossOutput,
{
    type Output = M::Output;

    fn pass(&mut self, model: &M) -> Pass<M::Output> {
        let TrainOutput { grads, item } = TrainStep::step(model, self.item.clone());
        Pass {
            loss: item.loss().detach(),
            grads,
            output: item,
        }
    }

    fn example_loss(&mut self, model: &M, draw: usize) -> Option<Tensor<1>> {
        self.examples.map(|losses| losses(model, self.item, draw))
    }
}

/// The gradient of a sharpness-aware step, for a user's own `TrainStep::step`: `objective` is the
/// forward and backward pass of the batch (typically the body of a plain `TrainStep::step`),
/// called once per pass. A stateless geometry only (SAM, ASAM, Fisher, Monge): a geometry with
/// state (infoSAM, SSAM) would start afresh at every call. BatchNorm statistics come from pass 0,
/// which runs on `model` itself.
///
/// ```ignore
/// fn step(&self, batch: MyBatch) -> TrainOutput<ClassificationOutput> {
///     sharpness_aware_step(self, &MongeSam::new(), 0.05, |m: &Self| {
///         let output = m.forward_classification(batch.images.clone(), batch.targets.clone());
///         Pass::backward(m, output.loss.clone(), output)
///     })
///     .expect("a finite loss")
/// }
/// ```
pub fn sharpness_aware_step<M: Module, P: Preconditioner + Clone + 'static, O>(
    model: &M,
    geometry: &P,
    rho: f64,
    mut objective: impl FnMut(&M) -> Pass<O>,
) -> Result<TrainOutput<O>, SharpnessError> {
    let mut gradient =
        SharpnessGradient::new(TwoPass::new(geometry.clone()), RhoSchedule::constant(rho)?);
    let estimate = gradient.estimate_shared(model, 0.0, &mut objective)?;
    Ok(TrainOutput {
        grads: estimate.grads,
        item: estimate.output,
    })
}

/// A training strategy that makes `SupervisedTraining` sharpness-aware (see the module docs).
pub struct SharpnessAwareTraining<M: LearnerModel> {
    device: Device,
    gradient: Mutex<SharpnessGradient>,
    directory: PathBuf,
    error: Mutex<Option<SharpnessError>>,
    examples: Option<ExampleLosses<M>>,
}

impl<M: LearnerModel> SharpnessAwareTraining<M>
where
    <M as TrainStep>::Input: Clone,
    <M as TrainStep>::Output: LossOutput,
{
    /// Training on `device` with `gradient` (any estimator with its ρ schedule). `directory` is
    /// the one given to `SupervisedTraining::new`: the estimator's state goes to its
    /// `checkpoint/` folder, as `sharpness-<epoch>.bpk` beside the `Learner`'s files.
    pub fn new(device: Device, gradient: SharpnessGradient, directory: impl AsRef<Path>) -> Self {
        Self {
            device,
            gradient: Mutex::new(gradient),
            directory: directory.as_ref().join("checkpoint"),
            error: Mutex::new(None),
            examples: None,
        }
    }

    /// The loss of one example of a batch (the `draw`-th; e.g. example `draw % batch size`), for
    /// methods that need per-example losses (SSAM's Fisher mask); without it they stop with an
    /// error naming what is missing.
    pub fn with_example_losses(
        mut self,
        losses: impl Fn(&M, &<M as TrainStep>::Input, usize) -> Tensor<1> + Send + Sync + 'static,
    ) -> Self {
        self.examples = Some(Box::new(losses));
        self
    }

    /// For `SupervisedTraining::with_training_strategy`. Keep a clone of the `Arc` to read
    /// [`SharpnessAwareTraining::error`] after the training.
    pub fn into_strategy(self: Arc<Self>) -> TrainingStrategy<M> {
        TrainingStrategy::Custom(self)
    }

    /// The error that stopped the training, if a step failed (the `LearningResult` then reports
    /// an interruption whose reason is this error's message).
    pub fn error(&self) -> Option<SharpnessError> {
        lock(&self.error).clone()
    }

    /// The number of sharpness-aware steps taken (resumed runs included).
    pub fn steps(&self) -> u64 {
        lock(&self.gradient).steps()
    }

    fn state_file(&self, epoch: usize) -> PathBuf {
        self.directory.join(format!("sharpness-{epoch}.bpk"))
    }

    fn save_state(&self, epoch: usize) -> Result<(), TrainingError> {
        let bytes = lock(&self.gradient).state_record().into_bytes();
        let bytes = bytes.map_err(|e| checkpoint_error(e.to_string()))?;
        std::fs::create_dir_all(&self.directory).map_err(io_error)?;
        // Written beside and renamed, so a crash never leaves a truncated state.
        let path = self.state_file(epoch);
        let partial = path.with_extension("bpk.partial");
        std::fs::write(&partial, bytes).map_err(io_error)?;
        std::fs::rename(&partial, &path).map_err(io_error)?;
        self.remove_orphans(epoch);
        Ok(())
    }

    /// Removes the states of earlier epochs whose `Learner` checkpoint Burn has deleted.
    fn remove_orphans(&self, latest: usize) {
        let learner_has = |epoch: usize| {
            let prefix = format!("model-{epoch}.");
            std::fs::read_dir(&self.directory)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        };
        for epoch in 1..latest {
            let path = self.state_file(epoch);
            if path.exists() && !learner_has(epoch) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn load_state(&self, epoch: usize) -> Result<(), TrainingError> {
        let path = self.state_file(epoch);
        let bytes = std::fs::read(&path).map_err(|e| {
            checkpoint_error(format!(
                "the sharpness-aware state of epoch {epoch} ({}): {e}",
                path.display()
            ))
        })?;
        let record = StateRecord::from_bytes(bytes)
            .and_then(|record| lock(&self.gradient).load_state_record(record, &self.device));
        record.map_err(|e| checkpoint_error(format!("{}: {e}", path.display())))
    }

    /// One training epoch: every batch through the estimator, then the `Learner`'s optimizer.
    fn train_epoch(
        &self,
        learner: &mut Learner<M>,
        loader: &TrainLoader<M>,
        processor: &mut SupervisedTrainingEventProcessor<M>,
        interrupter: &Interrupter,
    ) {
        let mut iterator = loader.iter();
        let mut iteration = 0;
        while let Some(item) = iterator.next() {
            let item = match item {
                Ok(item) => item,
                Err(error) => return interrupter.fail(error),
            };
            iteration += 1;
            learner.lr_step();
            let lr = learner.lr_current();
            let mut objective = TrainPass {
                item: &item,
                examples: self.examples.as_ref(),
            };
            let estimate =
                lock(&self.gradient).estimate_shared(&learner.model(), lr.clone(), &mut objective);
            let estimate = match estimate {
                Ok(estimate) => estimate,
                Err(error) => {
                    interrupter.stop(Some(&error.to_string()));
                    *lock(&self.error) = Some(error);
                    return;
                }
            };
            learner.optimizer_step(estimate.grads);
            let item = TrainingItem::new(
                estimate.output,
                iterator.progress(),
                Some(iteration),
                Some(lr),
            );
            interrupter.fail_on_error(processor.process_train(LearnerEvent::ProcessedItem(item)));
            if interrupter.should_stop() {
                return;
            }
        }
    }

    /// One validation epoch, as Burn's single-device loop runs it.
    fn valid_epoch(
        learner: &Learner<M>,
        loader: &ValidLoader<M>,
        processor: &mut SupervisedTrainingEventProcessor<M>,
        interrupter: &Interrupter,
    ) {
        let model = learner.model().valid();
        let mut iterator = loader.iter();
        let mut iteration = 0;
        while let Some(item) = iterator.next() {
            let item = match item {
                Ok(item) => item,
                Err(error) => return interrupter.fail(error),
            };
            iteration += 1;
            let output = InferenceStep::step(&model, item);
            let item = TrainingItem::new(output, iterator.progress(), Some(iteration), None);
            interrupter.fail_on_error(processor.process_valid(LearnerEvent::ProcessedItem(item)));
            if interrupter.should_stop() {
                return;
            }
        }
    }
}

impl<M: LearnerModel> SupervisedLearningStrategy<M> for SharpnessAwareTraining<M>
where
    <M as TrainStep>::Input: Clone,
    <M as TrainStep>::Output: LossOutput,
{
    fn fit(
        &self,
        components: TrainingComponents<M>,
        mut learner: Learner<M>,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
        starting_epoch: usize,
    ) -> (M, SupervisedTrainingEventProcessor<M>) {
        let TrainingComponents {
            num_epochs,
            checkpoint,
            mut checkpointer,
            grad_accumulation,
            interrupter,
            mut early_stopping,
            event_processor: mut processor,
            event_store,
            ..
        } = components;
        if grad_accumulation.is_some() {
            let reason = "SharpnessAwareTraining does not take SupervisedTraining's gradient \
                          accumulation: pass the micro-batches to sharpness::Accumulate instead";
            interrupter.stop(Some(reason));
            return (learner.model(), processor);
        }
        if let Some(epoch) = checkpoint
            && let Err(error) = self.load_state(epoch)
        {
            interrupter.fail(error);
            return (learner.model(), processor);
        }
        let train = train.to_device(&self.device);
        let valid = valid.to_device(&self.device.clone().inner());
        learner.fork(&self.device);
        for epoch in starting_epoch..=num_epochs {
            let fail_on_error = |result| interrupter.fail_on_error(result);
            fail_on_error(processor.process_train(LearnerEvent::StartSplit {
                epoch_number: epoch,
                total_items: train.num_items(),
            }));
            self.train_epoch(&mut learner, &train, &mut processor, &interrupter);
            fail_on_error(processor.process_train(LearnerEvent::EndSplit(epoch)));
            if interrupter.should_stop() {
                break;
            }
            fail_on_error(processor.process_valid(LearnerEvent::StartSplit {
                epoch_number: epoch,
                total_items: valid.num_items(),
            }));
            Self::valid_epoch(&learner, &valid, &mut processor, &interrupter);
            fail_on_error(processor.process_valid(LearnerEvent::EndSplit(epoch)));
            fail_on_error(processor.process_train(LearnerEvent::EndEpoch(epoch)));
            if checkpointer.is_some() || early_stopping.is_some() {
                fail_on_error(processor.flush());
            }
            if interrupter.should_stop() {
                break;
            }
            if let Some(checkpointer) = &mut checkpointer {
                checkpointer.checkpoint(&learner, epoch, &event_store);
                interrupter.fail_on_error(self.save_state(epoch));
            }
            if let Some(early_stopping) = &mut early_stopping
                && early_stopping.should_stop(epoch, &event_store)
            {
                break;
            }
        }
        (learner.model(), processor)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn checkpoint_error(message: String) -> TrainingError {
    TrainingError::Checkpoint(CheckpointerError::Unknown(message))
}

fn io_error(error: std::io::Error) -> TrainingError {
    TrainingError::Checkpoint(CheckpointerError::IOError(error))
}
