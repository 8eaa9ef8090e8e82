//! Reliability (issue 12), a test per class: output directories, temporary files, data
//! integrity, resource limits, honest output and messages. None needs the network or the real
//! data cache: refusals happen before the data is read, training runs on in-memory data.

mod train_common;

use std::path::Path;
use std::process::{Command, Output};

use sharpness_lab::methods::Method;
use sharpness_lab::models::ModelKind;
use sharpness_lab::train::{self, Checkpoint, RunOptions, TrainConfig};
use train_common::{tiny_config, tiny_dataset};

/// Runs the lab binary in `dir` with an empty data cache (nothing real is ever read).
fn lab(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sharpness-lab"))
        .args(args)
        .current_dir(dir)
        .env("SHARPNESS_CACHE", dir.join("no-cache"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A runtime error: status 1 (not clap's 2), one line, no backtrace, containing `needle`.
fn assert_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert!(!err.contains("backtrace"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

// ---- Output directories --------------------------------------------------------------------

#[test]
fn foreign_directories_and_the_root_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("mine")).unwrap();
    std::fs::write(dir.join("mine/thesis.tex"), "my thesis").unwrap();
    for cmd in ["train", "table", "bias", "reproduce"] {
        assert_error(&lab(dir, &[cmd, "--out", "mine"]), "--force-out");
        assert_error(&lab(dir, &[cmd, "--out", "/"]), "filesystem root");
    }
    assert_eq!(
        std::fs::read_dir(dir.join("mine")).unwrap().count(),
        1,
        "nothing written into the user's directory"
    );
    // The output location is checked before the work: a file where a directory must be.
    std::fs::write(dir.join("file"), "").unwrap();
    assert_error(
        &lab(dir, &["bench", "--out", "file/bench.json"]),
        "file/bench.json",
    );
    assert_error(&lab(dir, &["train", "--out", "file/run"]), "file/run");
}

#[test]
fn a_run_directory_is_locked_while_a_run_writes_into_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let _held = sharpness_lab::outdir::claim(&run, false).unwrap();
    let out = lab(tmp.path(), &["train", "--out", "run"]);
    assert_error(&out, &format!("process {}", std::process::id()));
}

// ---- Data integrity ------------------------------------------------------------------------

#[test]
fn edited_data_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let dir = cache.join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    for file in sharpness_lab::data::DatasetName::Mnist.file_names() {
        std::fs::write(dir.join(file), b"well-formed or not, not the recorded data").unwrap();
    }
    let cache = cache.to_str().unwrap();
    let out = lab(
        tmp.path(),
        &[
            "train",
            "--dataset",
            "mnist",
            "--cache",
            cache,
            "--out",
            "r",
        ],
    );
    assert_error(&out, "sha256 mismatch");
    assert_error(&out, &format!("data fetch --cache {cache}"));
}

#[test]
fn a_checkpoint_whose_counters_disagree_is_refused() {
    let data = tiny_dataset(64, 20);
    let config = tiny_config(ModelKind::Mlp, Method::Sgd);
    let tmp = tempfile::tempdir().unwrap();
    let options = RunOptions {
        stop_after: Some(1),
        ..RunOptions::new(tmp.path())
    };
    train::run(&config, &data, &options).unwrap();
    let path = tmp.path().join(train::CHECKPOINT_FILE);
    let mut ckpt = Checkpoint::load(&path).unwrap();
    ckpt.meta.epochs_done = 5;
    ckpt.save(&path).unwrap();
    let resume = RunOptions {
        resume: true,
        ..RunOptions::new(tmp.path())
    };
    let err = format!("{:#}", train::run(&config, &data, &resume).unwrap_err());
    assert!(err.contains("5 epochs done"), "{err}");
}

#[test]
fn a_resume_on_other_data_is_refused_and_the_hash_is_recorded() {
    let mut data = tiny_dataset(64, 20);
    data.sha256 = Some("a".repeat(64));
    let config = tiny_config(ModelKind::Mlp, Method::Sgd);
    let tmp = tempfile::tempdir().unwrap();
    let options = RunOptions {
        stop_after: Some(1),
        ..RunOptions::new(tmp.path())
    };
    train::run(&config, &data, &options).unwrap();
    let ckpt = Checkpoint::load(&tmp.path().join(train::CHECKPOINT_FILE)).unwrap();
    assert_eq!(ckpt.meta.data_sha256, data.sha256);
    data.sha256 = Some("b".repeat(64));
    let resume = RunOptions {
        resume: true,
        ..RunOptions::new(tmp.path())
    };
    let err = format!("{:#}", train::run(&config, &data, &resume).unwrap_err());
    assert!(err.contains(&"b".repeat(64)), "{err}");
}

#[test]
fn an_empty_test_set_is_an_error() {
    let data = tiny_dataset(64, 0);
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(ModelKind::Mlp, Method::Sgd);
    let err = train::run(&config, &data, &RunOptions::new(tmp.path())).unwrap_err();
    assert!(err.to_string().contains("test set"), "{err}");
}

#[test]
fn duplicate_seeds_or_methods_in_the_table_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    assert_error(&lab(tmp.path(), &["table", "--seeds", "0,0"]), "--seeds");
    assert_error(
        &lab(tmp.path(), &["table", "--methods", "sam,sam"]),
        "--methods",
    );
}

// ---- Resource limits -----------------------------------------------------------------------

#[test]
fn configurations_that_cannot_fit_are_refused_naming_the_flag() {
    if sharpness_lab::limits::machine_memory().is_none() {
        return; // no memory size to compare with on this platform
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cases: [(&[&str], &str); 4] = [
        (
            &["train", "--model", "mlp", "--width", "100000000"],
            "--width 100000000",
        ),
        (
            &["bench", "--batch-size", "100000000"],
            "--batch-size 100000000",
        ),
        (&["toy", "grid", "--grid", "100000"], "--grid 100000"),
        (
            &["toy", "run", "--steps", "100000000000", "--trajectory"],
            "--steps 100000000000",
        ),
    ];
    for (args, flag) in cases {
        assert_error(&lab(dir, args), &format!("{flag}: needs about"));
    }
}

#[test]
fn a_width_for_a_network_without_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = lab(tmp.path(), &["train", "--model", "cnn", "--width", "512"]);
    assert_error(&out, "--width 512 sets the MLP's hidden width");
}

#[test]
fn toy_runs_keep_iterates_only_when_asked() {
    use sharpness_lab::methods::MethodParams;
    use sharpness_lab::toys::{Loss, sim};
    let params = MethodParams::default();
    let run = |keep| {
        sim::run_keeping(
            Loss::Banana,
            Method::Msam,
            &params,
            1.0,
            0.01,
            50,
            [-1.5, 0.5],
            keep,
        )
        .unwrap()
    };
    let (kept, lean) = (run(true), run(false));
    assert_eq!(kept.points.len(), 51);
    assert_eq!(lean.points.len(), 2);
    assert_eq!(lean.last(), kept.last());
    assert_eq!(lean.steps_done, 50);
}

// ---- Honest output and messages ------------------------------------------------------------

#[test]
fn toy_output_says_what_happened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = lab(dir, &["toy", "run", "--start=1e200,1e200"]);
    assert!(
        stdout(&out).contains("diverged at step 0"),
        "{}",
        stdout(&out)
    );
    let out = lab(dir, &["toy", "grid", "--range=1e200,2e200", "--grid", "2"]);
    assert!(
        stdout(&out).contains("4 of 4 runs diverged"),
        "{}",
        stdout(&out)
    );
    let out = lab(dir, &["toy", "stability", "--at=1e200,1e200"]);
    let text = stdout(&out);
    assert!(
        text.contains("not finite") && !text.contains("NaN"),
        "{text}"
    );
}

#[test]
fn flags_are_checked_with_their_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert_error(&lab(dir, &["train", "--rho", "-0.1"]), "--rho");
    assert_error(
        &lab(dir, &["train", "--nesterov", "--momentum", "0"]),
        "--nesterov requires --momentum",
    );
    assert_error(
        &lab(dir, &["train", "--nesterov", "--optimizer", "adam"]),
        "--nesterov",
    );
    assert_error(&lab(dir, &["bench", "--batch-size", "0"]), "--batch-size");
    std::fs::write(dir.join("c.toml"), "lr = 0.1\n").unwrap();
    let out = lab(dir, &["train", "--config", "c.toml", "--lr", "0.2"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a usage error: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--lr"), "{}", stderr(&out));
}

#[test]
fn plain_gd_records_the_rho_it_uses() {
    let config = TrainConfig {
        method: Method::Sgd,
        rho: 7.0,
        ..TrainConfig::default()
    };
    assert_eq!(config.normalised().rho, 0.0);
    let sam = TrainConfig {
        rho: 7.0,
        ..TrainConfig::default()
    };
    assert_eq!(sam.normalised(), sam);
    // The toys record it too.
    let dir = tempfile::tempdir().unwrap();
    for (method, rho) in [("gd", 0.0), ("sam", 0.5)] {
        let args = [
            "toy", "run", "--method", method, "--rho", "0.5", "--steps", "3", "--json",
        ];
        let out = lab(dir.path(), &args);
        let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(json["rho"], rho, "{method}: {json}");
    }
}

#[test]
fn data_file_messages_name_the_problem_and_keep_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("c");
    std::fs::create_dir_all(cache.join("mnist/train-images-idx3-ubyte")).unwrap();
    let cache = cache.to_str().unwrap();
    let out = lab(
        tmp.path(),
        &[
            "train",
            "--dataset",
            "mnist",
            "--cache",
            cache,
            "--out",
            "r",
        ],
    );
    assert_error(&out, "is a directory");
    assert_error(&out, &format!("--cache {cache}"));
}

#[test]
fn the_resume_refusal_says_how_to_resume() {
    let data = tiny_dataset(64, 20);
    let config = tiny_config(ModelKind::Mlp, Method::Sgd);
    let tmp = tempfile::tempdir().unwrap();
    train::run(&config, &data, &RunOptions::new(tmp.path())).unwrap();
    let other = TrainConfig { lr: 0.02, ..config };
    let resume = RunOptions {
        resume: true,
        ..RunOptions::new(tmp.path())
    };
    let err = train::run(&other, &data, &resume).unwrap_err().to_string();
    assert!(
        err.contains("--resume") && err.contains("--config"),
        "{err}"
    );
}
