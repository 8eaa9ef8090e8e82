//! `sharpness-lab`: reproduce the SAM-family papers' experiments with the `sharpness` library.

use anyhow::Result;
use clap::{Parser, Subcommand};

// Burn's eager CPU backend allocates many small buffers per operation; on the toy landscapes
// (2 parameters) allocation is a third of the run time with the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`, index 15 of `mi_option_e` in mimalloc v2 and v3 (not exported by
/// `libmimalloc-sys`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in the process. Flex allocates and frees buffers of megabytes for every
/// convolution and batch norm; by default mimalloc (v3) hands freed pages back to the OS after
/// 1 s, so the steps keep faulting them in again and the kernel zeroes them (`perf`: `clear_page_erms`,
/// 8–11 % of a one-thread CNN or ResNet-8 SAM step). The peak footprint is unchanged.
fn keep_freed_pages() {
    // -1 = never purge. Read at every purge decision, so setting it here, after the allocator's
    // start-up, takes effect.
    // A delay the user set in the environment wins (e.g. `MIMALLOC_PURGE_DELAY=1000`, mimalloc's default).
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain write to mimalloc's option table, made first thing in `main`, before
        // any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

/// Experiments, data and reports for sharpness-aware minimization.
#[derive(Parser)]
#[command(name = "sharpness-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where networks train and benchmarks run (the toy landscapes always run on the CPU).
    #[arg(long, global = true, value_enum, default_value_t)]
    device: sharpness_lab::device::DeviceChoice,
}

#[derive(Subcommand)]
enum Command {
    // CLI-COMMANDS (one variant per subcommand; keep this marker)
    /// Explicit-bias experiment (universal SAM Fig. 2): ‖∇²L‖²_F and tr ∇²L while Frob-/Trace-SAM train an MNIST MLP.
    Bias(sharpness_lab::experiments::bias::BiasArgs),
    /// Train a network with any method (progress bar, CSV/JSON metrics, checkpoints, --resume).
    Train(Box<sharpness_lab::train::cli::TrainArgs>),
    /// The comparison table (Tables 2–3 protocol on MNIST/Fashion-MNIST × full/-S/-C).
    Table(sharpness_lab::train::cli::TableArgs),
    /// Data set-up: fetch or verify MNIST and Fashion-MNIST in the cache.
    Data {
        #[command(subcommand)]
        command: sharpness_lab::train::cli::DataCommand,
    },
    /// Training throughput (examples/s) of SGD and each SAM-family method.
    Bench(sharpness_lab::train::cli::BenchArgs),
    /// Toy landscapes (Monge SAM Figures 1-5): single runs, grids, stability matrices.
    Toy {
        #[command(subcommand)]
        command: sharpness_lab::toys::cli::ToyCommand,
    },
    /// Monge SAM §4.1 (Fig. 6): fine-tune a bad global minimum with SGD, SAM and M-SAM.
    BadMinimum(sharpness_lab::experiments::monge::finetune::FinetuneArgs),
    /// Monge SAM robustness claim: divergence of SAM and M-SAM over learning rate × ρ.
    Robustness(sharpness_lab::experiments::monge::grid::GridArgs),
    /// Cross-modal alignment set-up (Monge SAM §4.2): fetch encoders and image–text pairs, cache features.
    Align {
        #[command(subcommand)]
        command: sharpness_lab::align::cli::AlignCommand,
    },
    /// Monge SAM §4.2 (Tables 1–3, Fig. 7): CLIP heads fine-tuned with SGD, Adam, SAM, M-SAM; mutual k-NN alignment.
    Alignment(sharpness_lab::experiments::monge::PresetArgs),
    /// Run every lab experiment into a results directory with figures, data and report.md.
    Reproduce(sharpness_lab::reproduce::ReproduceArgs),
}

fn main() -> Result<()> {
    keep_freed_pages();
    let cli = Cli::parse();
    // Every error leaves through one place: one line, exit status 1, no backtrace.
    sharpness_lab::report::exit_on_error(sharpness_lab::device::select(cli.device))?;
    sharpness_lab::report::exit_on_error(match cli.command {
        // CLI-DISPATCH (one arm per subcommand; keep this marker)
        Command::Bias(args) => sharpness_lab::experiments::bias::cli(args),
        Command::Train(args) => sharpness_lab::train::cli::train(*args),
        Command::Table(args) => sharpness_lab::train::cli::table(args),
        Command::Data { command } => sharpness_lab::train::cli::data(command),
        Command::Bench(args) => sharpness_lab::train::cli::bench(args),
        Command::Toy { command } => sharpness_lab::toys::cli::run(command),
        Command::BadMinimum(args) => sharpness_lab::experiments::monge::finetune::cli(args),
        Command::Robustness(args) => sharpness_lab::experiments::monge::grid::cli(args),
        Command::Align { command } => sharpness_lab::align::cli::run(command),
        Command::Alignment(args) => sharpness_lab::experiments::monge::alignment::cli(args),
        Command::Reproduce(args) => sharpness_lab::reproduce::run(&args),
    })
}

#[cfg(test)]
mod tests {
    use super::MI_OPTION_PURGE_DELAY;

    /// Pins the option's index: mimalloc v3's default purge delay is 1000 ms (`options.c`).
    #[test]
    fn the_purge_delay_option_has_its_documented_default() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads (and lazily initialises from the environment) one option.
            assert_eq!(
                unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
                1000
            );
        }
    }
}
