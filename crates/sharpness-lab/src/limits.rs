//! Memory estimates checked before allocating: a configuration that cannot fit into the
//! machine's memory is refused with a message naming the flag, instead of being killed by the
//! kernel after minutes (or aborting on allocation).

use anyhow::{Result, bail};

use crate::data::IMAGE_PIXELS;
use crate::models::ModelKind;

/// Bytes the estimate charges per parameter: weights, the gradient of each pass, the perturbed
/// copy and ε, the base optimizer's state (f32 each).
const BYTES_PER_PARAMETER: f64 = 8.0 * 4.0;
/// Bytes per activation value of a batch: the forward value kept for backward, its gradient and
/// a temporary (f32 each).
const BYTES_PER_ACTIVATION: f64 = 3.0 * 4.0;

/// The machine's memory in bytes (`MemTotal` of `/proc/meminfo`), if it can be read.
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses an estimate of `bytes` above the machine's memory; `flag` names the setting that
/// drives it (e.g. `--width 100000000`). Without a known memory size nothing is refused.
pub fn ensure_fits(bytes: f64, flag: &str) -> Result<()> {
    if let Some(total) = machine_memory()
        && bytes > total as f64
    {
        bail!(
            "{flag}: needs about {} of memory (a lower estimate), more than this machine's {}",
            human(bytes),
            human(total as f64)
        );
    }
    Ok(())
}

/// Trainable parameters of a network (BatchNorm statistics included).
pub fn parameters(model: ModelKind, width: usize) -> f64 {
    let w = width as f64;
    match model {
        ModelKind::Mlp => w * w + (IMAGE_PIXELS as f64 + 12.0) * w + 10.0,
        ModelKind::Cnn => 21_000.0,
        ModelKind::Resnet => 80_000.0,
    }
}

/// Activation values of one example through forward and backward (input included).
fn activations_per_example(model: ModelKind, width: usize) -> f64 {
    IMAGE_PIXELS as f64
        + match model {
            ModelKind::Mlp => 4.0 * width as f64 + 10.0,
            ModelKind::Cnn => 50_000.0,
            ModelKind::Resnet => 180_000.0,
        }
}

/// Refuses a training configuration whose parameters and batch activations (plus
/// `data_bytes` of data the command holds) cannot fit; names `--width` or `--batch-size`,
/// whichever dominates.
pub fn ensure_training_fits(
    model: ModelKind,
    width: usize,
    batch_size: usize,
    data_bytes: f64,
) -> Result<()> {
    let params = BYTES_PER_PARAMETER * parameters(model, width);
    let batch = BYTES_PER_ACTIVATION * batch_size as f64 * activations_per_example(model, width)
        + data_bytes;
    let flag = if model == ModelKind::Mlp && params >= batch {
        format!("--width {width}")
    } else {
        format!("--batch-size {batch_size}")
    };
    ensure_fits(params + batch, &flag)
}

/// `1.5 GiB`-style sizes.
fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_are_refused_naming_the_flag() {
        if machine_memory().is_none() {
            return; // nothing to compare with on this platform
        }
        let err = ensure_training_fits(ModelKind::Mlp, 100_000_000, 128, 0.0).unwrap_err();
        assert!(err.to_string().contains("--width 100000000"), "{err}");
        let err = ensure_training_fits(ModelKind::Cnn, 256, 100_000_000, 0.0).unwrap_err();
        assert!(err.to_string().contains("--batch-size 100000000"), "{err}");
        ensure_training_fits(ModelKind::Resnet, 256, 128, 0.0).unwrap();
        ensure_training_fits(ModelKind::Mlp, 4096, 512, 0.0).unwrap();
    }

    #[test]
    fn sizes_read_as_binary_units() {
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(3.0 * 1024f64.powi(3)), "3.0 GiB");
    }
}
