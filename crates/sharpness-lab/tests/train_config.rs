//! TOML configurations: round trip, defaults for missing keys, unknown keys rejected, the file
//! saved next to the results, schedules.

mod train_common;

use sharpness_lab::methods::Method;
use sharpness_lab::models::ModelKind;
use sharpness_lab::train::{self, LrScheduleKind, OptimizerKind, RunOptions, TrainConfig};
use train_common::{tiny_config, tiny_dataset};

#[test]
fn toml_round_trip() {
    let mut config = TrainConfig {
        method: Method::FrobSam,
        optimizer: OptimizerKind::Adam,
        lr_schedule: LrScheduleKind::Cosine,
        train_limit: Some(1000),
        milestones: vec![3, 7],
        ..TrainConfig::default()
    };
    config.method_params.samples = Some(3);
    config.method_params.eta = Some(0.2);
    let text = config.to_toml().unwrap();
    assert_eq!(TrainConfig::from_toml(&text).unwrap(), config, "{text}");
    let default = TrainConfig::default();
    assert_eq!(
        TrainConfig::from_toml(&default.to_toml().unwrap()).unwrap(),
        default
    );
}

#[test]
fn partial_toml_takes_defaults_and_unknown_keys_are_errors() {
    let config = TrainConfig::from_toml("method = \"msam\"\nrho = 0.1\nmodel = \"mlp\"\n").unwrap();
    assert_eq!(config.method, Method::Msam);
    assert_eq!(config.model, ModelKind::Mlp);
    assert_eq!(config.epochs, TrainConfig::default().epochs);
    let err = TrainConfig::from_toml("lerning_rate = 0.1\n").unwrap_err();
    assert!(format!("{err:#}").contains("lerning_rate"), "{err:#}");
    let err = TrainConfig::from_toml("epochs = 0\n").unwrap_err();
    assert!(format!("{err:#}").contains("epochs"), "{err:#}");
}

#[test]
fn the_run_saves_its_configuration() {
    let data = tiny_dataset(64, 20);
    let config = TrainConfig {
        epochs: 1,
        ..tiny_config(ModelKind::Mlp, Method::Sgd)
    };
    let dir = tempfile::tempdir().unwrap();
    train::run(&config, &data, &RunOptions::new(dir.path())).unwrap();
    let saved = TrainConfig::from_toml_file(&dir.path().join(train::CONFIG_FILE)).unwrap();
    assert_eq!(saved, config);
}

#[test]
fn learning_rate_schedules() {
    let multistep = TrainConfig {
        lr: 0.1,
        epochs: 8,
        milestones: vec![2, 4, 6],
        gamma: 0.1,
        ..TrainConfig::default()
    };
    let lrs: Vec<f64> = (0..8).map(|e| multistep.lr_at(e)).collect();
    let expected = [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4];
    assert!(
        lrs.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12),
        "{lrs:?}"
    );
    let cosine = TrainConfig {
        lr: 0.1,
        epochs: 4,
        lr_schedule: LrScheduleKind::Cosine,
        ..TrainConfig::default()
    };
    assert_eq!(cosine.lr_at(0), 0.1);
    assert!((cosine.lr_at(2) - 0.05).abs() < 1e-12);
}
