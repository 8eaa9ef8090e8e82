//! Same seed ⇒ identical metrics and weights; another seed ⇒ different ones.

mod train_common;

use sharpness_lab::methods::Method;
use sharpness_lab::models::ModelKind;
use sharpness_lab::train::{self, RunOptions};
use train_common::{tiny_config, tiny_dataset};

#[test]
fn same_seed_gives_identical_metrics_and_weights() {
    let data = tiny_dataset(320, 100);
    let config = tiny_config(ModelKind::Mlp, Method::Sam);
    let dir = tempfile::tempdir().unwrap();
    let a = train::run(&config, &data, &RunOptions::new(dir.path().join("a"))).unwrap();
    let b = train::run(&config, &data, &RunOptions::new(dir.path().join("b"))).unwrap();
    assert_eq!(a.metrics.len(), 2);
    let det = |r: &train::RunResult| {
        r.metrics
            .iter()
            .map(|m| m.deterministic())
            .collect::<Vec<_>>()
    };
    assert_eq!(det(&a), det(&b));
    assert_eq!(
        train::tensor_values(&a.model),
        train::tensor_values(&b.model)
    );
    // It learned something (the classes are separable).
    assert!(a.metrics[1].test_acc > 0.3, "{:?}", a.metrics);
    // The files exist and agree with the returned metrics.
    let json: Vec<train::EpochMetrics> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("a/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(json, a.metrics);
    let csv = std::fs::read_to_string(dir.path().join("a/metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.starts_with("epoch,lr,rho,train_loss,train_acc,test_loss,test_acc"),
        "{csv}"
    );

    let other = train::TrainConfig { seed: 4, ..config };
    let c = train::run(&other, &data, &RunOptions::new(dir.path().join("c"))).unwrap();
    assert_ne!(det(&a), det(&c));
}
