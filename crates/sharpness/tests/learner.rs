//! SAM inside Burn's `SupervisedTraining`/`Learner` (feature `train`): the same weights as the
//! library's own step loop on the same batches, the estimator's state resumed from the
//! checkpoint, and the TrainStep helper.
#![cfg(feature = "train")]

use std::sync::Arc;

use burn::data::dataloader::{DataLoaderBuilder, batcher::Batcher};
use burn::data::dataset::InMemDataset;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::train::metric::LossMetric;
use burn::train::{
    InferenceStep, Learner, RegressionOutput, SupervisedTraining, TrainOutput, TrainStep,
};
use sharpness::optim::base;
use sharpness::perturb::{InfoSam, MongeSam, Ssam, TwoPass};
use sharpness::train::{SharpnessAwareTraining, sharpness_aware_step};
use sharpness::{
    GradientEstimator, ParamSet, Pass, RhoSchedule, SharpnessAware, SharpnessGradient,
};

#[derive(Module, Debug)]
struct Net {
    a: Linear,
    b: Linear,
}

#[derive(Clone, Debug)]
struct Batch {
    x: Tensor<2>,
    y: Tensor<2>,
}

impl Net {
    fn new(device: &Device) -> Self {
        let layer = |d_in: usize, d_out: usize, offset: f32| {
            let mut layer: Linear = LinearConfig::new(d_in, d_out).init(device);
            let w: Vec<f32> = (0..d_in * d_out)
                .map(|k| ((k as f32 * 0.37 + offset).sin()) * 0.5)
                .collect();
            let b: Vec<f32> = (0..d_out)
                .map(|k| (k as f32 - offset).cos() * 0.1)
                .collect();
            layer.weight = Param::from_tensor(
                Tensor::<1>::from_floats(w.as_slice(), device).reshape([d_in, d_out]),
            );
            layer.bias = Some(Param::from_tensor(Tensor::<1>::from_floats(
                b.as_slice(),
                device,
            )));
            layer
        };
        Self {
            a: layer(3, 4, 0.3),
            b: layer(4, 2, 1.7),
        }
    }

    fn regression(&self, batch: Batch) -> RegressionOutput {
        let output = self.b.forward(self.a.forward(batch.x).tanh());
        let loss = (output.clone() - batch.y.clone()).square().mean();
        RegressionOutput::new(loss, output, batch.y)
    }
}

impl TrainStep for Net {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, batch: Batch) -> TrainOutput<RegressionOutput> {
        let output = self.regression(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl InferenceStep for Net {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, batch: Batch) -> RegressionOutput {
        self.regression(batch)
    }
}

/// A user's own TrainStep made sharpness-aware with the helper.
#[derive(Module, Debug)]
struct HelperNet {
    net: Net,
}

impl TrainStep for HelperNet {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, batch: Batch) -> TrainOutput<RegressionOutput> {
        sharpness_aware_step(self, &MongeSam::new(), RHO, |m: &Self| {
            let output = m.net.regression(batch.clone());
            Pass::backward(m, output.loss.clone(), output)
        })
        .expect("finite")
    }
}

impl InferenceStep for HelperNet {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, batch: Batch) -> RegressionOutput {
        self.net.regression(batch)
    }
}

const RHO: f64 = 0.2;
const LR: f64 = 0.1;
const BATCH: usize = 8;

/// 24 examples: three batches an epoch, in order.
fn examples() -> Vec<([f32; 3], [f32; 2])> {
    (0..24)
        .map(|i| {
            let t = i as f32;
            (
                [(t * 0.71).sin(), (t * 0.29).cos(), (t * 0.13).sin() * 2.0],
                [(t * 0.43).cos(), (t * 0.17).sin()],
            )
        })
        .collect()
}

#[derive(Clone)]
struct Batcher2;

impl Batcher<([f32; 3], [f32; 2]), Batch> for Batcher2 {
    fn batch(&self, items: Vec<([f32; 3], [f32; 2])>, device: &Device) -> Batch {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|(x, _)| *x).collect();
        let y: Vec<f32> = items.iter().flat_map(|(_, y)| *y).collect();
        Batch {
            x: Tensor::<1>::from_floats(x.as_slice(), device).reshape([n, 3]),
            y: Tensor::<1>::from_floats(y.as_slice(), device).reshape([n, 2]),
        }
    }
}

fn device() -> Device {
    Device::flex().autodiff()
}

fn batches() -> Vec<Batch> {
    examples()
        .chunks(BATCH)
        .map(|chunk| Batcher2.batch(chunk.to_vec(), &device()))
        .collect()
}

fn training<M>(directory: &std::path::Path, epochs: usize) -> SupervisedTraining<M>
where
    M: burn::train::LearnerModel + TrainStep<Input = Batch, Output = RegressionOutput>,
    M: InferenceStep<Input = Batch, Output = RegressionOutput>,
{
    let loader = || {
        DataLoaderBuilder::new(Batcher2)
            .batch_size(BATCH)
            .build(InMemDataset::new(examples()))
    };
    SupervisedTraining::new(directory, loader(), loader())
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .with_default_checkpointers()
        .num_epochs(epochs)
}

/// Every weight of a model, as plain numbers.
fn weights<M: Module>(model: &M) -> Vec<f64> {
    ParamSet::trainable_weights(&model.clone().train()).to_vec()
}

/// The loss of example `draw % 8` of a batch (SSAM's per-example losses).
fn example_loss(m: &Net, batch: &Batch, draw: usize) -> Tensor<1> {
    let i = draw % BATCH;
    m.regression(Batch {
        x: batch.x.clone().slice([i..i + 1]),
        y: batch.y.clone().slice([i..i + 1]),
    })
    .loss
}

/// A batch as the library's objective, with per-example losses.
struct Objective(Batch);

impl sharpness::Objective<Net> for Objective {
    fn loss(&mut self, m: &Net) -> Tensor<1> {
        m.regression(self.0.clone()).loss
    }

    fn example_loss(&mut self, m: &Net, draw: usize) -> Option<Tensor<1>> {
        Some(example_loss(m, &self.0, draw))
    }
}

/// The library's own loop over the same batches, `epochs` times.
fn own_loop(estimator: impl GradientEstimator + 'static, epochs: usize) -> Vec<f64> {
    let mut optimizer = SharpnessAware::new(
        estimator,
        base::sgd(0.9, 0.0, false).unwrap(),
        RhoSchedule::constant(RHO).unwrap(),
    );
    let mut model = Net::new(&device());
    for _ in 0..epochs {
        for batch in batches() {
            model = optimizer
                .step(&model, LR, &mut Objective(batch))
                .unwrap()
                .model;
        }
    }
    weights(&model)
}

fn learner_run(
    directory: &std::path::Path,
    estimator: impl GradientEstimator + 'static,
    epochs: usize,
    resume_from: Option<usize>,
) -> (Vec<f64>, Arc<SharpnessAwareTraining<Net>>) {
    let gradient = SharpnessGradient::new(estimator, RhoSchedule::constant(RHO).unwrap());
    let strategy = SharpnessAwareTraining::new(device(), gradient, directory);
    let strategy = Arc::new(strategy.with_example_losses(example_loss));
    let mut training =
        training::<Net>(directory, epochs).with_training_strategy(strategy.clone().into_strategy());
    if let Some(epoch) = resume_from {
        training = training.checkpoint(epoch);
    }
    let learner = Learner::new(Net::new(&device()), base::sgd(0.9, 0.0, false).unwrap(), LR);
    let result = training.launch(learner);
    assert!(result.error.is_none(), "{:?}", result.error);
    assert!(result.interrupted.is_none(), "{:?}", result.interrupted);
    (weights(&result.model), strategy)
}

#[test]
fn the_learner_path_gives_the_weights_of_the_librarys_own_loop() {
    let directory = tempfile::tempdir().unwrap();
    let (learned, strategy) = learner_run(directory.path(), TwoPass::new(MongeSam::new()), 2, None);
    assert_eq!(strategy.steps(), 6);
    assert_eq!(learned, own_loop(TwoPass::new(MongeSam::new()), 2));
    assert_ne!(learned, weights(&Net::new(&device())));
    // The estimator's state sits beside the Learner's checkpoints.
    assert!(directory.path().join("checkpoint/sharpness-2.bpk").exists());
}

#[test]
fn ssam_runs_in_the_learner_with_per_example_losses() {
    let directory = tempfile::tempdir().unwrap();
    let ssam = || TwoPass::new(Ssam::new(0.5, 4, 2).unwrap());
    let (learned, strategy) = learner_run(directory.path(), ssam(), 2, None);
    assert_eq!(strategy.steps(), 6);
    assert_eq!(learned, own_loop(ssam(), 2));
}

#[test]
fn without_per_example_losses_ssam_stops_with_a_clear_error() {
    let directory = tempfile::tempdir().unwrap();
    let gradient = SharpnessGradient::new(
        TwoPass::new(Ssam::new(0.5, 4, 2).unwrap()),
        RhoSchedule::constant(RHO).unwrap(),
    );
    let strategy = Arc::new(SharpnessAwareTraining::new(
        device(),
        gradient,
        directory.path(),
    ));
    let training = training::<Net>(directory.path(), 1)
        .with_training_strategy(strategy.clone().into_strategy());
    let learner = Learner::new(Net::new(&device()), base::sgd(0.9, 0.0, false).unwrap(), LR);
    let result = training.launch(learner);
    let reason = result
        .interrupted
        .and_then(|i| i.reason)
        .unwrap_or_default();
    assert!(reason.contains("per-example losses"), "{reason}");
    assert!(strategy.error().is_some());
    // Step 0 is plain SGD (no mask yet); step 1 builds the mask from example losses and fails.
    assert_eq!(strategy.steps(), 1);
}

#[test]
fn a_resumed_learner_continues_a_stateful_method_exactly() {
    let directory = tempfile::tempdir().unwrap();
    let _ = learner_run(directory.path(), TwoPass::new(InfoSam::default()), 1, None);
    // Epoch 2 from the epoch-1 checkpoint: infoSAM's moving average comes back with it.
    let (resumed, strategy) = learner_run(
        directory.path(),
        TwoPass::new(InfoSam::default()),
        2,
        Some(1),
    );
    assert_eq!(strategy.steps(), 6, "the step counter is restored");
    assert_eq!(resumed, own_loop(TwoPass::new(InfoSam::default()), 2));
}

#[test]
fn resuming_without_the_estimators_state_is_an_error() {
    let directory = tempfile::tempdir().unwrap();
    let _ = learner_run(directory.path(), TwoPass::new(InfoSam::default()), 1, None);
    std::fs::remove_file(directory.path().join("checkpoint/sharpness-1.bpk")).unwrap();
    let gradient = SharpnessGradient::new(
        TwoPass::new(InfoSam::default()),
        RhoSchedule::constant(RHO).unwrap(),
    );
    let strategy = Arc::new(SharpnessAwareTraining::new(
        device(),
        gradient,
        directory.path(),
    ));
    let training = training::<Net>(directory.path(), 2)
        .with_training_strategy(strategy.clone().into_strategy())
        .checkpoint(1);
    let learner = Learner::new(Net::new(&device()), base::sgd(0.9, 0.0, false).unwrap(), LR);
    let error = training.launch(learner).error.expect("an error");
    assert!(error.to_string().contains("sharpness-1.bpk"), "{error}");
    assert_eq!(strategy.steps(), 0);
}

#[test]
fn the_train_step_helper_under_burns_default_loop_equals_the_librarys_loop() {
    let directory = tempfile::tempdir().unwrap();
    let learner = Learner::new(
        HelperNet {
            net: Net::new(&device()),
        },
        base::sgd(0.9, 0.0, false).unwrap(),
        LR,
    );
    let result = training::<HelperNet>(directory.path(), 2).launch(learner);
    assert!(result.error.is_none());
    assert_eq!(
        weights(&result.model.net),
        own_loop(TwoPass::new(MongeSam::new()), 2)
    );
}
