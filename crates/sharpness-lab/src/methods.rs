//! The methods the lab can run: their names, their table (report name, colour, default
//! hyperparameters) and their hyperparameters as command-line flags.
//!
//! One place maps a method to a library estimator, so the toy landscapes and the neural
//! networks run through the very same optimizer code. Adding a method: a variant of [`Method`]
//! (its command-line, file and CSV name is the variant's name in kebab case), its row in
//! [`Method::spec`] and its arm in [`estimator`]; the compiler points at the experiments whose
//! protocols choose per-method settings (e.g. the comparison table's ρ).

use anyhow::Result;
use clap::{Args, ValueEnum};
use plotters::style::RGBColor;
use serde::{Deserialize, Serialize};
use sharpness::perturb::{Asam, AsamScope, FisherSam, InfoSam, MongeSam, Sam, Ssam, TwoPass};
use sharpness::universal::{self, Sampler};
use sharpness::{GradientEstimator, Plain};

/// A method of the SAM family (or plain training).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Method {
    /// Plain training: the base optimizer alone (the library's `sgd`; `gd`, the lab's former
    /// name, is still accepted).
    #[serde(alias = "gd")]
    #[value(alias = "gd")]
    Sgd,
    /// SAM.
    Sam,
    /// ASAM.
    Asam,
    /// Fisher SAM.
    Fisher,
    /// Monge SAM.
    #[value(aliases = ["m-sam", "monge"])]
    Msam,
    /// SSAM-F.
    Ssam,
    /// infoSAM.
    Infosam,
    /// Trace-SAM (universal class).
    #[value(alias = "trace")]
    TraceSam,
    /// Frob-SAM (universal class).
    #[value(alias = "frob")]
    FrobSam,
    /// Det-SAM (universal class).
    #[value(alias = "det")]
    DetSam,
}

/// A method's row of the lab's table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MethodSpec {
    /// The name papers and reports use.
    pub display_name: &'static str,
    /// Its colour in every figure.
    pub color: RGBColor,
    /// η (ASAM's T = |w| + η, Fisher's F = I + η g²) when `--eta` is not given.
    pub eta: Option<f64>,
    /// Samples m per step (universal class) when `--samples` is not given.
    pub samples: Option<usize>,
}

impl Method {
    /// The command-line name (also the name in file paths, CSV and JSON).
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// The method's row of the table. Colours: Okabe–Ito and extras, colour-blind friendly.
    pub fn spec(self) -> MethodSpec {
        let row = |display_name, (r, g, b), eta, samples| MethodSpec {
            display_name,
            color: RGBColor(r, g, b),
            eta,
            samples,
        };
        match self {
            Method::Sgd => row("SGD", (0, 114, 178), None, None),
            Method::Sam => row("SAM", (213, 94, 0), None, None),
            Method::Asam => row("ASAM", (0, 158, 115), Some(Asam::DEFAULT_ETA), None),
            Method::Fisher => row(
                "Fisher SAM",
                (204, 121, 167),
                Some(FisherSam::DEFAULT_ETA),
                None,
            ),
            Method::Msam => row("M-SAM", (230, 159, 0), None, None),
            Method::Ssam => row("SSAM-F", (86, 180, 233), None, None),
            Method::Infosam => row("infoSAM", (0, 0, 0), None, None),
            Method::TraceSam => row("Trace-SAM", (240, 228, 66), None, Some(1)),
            // Frob-SAM's estimate of ‖∇²L‖²_F needs two samples.
            Method::FrobSam => row("Frob-SAM", (127, 60, 141), None, Some(2)),
            Method::DetSam => row("Det-SAM", (102, 102, 102), None, Some(1)),
        }
    }

    /// The name papers and reports use.
    pub fn display_name(self) -> &'static str {
        self.spec().display_name
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
    let spec = method.spec();
    // A method that uses η or m has its default in the table (the round-trip test builds every
    // method with the default flags).
    let eta = || params.eta.or(spec.eta).expect("the table gives η");
    let samples = || params.samples.or(spec.samples).expect("the table gives m");
    let boxed: Box<dyn GradientEstimator> = match method {
        Method::Sgd => Box::new(Plain),
        Method::Sam => Box::new(TwoPass::new(Sam)),
        Method::Msam => Box::new(TwoPass::new(MongeSam)),
        Method::Asam => {
            let scope = if params.asam_all_tensors {
                AsamScope::All
            } else {
                AsamScope::Weights
            };
            Box::new(TwoPass::new(Asam::new(eta(), scope)?))
        }
        Method::Fisher => Box::new(TwoPass::new(FisherSam::new(eta())?)),
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
                samples(),
                sampler,
                params.sampler_seed,
            )?)
        }
        Method::FrobSam => Box::new(universal::frob_sam(
            params.lambda,
            samples(),
            params.sampler_seed,
        )?),
        Method::DetSam => Box::new(universal::det_sam(
            params.lambda,
            samples(),
            params.half_width,
            params.sampler_seed,
        )?),
    };
    Ok(boxed)
}

#[cfg(test)]
mod tests {
    use strum::VariantArray;

    use super::*;

    #[test]
    fn every_method_builds_with_the_default_flags_under_its_library_name() {
        for &m in Method::VARIANTS {
            let built = estimator(m, &MethodParams::default()).unwrap();
            assert_eq!(built.name(), m.name());
        }
    }

    #[test]
    fn old_names_and_any_case_are_accepted() {
        for (name, method) in [
            ("gd", Method::Sgd),
            ("SGD", Method::Sgd),
            ("monge", Method::Msam),
            ("M-SAM", Method::Msam),
            ("frob", Method::FrobSam),
        ] {
            assert_eq!(Method::from_str(name, true), Ok(method), "{name}");
        }
        assert!(Method::from_str("adamsam", true).is_err());
        let old: Method = serde_json::from_str("\"gd\"").unwrap();
        assert_eq!(old, Method::Sgd);
        assert_eq!(serde_json::to_string(&Method::Sgd).unwrap(), "\"sgd\"");
    }

    #[test]
    fn every_method_has_its_own_colour() {
        for (i, a) in Method::VARIANTS.iter().enumerate() {
            for b in &Method::VARIANTS[..i] {
                assert_ne!(a.spec().color, b.spec().color, "{a} and {b}");
            }
        }
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
