//! `sharpness-lab`: reproduce the SAM-family papers' experiments.
fn main() {}
