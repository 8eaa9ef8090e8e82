//! Experiments built on the training loop.

pub mod bias;
pub mod monge;
pub mod table;
