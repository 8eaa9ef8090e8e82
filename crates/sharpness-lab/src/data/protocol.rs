//! Data protocols: the "-S" subset, "-C" label noise, epoch shuffling, quick subsets.
//!
//! All randomness comes from `xoshiro256++` seeded through SplitMix64
//! ([`rand::rngs::Xoshiro256PlusPlus`]), a fully specified generator, so a seed gives
//! the same flips and orders on every platform. Each use mixes a distinct domain
//! tag into the seed, so the label-noise stream and the epoch-order streams of one
//! seed are unrelated.

use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::Split;

/// Fraction of the training set kept by the "-S" variant.
pub const SMALL_FRACTION: f64 = 0.1;
/// Fraction of training labels flipped by the "-C" variant.
pub const CORRUPT_FRACTION: f64 = 0.2;

const LABEL_NOISE_DOMAIN: u64 = 0x6c61_6265_6c2d_6e6f; // "label-no"
const EPOCH_ORDER_DOMAIN: u64 = 0x6570_6f63_682d_6f72; // "epoch-or"

/// The record of a label-noise corruption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelNoise {
    /// Seed the flips were drawn with.
    pub seed: u64,
    /// Indices (into the training split) whose label was flipped, ascending.
    pub indices: Vec<usize>,
    /// The original (clean) label of each flipped index, parallel to `indices`.
    pub original: Vec<u8>,
}

/// `round(fraction * n)`, the number of examples a protocol fraction selects.
pub fn fraction_count(n: usize, fraction: f64) -> usize {
    ((n as f64) * fraction).round() as usize
}

/// Flips `round(fraction * labels.len())` labels, chosen uniformly without
/// replacement, each to a uniformly chosen *different* class in `0..num_classes`.
///
/// Deterministic in `seed`. Returns which indices were flipped and their clean
/// labels. Panics if `fraction` is outside `[0, 1]` or `num_classes < 2`.
pub fn flip_labels(labels: &mut [u8], fraction: f64, num_classes: u8, seed: u64) -> LabelNoise {
    assert!(
        (0.0..=1.0).contains(&fraction),
        "fraction {fraction} not in [0, 1]"
    );
    assert!(num_classes >= 2, "need at least two classes to flip labels");
    let mut rng = seeded(LABEL_NOISE_DOMAIN, seed, 0);
    let count = fraction_count(labels.len(), fraction);
    let mut indices = rand::seq::index::sample(&mut rng, labels.len(), count).into_vec();
    indices.sort_unstable();
    let original: Vec<u8> = indices.iter().map(|&i| labels[i]).collect();
    for &i in &indices {
        let shift = rng.random_range(1..num_classes);
        labels[i] = (labels[i] + shift) % num_classes;
    }
    LabelNoise {
        seed,
        indices,
        original,
    }
}

/// A permutation of `0..n` for one epoch; depends only on `(n, seed, epoch)`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut seeded(EPOCH_ORDER_DOMAIN, seed, epoch as u64));
    order
}

/// The first `count` examples of `split` (all of them if `count >= split.n`).
pub fn subset(split: &Split, count: usize) -> Split {
    let count = count.min(split.n);
    let pixels = split.images.len() / split.n.max(1);
    Split {
        images: split.images[..count * pixels].to_vec(),
        labels: split.labels[..count].to_vec(),
        n: count,
    }
}

/// The "-S" training split: the first `round(0.1 * n)` examples, in file order.
pub fn small(split: &Split) -> Split {
    subset(split, fraction_count(split.n, SMALL_FRACTION))
}

/// A generator for one (domain, seed, stream) triple.
fn seeded(domain: u64, seed: u64, stream: u64) -> Xoshiro256PlusPlus {
    let key = splitmix(splitmix(domain ^ splitmix(seed)) ^ stream);
    Xoshiro256PlusPlus::seed_from_u64(key)
}

/// The SplitMix64 finaliser, a bijective 64-bit mixer.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_exact_count_to_other_classes() {
        let clean: Vec<u8> = (0..1000).map(|i| (i % 10) as u8).collect();
        let mut noisy = clean.clone();
        let noise = flip_labels(&mut noisy, 0.2, 10, 7);
        assert_eq!(noise.indices.len(), 200);
        let changed: Vec<usize> = (0..1000).filter(|&i| noisy[i] != clean[i]).collect();
        assert_eq!(changed, noise.indices);
        assert!(
            noise
                .indices
                .iter()
                .zip(&noise.original)
                .all(|(&i, &o)| clean[i] == o)
        );
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(100, 3, 1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 3, 1));
        assert_ne!(a, epoch_order(100, 3, 2));
        assert_ne!(a, epoch_order(100, 4, 1));
    }

    #[test]
    fn fraction_count_rounds() {
        assert_eq!(fraction_count(60000, 0.1), 6000);
        assert_eq!(fraction_count(60000, 0.2), 12000);
        assert_eq!(fraction_count(13, 0.2), 3); // 2.6
        assert_eq!(fraction_count(12, 0.2), 2); // 2.4
    }
}
