//! The configuration of one training run: command-line flags, or a TOML file with the same keys.

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use sharpness::RhoSchedule;
use sharpness::optim::base;

use crate::data::{DatasetName, Variant};
use crate::methods::{Method, MethodParams};
use crate::models::ModelKind;

/// The base optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// SGD as `torch.optim.SGD` (momentum with dampening 0, L2 weight decay, optional Nesterov).
    Sgd,
    /// Adam as `torch.optim.Adam` (L2 weight decay).
    Adam,
    /// AdamW (decoupled weight decay).
    Adamw,
}

/// The learning-rate schedule, evaluated per epoch (as PyTorch's epoch-level schedulers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LrScheduleKind {
    /// The same learning rate throughout.
    Constant,
    /// lr × gamma^k in epoch e (0-based), k = number of milestones ≤ e (`MultiStepLR`).
    Multistep,
    /// lr × ½(1 + cos(π e / epochs)) (`CosineAnnealingLR` with T_max = epochs, η_min = 0).
    Cosine,
}

/// How ρ evolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RhoScheduleKind {
    /// ρ constant.
    Constant,
    /// ρ follows the learning rate from `rho_min` (at the smallest lr) to `rho` (at the largest), as GSAM.
    Proportional,
}

/// Everything that determines a training run (and its results, bit for bit).
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Dataset.
    #[arg(long, value_enum, ignore_case = true, default_value_t = DatasetName::FashionMnist)]
    pub dataset: DatasetName,
    /// Training-set variant: full, S (first 10%) or C (20% labels flipped).
    #[arg(long, value_enum, ignore_case = true, default_value_t = Variant::Full)]
    pub variant: Variant,
    /// Seed of the label flips of the C variant (fixed across seeds, as in the paper's protocol).
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    /// Use only the first N training examples (after the variant is applied).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Evaluate on only the first N test examples.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Network.
    #[arg(long, value_enum, ignore_case = true, default_value_t = ModelKind::Cnn)]
    pub model: ModelKind,
    /// Hidden width of the MLP.
    #[arg(long, default_value_t = 256)]
    pub width: usize,
    /// Method.
    #[arg(long, value_enum, ignore_case = true, default_value_t = Method::Sam)]
    pub method: Method,
    /// Perturbation radius ρ (ρ_max with `--rho-schedule proportional`).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub rho: f64,
    /// ρ schedule.
    #[arg(long, value_enum, default_value_t = RhoScheduleKind::Constant)]
    pub rho_schedule: RhoScheduleKind,
    /// ρ at the smallest learning rate (`--rho-schedule proportional`).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub rho_min: f64,
    /// Method hyperparameters other than ρ.
    #[command(flatten)]
    pub method_params: MethodParams,
    /// Base optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    pub optimizer: OptimizerKind,
    /// Initial learning rate (0.01 with momentum 0.9 for every network: the former 0.05 left
    /// the BatchNorm CNN at chance accuracy in 3 of 4 short runs).
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    pub lr: f64,
    /// SGD momentum (dampening 0, as PyTorch).
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub momentum: f64,
    /// SGD: Nesterov momentum.
    #[arg(long, default_value_t = false)]
    pub nesterov: bool,
    /// Weight decay (L2 in the gradient for SGD and Adam, decoupled for AdamW).
    #[arg(long, default_value_t = 5e-4, allow_negative_numbers = true)]
    pub weight_decay: f64,
    /// Adam/AdamW β₁.
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub beta1: f64,
    /// Adam/AdamW β₂.
    #[arg(long, default_value_t = 0.999, allow_negative_numbers = true)]
    pub beta2: f64,
    /// Adam/AdamW ε.
    #[arg(long, default_value_t = 1e-8, allow_negative_numbers = true)]
    pub adam_eps: f64,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = LrScheduleKind::Multistep)]
    pub lr_schedule: LrScheduleKind,
    /// Multi-step milestones (epochs, 0-based: the factor applies from that epoch on).
    #[arg(long, value_delimiter = ',', default_values_t = vec![5usize, 8])]
    pub milestones: Vec<usize>,
    /// Multi-step factor.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub gamma: f64,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Batch size (the last incomplete batch of an epoch is dropped).
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Seed of the initialisation, the epoch shuffles and every sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The clap ids of every flag of [`TrainConfig`] (its fields, and the group of the flattened
/// [`MethodParams`]): `train --config` conflicts with them. Spelled out because clap leaves the
/// derived group of a struct with a flattened field empty; a test keeps the list complete.
pub const FLAG_IDS: [&str; 26] = [
    "dataset",
    "variant",
    "data_seed",
    "train_limit",
    "test_limit",
    "model",
    "width",
    "method",
    "rho",
    "rho_schedule",
    "rho_min",
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "beta1",
    "beta2",
    "adam_eps",
    "lr_schedule",
    "milestones",
    "gamma",
    "epochs",
    "batch_size",
    "seed",
    "MethodParams",
];

/// Parses no arguments, so the defaults live in one place (the clap attributes).
#[derive(Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    config: TrainConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        DefaultsOnly::parse_from(["defaults"]).config
    }
}

impl TrainConfig {
    /// Reads a TOML configuration (missing keys take the defaults; unknown keys are errors).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }

    /// Rejects inconsistent settings early, with a message naming the flag (the TOML key is the
    /// flag without `--`, with underscores), and configurations that cannot fit into memory.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            bail!("--epochs must be ≥ 1");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be ≥ 1");
        }
        if self.test_limit == Some(0) {
            bail!("--test-limit must be ≥ 1 (an empty test set measures nothing)");
        }
        if self.train_limit == Some(0) {
            bail!("--train-limit must be ≥ 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a finite number > 0 (got {})", self.lr);
        }
        // As torch.optim.SGD ("Nesterov momentum requires a momentum"); Adam has no Nesterov.
        if self.nesterov && self.optimizer != OptimizerKind::Sgd {
            bail!("--nesterov applies to --optimizer sgd only");
        }
        if self.nesterov && self.momentum == 0.0 {
            bail!("--nesterov requires --momentum > 0");
        }
        if !(0.0..1.0).contains(&self.gamma) && self.lr_schedule == LrScheduleKind::Multistep {
            bail!("--gamma must be in [0, 1) (got {})", self.gamma);
        }
        if self.model == ModelKind::Mlp && self.width == 0 {
            bail!("--width must be ≥ 1");
        }
        if self.model != ModelKind::Mlp && self.width != Self::default().width {
            bail!(
                "--width {} sets the MLP's hidden width; the {} has fixed widths (use --model mlp)",
                self.width,
                self.model
            );
        }
        crate::limits::ensure_training_fits(self.model, self.width, self.batch_size, 0.0)?;
        // The library checks these hyperparameters; the context names the flags.
        self.rho_schedule().context("--rho, --rho-min")?;
        self.base_optimizer()
            .context("--momentum, --weight-decay, --beta1, --beta2, --adam-eps")?;
        crate::methods::estimator(self.method, &self.method_params)?;
        Ok(())
    }

    /// The configuration as it is run and recorded: ρ (and its schedule) are 0 and constant for
    /// plain GD, which does not use them.
    pub fn normalised(&self) -> Self {
        let mut config = self.clone();
        if config.method == Method::Sgd {
            config.rho = 0.0;
            config.rho_min = 0.0;
            config.rho_schedule = RhoScheduleKind::Constant;
        }
        config
    }

    /// The learning rate of epoch `epoch` (0-based).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.lr_schedule {
            LrScheduleKind::Constant => self.lr,
            LrScheduleKind::Multistep => {
                let k = self.milestones.iter().filter(|&&m| m <= epoch).count();
                self.lr * self.gamma.powi(k as i32)
            }
            LrScheduleKind::Cosine => {
                let t = epoch as f64 / self.epochs as f64;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// The ρ schedule; the proportional one spans the learning rates the schedule takes.
    pub fn rho_schedule(&self) -> Result<RhoSchedule> {
        Ok(match self.rho_schedule {
            RhoScheduleKind::Constant => RhoSchedule::constant(self.rho)?,
            RhoScheduleKind::Proportional => {
                let lrs: Vec<f64> = (0..self.epochs).map(|e| self.lr_at(e)).collect();
                let lr_min = lrs.iter().copied().fold(f64::INFINITY, f64::min);
                let lr_max = lrs.iter().copied().fold(0.0, f64::max);
                if lr_max <= lr_min {
                    RhoSchedule::constant(self.rho)?
                } else {
                    RhoSchedule::proportional_to_lr(self.rho_min, self.rho, lr_min, lr_max)?
                }
            }
        })
    }

    /// The base optimizer with PyTorch conventions.
    pub fn base_optimizer(&self) -> Result<burn::optim::ModuleOptimizer> {
        Ok(match self.optimizer {
            OptimizerKind::Sgd => base::sgd(self.momentum, self.weight_decay, self.nesterov)?,
            OptimizerKind::Adam => {
                base::adam(self.beta1, self.beta2, self.adam_eps, self.weight_decay)?
            }
            OptimizerKind::Adamw => {
                base::adamw(self.beta1, self.beta2, self.adam_eps, self.weight_decay)?
            }
        })
    }

    /// A short label, e.g. `fashion-mnist-C/cnn/msam/seed0`.
    pub fn label(&self) -> String {
        format!(
            "{}{}/{}/{}/seed{}",
            self.dataset,
            self.variant.suffix(),
            self.model,
            self.method,
            self.seed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_ids_cover_every_flag() {
        let params = MethodParams::augment_args(clap::Command::new("p"));
        let params: Vec<&str> = params
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .collect();
        let all = TrainConfig::augment_args(clap::Command::new("t"));
        for arg in all.get_arguments() {
            let id = arg.get_id().as_str();
            assert!(
                FLAG_IDS.contains(&id) || params.contains(&id),
                "--config does not conflict with `{id}`"
            );
        }
    }
}
