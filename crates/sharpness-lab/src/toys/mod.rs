//! The toy landscapes of the Monge SAM paper (Figures 1–5; `docs/algorithms.md` §9.1–9.2), run through the
//! library's optimizer exactly like a network: see [`loss`] for the losses, [`sim`] for runs and
//! the stability matrix, [`cli`] for `sharpness-lab toy`, [`figures`] for `reproduce`.

pub mod cli;
pub mod figures;
pub mod loss;
pub mod sim;

pub use figures::reproduce;
pub use loss::{Loss, Point, ToyObjective};
