//! The methods the lab can run, by name, with their hyperparameters as command-line flags.
//!
//! One place maps a method name to a library estimator, so the toy landscapes and the neural
//! networks run through the very same optimizer code.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use sharpness::perturb::{Asam, AsamScope, FisherSam, InfoSam, MongeSam, Sam, Ssam, TwoPass};
use sharpness::universal::{self, Sampler};
use sharpness::{GradientEstimator, Plain};

/// A method of the SAM family (or plain gradient descent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Plain (stochastic) gradient descent: the base optimizer alone.
    Gd,
    /// SAM.
    Sam,
    /// ASAM.
    Asam,
    /// Fisher SAM.
    Fisher,
    /// Monge SAM.
    Msam,
    /// SSAM-F.
    Ssam,
    /// infoSAM.
    Infosam,
    /// Trace-SAM (universal class).
    TraceSam,
    /// Frob-SAM (universal class).
    FrobSam,
    /// Det-SAM (universal class).
    DetSam,
}

impl Method {
    /// Every method, in the order reports list them.
    pub const ALL: [Method; 10] = [
        Method::Gd,
        Method::Sam,
        Method::Asam,
        Method::Fisher,
        Method::Msam,
        Method::Ssam,
        Method::Infosam,
        Method::TraceSam,
        Method::FrobSam,
        Method::DetSam,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Gd => "gd",
            Method::Sam => "sam",
            Method::Asam => "asam",
            Method::Fisher => "fisher",
            Method::Msam => "msam",
            Method::Ssam => "ssam",
            Method::Infosam => "infosam",
            Method::TraceSam => "trace-sam",
            Method::FrobSam => "frob-sam",
            Method::DetSam => "det-sam",
        }
    }

    /// The name papers and reports use.
    pub fn display_name(self) -> &'static str {
        match self {
            Method::Gd => "GD/SGD",
            Method::Sam => "SAM",
            Method::Asam => "ASAM",
            Method::Fisher => "Fisher SAM",
            Method::Msam => "M-SAM",
            Method::Ssam => "SSAM-F",
            Method::Infosam => "infoSAM",
            Method::TraceSam => "Trace-SAM",
            Method::FrobSam => "Frob-SAM",
            Method::DetSam => "Det-SAM",
        }
    }

    /// Whether the method needs per-example losses (SSAM's Fisher mask).
    pub fn needs_example_losses(self) -> bool {
        self == Method::Ssam
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        let name = match lower.as_str() {
            "sgd" => "gd",
            "m-sam" | "monge" => "msam",
            "trace" => "trace-sam",
            "frob" => "frob-sam",
            "det" => "det-sam",
            other => other,
        };
        match Method::ALL.iter().find(|m| m.name() == name) {
            Some(m) => Ok(*m),
            None => {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                bail!(
                    "unknown method `{s}` (expected one of: {})",
                    names.join(", ")
                )
            }
        }
    }
}

/// Hyperparameters other than ρ and the learning rate; unset flags take the library defaults.
#[derive(Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MethodParams {
    /// η of ASAM (T = |w| + η) and Fisher SAM (F = I + η g²). Default: ASAM 0.01, Fisher 1.0.
    #[arg(long)]
    pub eta: Option<f64>,
    /// ASAM: rescale every tensor (biases included) instead of only weights (the official scope).
    #[arg(long, default_value_t = false)]
    pub asam_all_tensors: bool,
    /// SSAM-F sparsity s ∈ [0, 1).
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    /// SSAM-F: single examples per Fisher mask estimate.
    #[arg(long, default_value_t = 16)]
    pub num_samples: usize,
    /// SSAM-F: refresh the mask every this many steps (default: once per epoch in training, as
    /// the reference code; every step on the deterministic toys).
    #[arg(long)]
    pub refresh_every: Option<u64>,
    /// infoSAM: weight of the past in the gradient moving average.
    #[arg(long, default_value_t = InfoSam::DEFAULT_ALPHA)]
    pub alpha: f64,
    /// infoSAM: damping added to the variance estimate.
    #[arg(long, default_value_t = InfoSam::DEFAULT_DAMPING)]
    pub damping: f64,
    /// Universal class: strength λ.
    #[arg(long, default_value_t = 1.0)]
    pub lambda: f64,
    /// Universal class: samples m per step (Frob-SAM needs m ≥ 2).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Trace-SAM: per-coordinate Gaussian samples (as the reference code ran) instead of the sphere.
    #[arg(long, default_value_t = false)]
    pub trace_gaussian: bool,
    /// Det-SAM: half-width a of the sampling hypercube.
    #[arg(long, default_value_t = 0.01)]
    pub half_width: f64,
    /// Seed of the universal class's sampler.
    #[arg(long, default_value_t = 0)]
    pub sampler_seed: u64,
}

impl Default for MethodParams {
    fn default() -> Self {
        Self {
            eta: None,
            asam_all_tensors: false,
            sparsity: 0.5,
            num_samples: 16,
            refresh_every: None,
            alpha: InfoSam::DEFAULT_ALPHA,
            damping: InfoSam::DEFAULT_DAMPING,
            lambda: 1.0,
            samples: None,
            trace_gaussian: false,
            half_width: 0.01,
            sampler_seed: 0,
        }
    }
}

/// The library estimator for `method` (invalid hyperparameters are rejected here, with the
/// library's message).
pub fn estimator(method: Method, params: &MethodParams) -> Result<Box<dyn GradientEstimator>> {
    let boxed: Box<dyn GradientEstimator> = match method {
        Method::Gd => Box::new(Plain),
        Method::Sam => Box::new(TwoPass::new(Sam)),
        Method::Msam => Box::new(TwoPass::new(MongeSam)),
        Method::Asam => {
            let scope = if params.asam_all_tensors {
                AsamScope::All
            } else {
                AsamScope::Weights
            };
            Box::new(TwoPass::new(Asam::new(
                params.eta.unwrap_or(Asam::DEFAULT_ETA),
                scope,
            )?))
        }
        Method::Fisher => Box::new(TwoPass::new(FisherSam::new(
            params.eta.unwrap_or(FisherSam::DEFAULT_ETA),
        )?)),
        Method::Ssam => Box::new(TwoPass::new(Ssam::new(
            params.sparsity,
            params.num_samples,
            params.refresh_every.unwrap_or(1),
        )?)),
        Method::Infosam => Box::new(TwoPass::new(InfoSam::new(params.alpha, params.damping)?)),
        Method::TraceSam => {
            let sampler = if params.trace_gaussian {
                Sampler::Gaussian
            } else {
                Sampler::Sphere
            };
            Box::new(universal::trace_sam(
                params.lambda,
                params.samples.unwrap_or(1),
                sampler,
                params.sampler_seed,
            )?)
        }
        Method::FrobSam => Box::new(universal::frob_sam(
            params.lambda,
            params.samples.unwrap_or(2),
            params.sampler_seed,
        )?),
        Method::DetSam => Box::new(universal::det_sam(
            params.lambda,
            params.samples.unwrap_or(1),
            params.half_width,
            params.sampler_seed,
        )?),
    };
    Ok(boxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_rejected() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
            assert_eq!(
                estimator(m, &MethodParams::default())
                    .unwrap()
                    .name()
                    .replace("sgd", "gd"),
                m.name()
            );
        }
        assert_eq!("SGD".parse::<Method>().unwrap(), Method::Gd);
        let err = "adamsam".parse::<Method>().unwrap_err().to_string();
        assert!(err.contains("unknown method `adamsam`"), "{err}");
    }

    #[test]
    fn invalid_hyperparameters_are_reported() {
        let params = MethodParams {
            samples: Some(1),
            ..MethodParams::default()
        };
        let err = estimator(Method::FrobSam, &params)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("samples"), "{err}");
    }
}
