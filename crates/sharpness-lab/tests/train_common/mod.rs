//! Shared helpers of the training tests (included with `mod`; not a test binary of its own).
#![allow(dead_code)]

use sharpness_lab::data::{Dataset, DatasetName, IMAGE_PIXELS, Split, Variant};
use sharpness_lab::methods::Method;
use sharpness_lab::models::ModelKind;
use sharpness_lab::train::TrainConfig;

/// A learnable in-memory dataset: class c brightens a band of rows 2c..2c+3, plus noise.
pub fn tiny_dataset(n_train: usize, n_test: usize) -> Dataset {
    let split = |n: usize, salt: u64| {
        let mut state = 0x1234_5678_9abc_def0u64 ^ salt;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let labels: Vec<u8> = (0..n)
            .map(|i| ((i * 7 + salt as usize) % 10) as u8)
            .collect();
        let mut images = Vec::with_capacity(n * IMAGE_PIXELS);
        for &c in &labels {
            for p in 0..IMAGE_PIXELS {
                let row = p / 28;
                let signal = if row >= 2 * c as usize && row < 2 * c as usize + 3 {
                    1.5
                } else {
                    0.0
                };
                images.push(signal + next() - 0.5);
            }
        }
        Split { images, labels, n }
    };
    Dataset {
        train: split(n_train, 1),
        test: split(n_test, 2),
        name: DatasetName::Mnist,
        variant: Variant::Full,
        label_noise: None,
        sha256: None,
    }
}

/// A small, fast configuration.
pub fn tiny_config(model: ModelKind, method: Method) -> TrainConfig {
    let mut config = TrainConfig {
        model,
        width: if model == ModelKind::Mlp {
            16
        } else {
            TrainConfig::default().width
        },
        method,
        rho: 0.05,
        lr: 0.05,
        epochs: 2,
        batch_size: 32,
        milestones: vec![1],
        seed: 3,
        ..TrainConfig::default()
    };
    config.method_params.num_samples = 4;
    config.method_params.refresh_every = Some(2);
    config
}
