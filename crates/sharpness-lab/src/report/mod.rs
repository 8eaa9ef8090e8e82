//! Report helpers shared by every experiment: result files ([`files`]: atomic writes, CSV),
//! Markdown ([`markdown`]: sections, tables) and figures ([`plot`]: multi-panel PNG/SVG with
//! plotters); each experiment keeps its own figures and prose apart from its computation and
//! builds them from these.

pub mod files;
pub mod markdown;
pub mod plot;

pub use files::{csv_bytes, temp_file_pid, temp_path, write_atomic};
pub use markdown::{ReportSection, assemble_report, markdown_table};
pub use plot::{Arrow, ColorMap, Field, Figure, Heatmap, PALETTE, Panel, Series, Style, histogram};

use anyhow::Result;

/// For command dispatch: on error, prints `error: …` (the whole cause chain on one line, never a
/// backtrace, whatever `RUST_BACKTRACE` says) to stderr and exits with status 1 (clap's usage
/// errors have 2).
pub fn exit_on_error(result: Result<()>) -> Result<()> {
    if let Err(e) = result {
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
    Ok(())
}
