//! Robustness to the hyperparameters (Monge SAM, §4.2 and Appendix B, Table 3: "M-SAM is more
//! robust to the choice of hyperparameters"; there SAM diverged in 12 of 15 (α, ρ) cells of a
//! CLIP fine-tune, M-SAM in 2 of 12). Here: the lab's MLP on a Fashion-MNIST subset, trained from
//! the same initialisation for every cell of a learning rate × ρ grid, per method, once per seed
//! (the seed sets the initialisation and the batch order).
//!
//! A cell **diverged** ([`divergence`]) if a loss was non-finite (the library refuses such a step),
//! or if the training loss at the end of an epoch (measured on the whole training subset, in
//! evaluation mode) is above the loss of the initialisation. A divergent cell stops there.
//!
//! Cells are saved as they finish (`robustness/records.csv` under a key of the settings and the
//! data), so an interrupted grid continues with the first cell it had not finished.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use indicatif::ProgressBar;
use plotters::style::RGBColor;
use serde::{Deserialize, Serialize};
use sharpness::SharpnessError;

use super::{ResumeFile, epoch, measure, optimizer};
use crate::data::{self, DatasetName, Split, Variant};
use crate::methods::Method;
use crate::models::{ModelKind, Network};
use crate::report::{
    ColorMap, Field, Figure, Heatmap, Panel, ReportSection, Series, Style, markdown_table,
    write_atomic,
};

/// The grid's settings.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Settings {
    /// Preset name.
    pub preset: String,
    /// Dataset.
    pub dataset: DatasetName,
    /// Training examples (the first ones).
    pub train_examples: usize,
    /// Test examples (the first ones).
    pub test_examples: usize,
    /// MLP hidden width.
    pub width: usize,
    /// Epochs per cell.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Momentum of the base SGD.
    pub momentum: f64,
    /// Methods with a ρ (SGD is run once per learning rate as the reference row).
    pub methods: Vec<Method>,
    /// Learning rates, a geometric sequence (the heat map's x axis is log₁₀ lr).
    pub lrs: Vec<f64>,
    /// Radii, a geometric sequence.
    pub rhos: Vec<f64>,
    /// Seeds of the initialisation and the batch order: the whole grid runs once per seed (a
    /// cell near the border between converging and diverging can go either way with the seed).
    pub seeds: Vec<u64>,
}

/// A cell of the grid: method, learning rate, ρ (0 for SGD) and seed.
type Key = (Method, f64, f64, u64);

/// `n` values 10^(lo + k·step), k = 0..n (exactly geometric, so the heat map's cells are regular).
fn powers_of_ten(lo: f64, step: f64, n: usize) -> Vec<f64> {
    (0..n).map(|k| 10f64.powf(lo + step * k as f64)).collect()
}

impl Settings {
    /// The full grid: lr 10^-2.5 … 10^0.5 (7) × ρ 10^-2 … 10^1 (7), SAM, M-SAM, ASAM, Fisher SAM,
    /// 8 192 examples, 8 epochs, 3 seeds.
    pub fn full() -> Self {
        Self {
            preset: "full".into(),
            dataset: DatasetName::FashionMnist,
            train_examples: 8192,
            test_examples: 10_000,
            width: 256,
            epochs: 8,
            batch_size: 128,
            momentum: 0.9,
            methods: vec![Method::Sam, Method::Msam, Method::Asam, Method::Fisher],
            lrs: powers_of_ten(-2.5, 0.5, 7),
            rhos: powers_of_ten(-2.0, 0.5, 7),
            seeds: vec![0, 1, 2],
        }
    }

    /// For `reproduce`: SAM and M-SAM, lr 10^-1.5 … 10^0.5 (5) × ρ 10^-2 … 10^1 (7), 2 048
    /// examples, 3 epochs, 3 seeds.
    pub fn reduced() -> Self {
        Self {
            preset: "reduced".into(),
            train_examples: 2048,
            test_examples: 2000,
            epochs: 3,
            methods: vec![Method::Sam, Method::Msam],
            lrs: powers_of_ten(-1.5, 0.5, 5),
            ..Self::full()
        }
    }

    /// Every cell, in the order they run: per seed, SGD per lr, then each method's lr × ρ.
    fn cells(&self) -> Vec<Key> {
        let mut cells = vec![];
        for &seed in &self.seeds {
            cells.extend(self.lrs.iter().map(|&lr| (Method::Sgd, lr, 0.0, seed)));
            for &method in &self.methods {
                for &rho in &self.rhos {
                    for &lr in &self.lrs {
                        cells.push((method, lr, rho, seed));
                    }
                }
            }
        }
        cells
    }
}

/// Why a run counts as diverged.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Divergence {
    /// A loss was NaN or infinite.
    NonFinite,
    /// The training loss after an epoch was above the initial one.
    AboveInitial,
}

/// The divergence rule on a loss curve: `initial` is the loss at the initialisation, `epoch_ends`
/// the training losses at the end of each epoch so far (a NaN or ∞ among them, or in
/// `initial`, is a non-finite loss).
pub fn divergence(initial: f64, epoch_ends: &[f64]) -> Option<Divergence> {
    if !initial.is_finite() || epoch_ends.iter().any(|l| !l.is_finite()) {
        return Some(Divergence::NonFinite);
    }
    epoch_ends
        .iter()
        .any(|&l| l > initial)
        .then_some(Divergence::AboveInitial)
}

/// One finished cell.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    /// Method.
    pub method: Method,
    /// Learning rate.
    pub lr: f64,
    /// ρ (0 for SGD).
    pub rho: f64,
    /// Seed of the initialisation and the batch order.
    pub seed: u64,
    /// Training loss of the initialisation.
    pub initial_loss: f64,
    /// Training loss after the last epoch run (the divergent epoch for a divergent cell).
    pub final_loss: f64,
    /// Best test accuracy after any epoch (NaN if no epoch finished with finite weights).
    pub best_test_acc: f64,
    /// Epochs run (fewer than the setting when it diverged).
    pub epochs: usize,
    /// Why it diverged, if it did.
    pub diverged: Option<Divergence>,
    /// Seconds (not deterministic).
    pub seconds: f64,
}

impl Cell {
    fn is(&self, (method, lr, rho, seed): Key) -> bool {
        self.method == method && self.lr == lr && self.rho == rho && self.seed == seed
    }

    /// The same method, lr and ρ (any seed).
    fn at(&self, method: Method, lr: f64, rho: f64) -> bool {
        self.method == method && self.lr == lr && self.rho == rho
    }
}

/// Runs every cell of `cells` not in `earlier` with `run_cell`, saving all records after each
/// one with `save`; returns the records in `cells` order. The resume logic, apart from training.
fn run_cells(
    cells: &[Key],
    earlier: Vec<Cell>,
    mut run_cell: impl FnMut(Key) -> Result<Cell>,
    mut save: impl FnMut(&[Cell]) -> Result<()>,
) -> Result<Vec<Cell>> {
    let mut done: Vec<Cell> = earlier
        .into_iter()
        .filter(|c| cells.iter().any(|&k| c.is(k)))
        .collect();
    for &key in cells {
        if done.iter().any(|c| c.is(key)) {
            continue;
        }
        done.push(run_cell(key)?);
        save(&done)?;
    }
    Ok(cells
        .iter()
        .filter_map(|&k| done.iter().find(|c| c.is(k)).cloned())
        .collect())
}

/// Trains one cell from the shared initialisation; stops at divergence.
fn train_cell(
    (method, lr, rho, seed): Key,
    settings: &Settings,
    train: &Split,
    test: &Split,
    device: &Device,
) -> Result<Cell> {
    let started = Instant::now();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut model = Network::new(ModelKind::Mlp, settings.width, seed, device);
    let mut opt = optimizer(method, rho, settings.momentum)?;
    let (initial_loss, _) = measure(&model, train, &loss_fn, device);
    let (mut losses, mut best_test_acc) = (vec![], f64::NAN);
    let mut diverged = divergence(initial_loss, &losses);
    while diverged.is_none() && losses.len() < settings.epochs {
        let stepped = epoch(
            &mut opt,
            model.clone(),
            lr,
            train,
            settings.batch_size,
            (seed, losses.len()),
            &loss_fn,
            device,
        );
        match stepped {
            Ok((trained, _)) => {
                model = trained;
                let (loss, _) = measure(&model, train, &loss_fn, device);
                let (_, acc) = measure(&model, test, &loss_fn, device);
                losses.push(loss);
                if loss.is_finite() {
                    best_test_acc = best_test_acc.max(acc);
                }
            }
            // The library refuses a step with a NaN/∞ loss or gradient: that is divergence.
            Err(e)
                if e.downcast_ref::<SharpnessError>()
                    .is_some_and(|s| matches!(s, SharpnessError::NonFinite { .. })) =>
            {
                losses.push(f64::NAN);
            }
            Err(e) => return Err(e),
        }
        diverged = divergence(initial_loss, &losses);
    }
    Ok(Cell {
        method,
        lr,
        rho,
        seed,
        initial_loss,
        final_loss: losses.last().copied().unwrap_or(initial_loss),
        best_test_acc,
        epochs: losses.len(),
        diverged,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs the grid (the cells not finished by an earlier invocation), writes `out/robustness/`
/// (records CSV, cells JSON, heat maps) and returns the report section (links relative to `out`).
pub fn run(
    settings: &Settings,
    out: &Path,
    device: &Device,
    progress: &ProgressBar,
) -> Result<String> {
    let dir = out.join(DIR);
    let dataset = data::load_verified(
        settings.dataset,
        Variant::Full,
        &data::default_cache_dir(),
        0,
    )
    .with_context(|| format!("loading {}", settings.dataset))?;
    let train = data::subset(&dataset.train, settings.train_examples);
    let test = data::subset(&dataset.test, settings.test_examples);
    let resume = ResumeFile::new(
        &dir,
        serde_json::json!({ "settings": settings, "data_sha256": dataset.sha256 }),
    );
    let cells = settings.cells();
    progress.inc_length(cells.len() as u64);
    let started = Instant::now();
    let earlier: Vec<Cell> = resume.earlier();
    let finished = cells.iter().filter(|&&k| earlier.iter().any(|c| c.is(k)));
    progress.inc(finished.count() as u64);
    let records = run_cells(
        &cells,
        earlier,
        |key| {
            let cell = train_cell(key, settings, &train, &test, device)?;
            progress.set_message(format!(
                "robustness: {} lr {:.3} ρ {:.3} seed {}: {}",
                cell.method.display_name(),
                cell.lr,
                cell.rho,
                cell.seed,
                cell.diverged.map_or("converged", |_| "diverged")
            ));
            progress.inc(1);
            Ok(cell)
        },
        |done| resume.save(done),
    )?;
    write_atomic(
        &dir.join("cells.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "settings": settings, "cells": records }),
        )?
        .as_bytes(),
    )?;
    heatmaps(settings, &records).save(&dir.join("heatmaps"))?;
    Ok(section(settings, &records, started.elapsed().as_secs_f64()))
}

const DIR: &str = "robustness";

/// The paper's claim, quoted next to the verdict.
const CLAIM: &str = "M-SAM is more robust to the choice of hyperparameters than SAM: over a grid \
of learning rates × ρ it diverges in fewer cells (Appendix B, Table 3: SAM diverged in 12 of 15 \
CLIP fine-tuning settings, M-SAM in 2 of 12).";

/// Divergent cells of `method` in `seed`'s grid: (diverged, cells).
fn divergent_count(records: &[Cell], method: Method, seed: u64) -> (usize, usize) {
    let cells: Vec<_> = records
        .iter()
        .filter(|c| c.method == method && c.seed == seed)
        .collect();
    (
        cells.iter().filter(|c| c.diverged.is_some()).count(),
        cells.len(),
    )
}

/// The paper's claim against divergent-cell counts per seed (same seeds, same order).
#[derive(Debug, PartialEq)]
enum Verdict {
    /// M-SAM diverged in fewer cells than SAM in every seed's grid.
    Holds,
    /// Fewer in total, but not in every seed.
    FewerInTotalOnly,
    /// As many in total.
    Level,
    /// More in total.
    DoesNotHold,
}

fn verdict(sam: &[usize], msam: &[usize]) -> Verdict {
    let (s, m) = (sam.iter().sum::<usize>(), msam.iter().sum::<usize>());
    if sam.iter().zip(msam).all(|(s, m)| m < s) {
        Verdict::Holds
    } else if m < s {
        Verdict::FewerInTotalOnly
    } else if m == s {
        Verdict::Level
    } else {
        Verdict::DoesNotHold
    }
}

/// A method's cell at (lr, ρ) over the seeds: its divergent runs and the means of the others.
fn cell_text(cells: &[&Cell]) -> String {
    if cells.is_empty() {
        return "–".into();
    }
    let converged: Vec<_> = cells.iter().filter(|c| c.diverged.is_none()).collect();
    let d = cells.len() - converged.len();
    let n = converged.len() as f64;
    let acc = converged.iter().map(|c| c.best_test_acc).sum::<f64>() / n;
    let loss = converged.iter().map(|c| c.final_loss).sum::<f64>() / n;
    match (d, converged.is_empty()) {
        (0, _) => format!("{:.1} % / {loss:.3}", 100.0 * acc),
        (_, true) => format!("**✗** {d}/{}", cells.len()),
        _ => format!(
            "**✗** {d}/{}; {:.1} % / {loss:.3}",
            cells.len(),
            100.0 * acc
        ),
    }
}

fn section(settings: &Settings, records: &[Cell], seconds: f64) -> String {
    let mut headers = vec!["ρ \\ lr".to_string()];
    headers.extend(settings.lrs.iter().map(|&lr| format!("{lr:.3}")));
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let at = |method: Method, lr: f64, rho: f64| -> Vec<&Cell> {
        records.iter().filter(|c| c.at(method, lr, rho)).collect()
    };
    let per_seed = |method: Method| -> Vec<usize> {
        settings
            .seeds
            .iter()
            .map(|&seed| divergent_count(records, method, seed).0)
            .collect()
    };
    let total = |method: Method| -> (usize, usize) {
        settings
            .seeds
            .iter()
            .map(|&seed| divergent_count(records, method, seed))
            .fold((0, 0), |(d, n), (a, b)| (d + a, n + b))
    };
    let list = |v: &[usize]| {
        v.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut tables = String::new();
    let sgd = settings
        .lrs
        .iter()
        .map(|&lr| cell_text(&at(Method::Sgd, lr, 0.0)));
    tables.push_str(&format!(
        "**SGD** (reference, no ρ)\n\n{}\n",
        markdown_table(
            &headers,
            &[std::iter::once("–".to_string()).chain(sgd).collect()]
        )
    ));
    for &method in &settings.methods {
        let rows: Vec<Vec<String>> = settings
            .rhos
            .iter()
            .map(|&rho| {
                std::iter::once(format!("{rho:.3}"))
                    .chain(
                        settings
                            .lrs
                            .iter()
                            .map(|&lr| cell_text(&at(method, lr, rho))),
                    )
                    .collect()
            })
            .collect();
        let (d, n) = total(method);
        tables.push_str(&format!(
            "\n**{}**: {d} of {n} runs diverged (per seed: {})\n\n{}\n",
            method.display_name(),
            list(&per_seed(method)),
            markdown_table(&headers, &rows)
        ));
    }
    let counts: Vec<String> = std::iter::once(Method::Sgd)
        .chain(settings.methods.iter().copied())
        .map(|m| {
            let (d, n) = total(m);
            format!("{} {d}/{n}", m.display_name())
        })
        .collect();
    let (sam, msam) = (per_seed(Method::Sam), per_seed(Method::Msam));
    let (sam_total, msam_total) = (total(Method::Sam), total(Method::Msam));
    let numbers = format!(
        "M-SAM diverged in {} of {} runs (per seed: {}), SAM in {} of {} (per seed: {})",
        msam_total.0,
        msam_total.1,
        list(&msam),
        sam_total.0,
        sam_total.1,
        list(&sam)
    );
    let verdict = match verdict(&sam, &msam) {
        Verdict::Holds => format!("**holds here**, in every seed's grid: {numbers}."),
        Verdict::FewerInTotalOnly => format!(
            "**not confirmed here**: fewer in total but not in every seed's grid: {numbers}."
        ),
        Verdict::Level => format!("**not confirmed here**: as many: {numbers}."),
        Verdict::DoesNotHold => format!("**does not hold here**: {numbers}."),
    };
    let train_seconds: f64 = records.iter().map(|c| c.seconds).sum();
    let seeds = list(
        &settings
            .seeds
            .iter()
            .map(|&s| s as usize)
            .collect::<Vec<_>>(),
    );
    format!(
        "**Paper's claim.** {CLAIM}\n\n**Measured here** (preset `{}`): {verdict} Divergent runs \
         per method: {}.\n\n![robustness heat maps]({DIR}/heatmaps.png)\n\n*Top: best test \
         accuracy per cell, mean over the seeds that converged (viridis, dark = low); bottom: \
         log₁₀ of the final training loss, mean over seeds (bright = high, saturating at 10× the \
         initial loss; non-finite = brightest); red squares: diverged in every seed, orange: in \
         some (non-finite loss, or a training loss above the initial one after an epoch).*\n\n\
         Set-up: MLP 784–{w}–{w}–10 on the first {} {} training examples (test: first {}), \
         {} epochs, batch {}, SGD momentum {} without weight decay, constant lr and ρ; the whole \
         grid once per seed ({seeds}), the seed setting the initialisation and the batch order, \
         the same for every cell of that seed's grid; cross-entropy (NLL of the log-softmax). \
         The paper's grid was a CLIP fine-tune on WIT, which is not available here. Cells: best \
         test accuracy / final training loss, means over the seeds; **✗** k/n: diverged in k of \
         the n seeds (each run's loss where it stopped is in `{DIR}/records.csv`). {} runs, \
         {:.0} s of training in all (this invocation {seconds:.0} s).\n\n{tables}",
        settings.preset,
        counts.join(", "),
        settings.train_examples,
        settings.dataset,
        settings.test_examples,
        settings.epochs,
        settings.batch_size,
        settings.momentum,
        records.len(),
        train_seconds,
        w = settings.width,
    )
}

fn heatmaps(settings: &Settings, records: &[Cell]) -> Figure {
    let log = |v: &[f64]| (v[0].log10(), v[v.len() - 1].log10());
    let (x, y) = (log(&settings.lrs), log(&settings.rhos));
    let half = |r: (f64, f64), n: usize| (r.1 - r.0) / (2.0 * (n.max(2) - 1) as f64);
    let (hx, hy) = (half(x, settings.lrs.len()), half(y, settings.rhos.len()));
    let finite_losses: Vec<f64> = records
        .iter()
        .map(|c| c.final_loss.log10())
        .filter(|v| v.is_finite())
        .collect();
    // Losses above 10× the initial one saturate the colour (divergent losses reach 10¹³).
    let initial = records.first().map_or(f64::NAN, |c| c.initial_loss.log10());
    let loss_range = (
        finite_losses.iter().copied().fold(f64::INFINITY, f64::min),
        finite_losses
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .min(initial + 1.0),
    );
    let accs: Vec<f64> = records
        .iter()
        .map(|c| 100.0 * c.best_test_acc)
        .filter(|v| v.is_finite())
        .collect();
    let acc_range = (
        accs.iter().copied().fold(f64::INFINITY, f64::min),
        accs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let mut panels = vec![];
    for (what, range) in [
        ("best test accuracy (%)", acc_range),
        ("log10 final training loss", loss_range),
    ] {
        for &method in &settings.methods {
            let (mut values, mut every, mut some) = (vec![], vec![], vec![]);
            for &rho in &settings.rhos {
                for &lr in &settings.lrs {
                    let cells: Vec<_> = records.iter().filter(|c| c.at(method, lr, rho)).collect();
                    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
                    // A seed that diverged has no accuracy; its loss makes the mean non-finite or large.
                    let v = match what.starts_with("best") {
                        true => mean(
                            cells
                                .iter()
                                .filter(|c| c.diverged.is_none())
                                .map(|c| 100.0 * c.best_test_acc)
                                .collect(),
                        ),
                        false => mean(cells.iter().map(|c| c.final_loss.log10()).collect()),
                    };
                    // Unmeasured or non-finite cells take the worst colour; the marker says why.
                    values.push(if v.is_finite() {
                        v
                    } else if what.starts_with("best") {
                        range.0
                    } else {
                        range.1
                    });
                    let d = cells.iter().filter(|c| c.diverged.is_some()).count();
                    if d > 0 {
                        let at = (lr.log10(), rho.log10());
                        match d == cells.len() {
                            true => every.push(at),
                            false => some.push(at),
                        }
                    }
                }
            }
            let mut panel = Panel::new(
                format!("{}: {what}", method.display_name()),
                "log10 learning rate",
                "log10 ρ",
                (x.0 - hx, x.1 + hx),
                (y.0 - hy, y.1 + hy),
            );
            panel.heatmap = Some(Heatmap {
                field: Field {
                    nx: settings.lrs.len(),
                    ny: settings.rhos.len(),
                    x,
                    y,
                    values,
                },
                colormap: ColorMap::Viridis,
                range,
                contours: vec![],
            });
            panel.series.push(Series::new(
                "diverged in every seed",
                every,
                RGBColor(220, 20, 20),
                Style::Squares(5),
            ));
            panel.series.push(Series::new(
                "diverged in some seeds",
                some,
                RGBColor(245, 150, 20),
                Style::Squares(5),
            ));
            panel.legend = None;
            panels.push(panel);
        }
    }
    Figure {
        title: format!(
            "Robustness grid, {} ({}): red = diverged in every seed, orange = in some",
            settings.dataset, settings.preset
        ),
        cols: settings.methods.len(),
        panels,
        panel_size: (440, 380),
    }
}

/// `sharpness-lab robustness` flags.
pub type GridArgs = super::PresetArgs;

/// `sharpness-lab robustness`.
pub fn cli(args: GridArgs) -> Result<()> {
    let settings = match args.reduced {
        true => Settings::reduced(),
        false => Settings::full(),
    };
    super::command(&args, DIR, TITLE, |out, device, progress| {
        run(&settings, out, device, progress)
    })
}

const TITLE: &str = "Robustness of SAM and M-SAM to learning rate × ρ (Monge SAM, Appendix B)";

/// The reduced preset as a section of `reproduce`.
pub fn reproduce(out: &Path, progress: &ProgressBar) -> Result<ReportSection> {
    super::reproduce_section(
        out,
        progress,
        TITLE,
        "robustness",
        |out, device, progress| run(&Settings::reduced(), out, device, progress),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergence_rule_on_hand_made_curves() {
        assert_eq!(divergence(2.3, &[]), None);
        assert_eq!(divergence(2.3, &[1.0, 0.5, 0.4]), None);
        // Equal to the initial loss is not above it.
        assert_eq!(divergence(2.3, &[2.3]), None);
        assert_eq!(
            divergence(2.3, &[1.0, 2.31]),
            Some(Divergence::AboveInitial)
        );
        assert_eq!(
            divergence(2.3, &[1.0, f64::NAN]),
            Some(Divergence::NonFinite)
        );
        assert_eq!(
            divergence(2.3, &[f64::INFINITY]),
            Some(Divergence::NonFinite)
        );
        // Non-finite wins over above-initial.
        assert_eq!(
            divergence(2.3, &[5.0, f64::NAN]),
            Some(Divergence::NonFinite)
        );
        assert_eq!(divergence(f64::NAN, &[]), Some(Divergence::NonFinite));
    }

    fn cell((method, lr, rho, seed): Key) -> Cell {
        Cell {
            method,
            lr,
            rho,
            seed,
            initial_loss: 2.3,
            final_loss: lr * rho,
            best_test_acc: 0.5,
            epochs: 1,
            // Both kinds and none, so that the CSV round trip of each is exercised.
            diverged: [
                None,
                Some(Divergence::NonFinite),
                Some(Divergence::AboveInitial),
            ][((lr * 10.0 + rho * 100.0) as usize + seed as usize) % 3],
            seconds: 0.0,
        }
    }

    #[test]
    fn an_interrupted_grid_runs_only_its_unfinished_cells() {
        let settings = Settings {
            methods: vec![Method::Sam, Method::Msam],
            lrs: vec![0.1, 1.0],
            rhos: vec![0.01, 0.1],
            seeds: vec![4, 7],
            ..Settings::reduced()
        };
        let cells = settings.cells();
        assert_eq!(cells.len(), 2 * (2 + 2 * 2 * 2));
        let tmp = tempfile::tempdir().unwrap();
        let resume = ResumeFile::new(tmp.path(), serde_json::json!({ "settings": settings }));
        // First invocation: interrupted (an error) in the second seed's grid.
        let mut trained = vec![];
        let interrupted = run_cells(
            &cells,
            resume.earlier(),
            |key| {
                if trained.len() == 13 {
                    anyhow::bail!("interrupted");
                }
                trained.push(key);
                Ok(cell(key))
            },
            |done| resume.save(done),
        );
        assert!(interrupted.is_err());
        assert_eq!(trained, cells[..13]);
        assert_eq!(cells[12].3, 7);
        // Second invocation: only the rest run, and every cell comes back in grid order.
        let mut rest = vec![];
        let all = run_cells(
            &cells,
            resume.earlier(),
            |key| {
                rest.push(key);
                Ok(cell(key))
            },
            |done| resume.save(done),
        )
        .unwrap();
        assert_eq!(rest, cells[13..]);
        assert_eq!(all, cells.iter().map(|&k| cell(k)).collect::<Vec<_>>());
        // Under other settings nothing is reused.
        let other = ResumeFile::new(tmp.path(), serde_json::json!({ "settings": "other" }));
        assert!(other.earlier::<Cell>().is_empty());
    }

    #[test]
    fn the_claim_holds_only_with_fewer_divergent_cells_in_every_seed() {
        assert_eq!(verdict(&[20, 22, 21], &[18, 21, 20]), Verdict::Holds);
        // Fewer in total (59 < 63) but one seed the other way.
        assert_eq!(
            verdict(&[20, 22, 21], &[21, 18, 20]),
            Verdict::FewerInTotalOnly
        );
        assert_eq!(verdict(&[20, 22], &[22, 20]), Verdict::Level);
        assert_eq!(verdict(&[20, 22], &[22, 21]), Verdict::DoesNotHold);
        // A tie in one seed is not "fewer in every seed".
        assert_eq!(verdict(&[20, 22], &[20, 21]), Verdict::FewerInTotalOnly);
    }

    #[test]
    fn cells_summarise_their_seeds() {
        let run = |seed, diverged: Option<Divergence>, acc, loss| Cell {
            seed,
            diverged,
            best_test_acc: acc,
            final_loss: loss,
            ..cell((Method::Sam, 0.1, 0.01, seed))
        };
        let (a, b, c) = (
            run(0, None, 0.70, 0.5),
            run(1, None, 0.80, 0.3),
            run(2, Some(Divergence::NonFinite), f64::NAN, f64::NAN),
        );
        assert_eq!(cell_text(&[&a, &b]), "75.0 % / 0.400");
        assert_eq!(cell_text(&[&a, &b, &c]), "**✗** 1/3; 75.0 % / 0.400");
        assert_eq!(cell_text(&[&c]), "**✗** 1/1");
        assert_eq!(cell_text(&[]), "–");
    }

    #[test]
    fn grids_are_geometric() {
        let s = Settings::full();
        for v in [&s.lrs, &s.rhos] {
            let ratios: Vec<f64> = v.windows(2).map(|w| w[1] / w[0]).collect();
            assert!(
                ratios.iter().all(|r| (r - 10f64.sqrt()).abs() < 1e-12),
                "{ratios:?}"
            );
        }
    }
}
