//! MNIST-style training through Burn's own `SupervisedTraining` and `Learner`, made
//! sharpness-aware (Monge SAM) by one line: the training strategy. Metrics, validation and
//! checkpoints are Burn's; the metrics read the output of each step's first pass.
//!
//! The images are synthetic (28×28, ten noisy class prototypes) so the example runs offline;
//! swap in `burn::data::dataset::vision::MnistDataset` (Burn's `vision` feature) for the real one.
//!
//! `cargo run --release -p sharpness --features train --example learner`

use std::sync::Arc;

use burn::data::dataloader::{DataLoaderBuilder, batcher::Batcher};
use burn::data::dataset::InMemDataset;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use sharpness::perturb::{MongeSam, TwoPass};
use sharpness::train::SharpnessAwareTraining;
use sharpness::{RhoSchedule, SharpnessGradient, optim::base};

const PIXELS: usize = 28 * 28;

#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    out: Linear,
    relu: Relu,
}

#[derive(Clone, Debug)]
struct ImageBatch {
    images: Tensor<2>,
    labels: Tensor<1, Int>,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            hidden: LinearConfig::new(PIXELS, 64).init(device),
            out: LinearConfig::new(64, 10).init(device),
            relu: Relu::new(),
        }
    }

    fn classify(&self, batch: ImageBatch) -> ClassificationOutput {
        let logits = self
            .out
            .forward(self.relu.forward(self.hidden.forward(batch.images)));
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.labels.clone());
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

// The model's training step is the plain one: the strategy makes it sharpness-aware.
impl TrainStep for Mlp {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> TrainOutput<ClassificationOutput> {
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl InferenceStep for Mlp {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> ClassificationOutput {
        self.classify(batch)
    }
}

/// (pixels, label)
type Example = (Vec<f32>, i64);

#[derive(Clone)]
struct ImageBatcher;

impl Batcher<Example, ImageBatch> for ImageBatcher {
    fn batch(&self, items: Vec<Example>, device: &Device) -> ImageBatch {
        let n = items.len();
        let pixels: Vec<f32> = items.iter().flat_map(|(x, _)| x.iter().copied()).collect();
        let labels: Vec<i64> = items.iter().map(|(_, y)| *y).collect();
        ImageBatch {
            images: Tensor::<1>::from_floats(pixels.as_slice(), device).reshape([n, PIXELS]),
            labels: Tensor::<1, Int>::from_ints(labels.as_slice(), device),
        }
    }
}

/// Ten fixed prototypes plus pixel noise, from a small deterministic generator.
fn synthetic(n: usize, seed: u64) -> Vec<Example> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let prototype = |class: usize, pixel: usize| ((class * 31 + pixel * 7) % 13) as f32 / 13.0;
    (0..n)
        .map(|i| {
            let class = i % 10;
            let pixels = (0..PIXELS)
                .map(|p| prototype(class, p) + 0.8 * (uniform() - 0.5))
                .collect();
            (pixels, class as i64)
        })
        .collect()
}

fn main() {
    let device = Device::flex().autodiff();
    device.seed(0);
    let artifacts = tempfile::tempdir().expect("a temporary directory");
    let loader = |examples| {
        DataLoaderBuilder::new(ImageBatcher)
            .batch_size(64)
            .shuffle(0)
            .build(InMemDataset::new(examples))
    };

    // Monge SAM (ρ = 0.05) around the Learner's own optimizer.
    let gradient = SharpnessGradient::new(
        TwoPass::new(MongeSam::new()),
        RhoSchedule::constant(0.05).unwrap(),
    );
    let sam = Arc::new(SharpnessAwareTraining::new(
        device.clone(),
        gradient,
        artifacts.path(),
    ));

    let training = SupervisedTraining::new(
        artifacts.path(),
        loader(synthetic(2048, 1)),
        loader(synthetic(512, 2)),
    )
    .with_training_strategy(sam.clone().into_strategy()) // ← the one-line change
    .metrics((LossMetric::new(), AccuracyMetric::new()))
    .with_default_checkpointers()
    .num_epochs(2);
    let learner = Learner::new(Mlp::new(&device), base::sgd(0.9, 0.0, false).unwrap(), 0.05);
    let result = training.launch(learner);
    if let Some(error) = sam.error() {
        eprintln!("stopped: {error}");
        std::process::exit(1);
    }
    println!(
        "{} sharpness-aware steps; artifacts in {} (removed on exit)",
        sam.steps(),
        artifacts.path().display()
    );
    drop(result);
}
