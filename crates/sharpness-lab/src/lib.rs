//! `sharpness-lab`: experiments, data, models and reports for the `sharpness` library.
pub mod data;
pub mod methods;
