//! `sharpness-lab`: experiments, data, models and reports for the `sharpness` library.
pub mod align;
pub mod data;
pub mod device;
pub mod experiments;
pub mod limits;
pub mod methods;
pub mod models;
#[cfg(test)]
mod names;
pub mod outdir;
pub mod report;
pub mod reproduce;
pub mod stats;
pub mod toys;
pub mod train;
