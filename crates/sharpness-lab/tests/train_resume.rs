//! Checkpoints: resuming is bit-identical to an uninterrupted run (stateful methods, momentum
//! SGD, BatchNorm), damaged checkpoints and mismatched configurations are clear errors.

mod train_common;

use sharpness_lab::data::Dataset;
use sharpness_lab::methods::Method;
use sharpness_lab::models::ModelKind;
use sharpness_lab::train::{self, RunOptions, TrainConfig};
use train_common::{tiny_config, tiny_dataset};

fn check_resume(config: &TrainConfig, n_train: usize) {
    let data = tiny_dataset(n_train, 60);
    let dir = tempfile::tempdir().unwrap();
    let whole = train::run(config, &data, &RunOptions::new(dir.path().join("whole"))).unwrap();

    let split_dir = dir.path().join("split");
    let first = train::run(
        config,
        &data,
        &RunOptions {
            stop_after: Some(1),
            ..RunOptions::new(&split_dir)
        },
    )
    .unwrap();
    assert_eq!(first.metrics.len(), 1);
    let resumed = train::run(
        config,
        &data,
        &RunOptions {
            resume: true,
            ..RunOptions::new(&split_dir)
        },
    )
    .unwrap();

    assert_eq!(resumed.steps, whole.steps);
    let det = |r: &train::RunResult| {
        r.metrics
            .iter()
            .map(|m| m.deterministic())
            .collect::<Vec<_>>()
    };
    assert_eq!(det(&resumed), det(&whole), "{}", config.label());
    assert_eq!(
        train::tensor_values(&resumed.model),
        train::tensor_values(&whole.model),
        "{}",
        config.label()
    );
}

#[test]
fn resume_is_bit_identical_infosam_momentum_sgd_mlp() {
    let config = TrainConfig {
        momentum: 0.9,
        ..tiny_config(ModelKind::Mlp, Method::Infosam)
    };
    check_resume(&config, 192);
}

#[test]
fn resume_is_bit_identical_ssam_cnn_with_batchnorm() {
    let mut config = TrainConfig {
        batch_size: 16,
        ..tiny_config(ModelKind::Cnn, Method::Ssam)
    };
    config.method_params.num_samples = 2;
    check_resume(&config, 48);
}

#[test]
fn resume_is_bit_identical_adamw_cosine_proportional_rho() {
    let config = TrainConfig {
        optimizer: train::OptimizerKind::Adamw,
        lr: 1e-3,
        weight_decay: 1e-2,
        lr_schedule: train::LrScheduleKind::Cosine,
        rho_schedule: train::RhoScheduleKind::Proportional,
        rho_min: 0.01,
        ..tiny_config(ModelKind::Mlp, Method::Msam)
    };
    check_resume(&config, 128);
}

/// A 2-epoch SGD run on a tiny MLP stopped after its first epoch (checkpoint on disk).
fn interrupted_run() -> (Dataset, TrainConfig, tempfile::TempDir) {
    let data = tiny_dataset(64, 20);
    let config = TrainConfig {
        epochs: 2,
        ..tiny_config(ModelKind::Mlp, Method::Sgd)
    };
    let dir = tempfile::tempdir().unwrap();
    train::run(
        &config,
        &data,
        &RunOptions {
            stop_after: Some(1),
            ..RunOptions::new(dir.path())
        },
    )
    .unwrap();
    (data, config, dir)
}

#[test]
fn corrupt_checkpoint_is_a_clear_error() {
    let (data, config, dir) = interrupted_run();
    let path = dir.path().join(train::CHECKPOINT_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = train::run(
        &config,
        &data,
        &RunOptions {
            resume: true,
            ..RunOptions::new(dir.path())
        },
    )
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("checksum mismatch") && message.contains("checkpoint.bin"),
        "{message}"
    );

    std::fs::write(&path, &bytes[..100]).unwrap();
    let err = train::run(
        &config,
        &data,
        &RunOptions {
            resume: true,
            ..RunOptions::new(dir.path())
        },
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("checkpoint"), "{err:#}");
}

#[test]
fn resume_refuses_another_configuration_and_fresh_runs_refuse_to_overwrite() {
    let (data, config, dir) = interrupted_run();
    let other = TrainConfig {
        lr: 0.2,
        ..config.clone()
    };
    let err = train::run(
        &other,
        &data,
        &RunOptions {
            resume: true,
            ..RunOptions::new(dir.path())
        },
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("another configuration"),
        "{err:#}"
    );
    let err = train::run(&config, &data, &RunOptions::new(dir.path())).unwrap_err();
    assert!(format!("{err:#}").contains("--resume"), "{err:#}");
    let err = train::run(
        &config,
        &data,
        &RunOptions {
            resume: true,
            ..RunOptions::new(dir.path().join("none"))
        },
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("cannot read checkpoint"),
        "{err:#}"
    );
}
