//! Tests of the data protocols ("-S", "-C", epoch order, subsets) and of `load`
//! on a synthetic cache written in the real layout.

use std::io::Write;
use std::path::Path;

use proptest::prelude::*;
use sharpness_lab::data::{
    self, DataError, DatasetName, IMAGE_PIXELS, Split, Variant, epoch_order, flip_labels, idx,
    protocol, subset,
};
use strum::VariantArray;

/// Pearson chi-square statistic of `counts` against a uniform expectation.
fn chi_square(counts: &[usize]) -> f64 {
    let total: usize = counts.iter().sum();
    let expected = total as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

/// Labels 0..10 in a fixed pseudo-random pattern.
fn pattern_labels(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + i / 13) % 10) as u8).collect()
}

#[test]
fn corrupt_flips_exactly_twenty_percent_to_other_classes() {
    let clean = pattern_labels(60_000);
    let mut noisy = clean.clone();
    let noise = flip_labels(&mut noisy, 0.2, 10, 42);
    assert_eq!(noise.indices.len(), 12_000);
    let changed: Vec<usize> = (0..clean.len()).filter(|&i| noisy[i] != clean[i]).collect();
    assert_eq!(
        changed, noise.indices,
        "exactly the recorded indices changed, none to itself"
    );
    for (&i, &original) in noise.indices.iter().zip(&noise.original) {
        assert_eq!(original, clean[i]);
        assert!(noisy[i] < 10);
    }
}

#[test]
fn corrupt_is_deterministic_per_seed() {
    let clean = pattern_labels(5_000);
    let run = |seed| {
        let mut labels = clean.clone();
        let noise = flip_labels(&mut labels, 0.2, 10, seed);
        (labels, noise)
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1).1.indices, run(2).1.indices);
}

#[test]
fn corrupt_targets_are_uniform_over_other_classes() {
    let clean = pattern_labels(60_000);
    let mut noisy = clean.clone();
    let noise = flip_labels(&mut noisy, 0.2, 10, 0);
    // For every clean class, the new class is uniform over the 9 others.
    for class in 0..10u8 {
        let mut counts = [0usize; 10];
        for &i in noise.indices.iter().filter(|&&i| clean[i] == class) {
            counts[noisy[i] as usize] += 1;
        }
        assert_eq!(counts[class as usize], 0);
        let others: Vec<usize> = (0..10)
            .filter(|&c| c != class as usize)
            .map(|c| counts[c])
            .collect();
        // 8 degrees of freedom: P(chi2 > 26.12) = 0.001.
        let stat = chi_square(&others);
        assert!(
            stat < 26.12,
            "class {class}: counts {others:?}, chi2 {stat}"
        );
    }
}

#[test]
fn corrupt_indices_are_spread_over_the_set() {
    let mut labels = pattern_labels(60_000);
    let noise = flip_labels(&mut labels, 0.2, 10, 3);
    let mut deciles = [0usize; 10];
    for &i in &noise.indices {
        deciles[i * 10 / 60_000] += 1;
    }
    // 9 degrees of freedom: P(chi2 > 27.88) = 0.001.
    assert!(chi_square(&deciles) < 27.88, "{deciles:?}");
}

proptest! {
    #[test]
    fn flip_count_is_rounded_fraction(n in 0usize..3000, seed in any::<u64>()) {
        let clean = pattern_labels(n);
        let mut noisy = clean.clone();
        let noise = flip_labels(&mut noisy, 0.2, 10, seed);
        prop_assert_eq!(noise.indices.len(), (0.2 * n as f64).round() as usize);
        let changed = (0..n).filter(|&i| noisy[i] != clean[i]).count();
        prop_assert_eq!(changed, noise.indices.len());
    }

    #[test]
    fn epoch_order_is_a_deterministic_permutation(n in 0usize..2000, seed in any::<u64>(), epoch in 0usize..1000) {
        let order = epoch_order(n, seed, epoch);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        prop_assert_eq!(&order, &epoch_order(n, seed, epoch));
        if n >= 20 {
            prop_assert_ne!(&order, &epoch_order(n, seed, epoch + 1));
            prop_assert_ne!(&order, &epoch_order(n, seed.wrapping_add(1), epoch));
        }
    }
}

#[test]
fn epoch_order_positions_are_uniform() {
    // Where element 0 lands, over 2000 epochs of a 10-element permutation.
    let mut counts = [0usize; 10];
    for epoch in 0..2000 {
        let order = epoch_order(10, 5, epoch);
        counts[order.iter().position(|&x| x == 0).unwrap()] += 1;
    }
    assert!(chi_square(&counts) < 27.88, "{counts:?}");
}

fn split(n: usize) -> Split {
    Split {
        images: (0..n * IMAGE_PIXELS).map(|i| i as f32).collect(),
        labels: pattern_labels(n),
        n,
    }
}

#[test]
fn subset_takes_the_first_examples() {
    let full = split(50);
    let first = subset(&full, 7);
    assert_eq!(first.n, 7);
    assert_eq!(first.labels, full.labels[..7]);
    assert_eq!(first.images, full.images[..7 * IMAGE_PIXELS]);
    assert_eq!(first.image(6), full.image(6));
    assert_eq!(subset(&full, 500), full);
    assert_eq!(subset(&full, 0).n, 0);
}

#[test]
fn small_takes_exactly_the_first_tenth() {
    let full = split(1234);
    let small = protocol::small(&full);
    assert_eq!(small.n, 123);
    assert_eq!(small, subset(&full, 123));
}

// ---- `load` on a synthetic cache -------------------------------------------

const TRAIN_N: usize = 1_000;
const TEST_N: usize = 120;

/// Image `i` has every pixel equal to `i % 256`, so examples can be identified.
fn images_for(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| std::iter::repeat_n((i % 256) as u8, IMAGE_PIXELS))
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Writes a small fake dataset with the real file names (gzipped for Fashion).
fn write_fake(cache: &Path, name: DatasetName) {
    let dir = cache.join(name.dir_name());
    std::fs::create_dir_all(&dir).unwrap();
    let [tr_img, tr_lbl, te_img, te_lbl] = name.file_names();
    let files = [
        (
            tr_img,
            idx::encode_images(TRAIN_N, 28, 28, &images_for(TRAIN_N)),
        ),
        (tr_lbl, idx::encode_labels(&pattern_labels(TRAIN_N))),
        (
            te_img,
            idx::encode_images(TEST_N, 28, 28, &images_for(TEST_N)),
        ),
        (te_lbl, idx::encode_labels(&pattern_labels(TEST_N))),
    ];
    for (file, bytes) in files {
        let bytes = if name == DatasetName::FashionMnist {
            gzip(&bytes)
        } else {
            bytes
        };
        std::fs::write(dir.join(file), bytes).unwrap();
    }
}

fn fake_cache() -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    for &name in DatasetName::VARIANTS {
        write_fake(cache.path(), name);
    }
    cache
}

#[test]
fn load_full_normalises_with_dataset_statistics() {
    let cache = fake_cache();
    for &name in DatasetName::VARIANTS {
        let ds = data::load(name, Variant::Full, cache.path(), 0).unwrap();
        // The published pixel statistics of the full training sets.
        let (mean, std) = match name {
            DatasetName::Mnist => (0.1307, 0.3081),
            DatasetName::FashionMnist => (0.2860, 0.3530),
        };
        assert_eq!((ds.train.n, ds.test.n), (TRAIN_N, TEST_N));
        assert_eq!(ds.train.images.len(), TRAIN_N * IMAGE_PIXELS);
        let expected = (200.0 / 255.0 - mean) / std;
        assert!((ds.train.image(200)[123] - expected).abs() < 1e-6);
        assert!(ds.label_noise.is_none());
        assert_eq!(ds.tag(), name.as_str());
    }
}

#[test]
fn load_small_keeps_first_tenth_and_full_test_set() {
    let cache = fake_cache();
    let full = data::load(DatasetName::Mnist, Variant::Full, cache.path(), 0).unwrap();
    let small = data::load(DatasetName::Mnist, Variant::Small, cache.path(), 0).unwrap();
    let n = TRAIN_N / 10;
    assert_eq!(small.train.n, n);
    assert_eq!(
        small.train.images[..],
        full.train.images[..n * IMAGE_PIXELS]
    );
    assert_eq!(small.train.labels[..], full.train.labels[..n]);
    assert_eq!(small.test, full.test);
    assert_eq!(small.tag(), "mnist-S");
}

#[test]
fn load_corrupt_flips_train_labels_only() {
    let cache = fake_cache();
    let name = DatasetName::FashionMnist;
    let full = data::load(name, Variant::Full, cache.path(), 0).unwrap();
    let noisy = data::load(name, Variant::Corrupt, cache.path(), 9).unwrap();
    let again = data::load(name, Variant::Corrupt, cache.path(), 9).unwrap();
    let noise = noisy.label_noise.as_ref().unwrap();
    assert_eq!(noise.indices.len(), TRAIN_N / 5);
    let changed = (0..TRAIN_N)
        .filter(|&i| noisy.train.labels[i] != full.train.labels[i])
        .count();
    assert_eq!(changed, TRAIN_N / 5);
    assert_eq!(noisy.train.images, full.train.images);
    assert_eq!(noisy.test, full.test);
    assert_eq!(noisy.train.labels, again.train.labels);
    assert_eq!(noisy.tag(), "fashion-mnist-C");
}

#[test]
fn load_reports_corrupt_cache_file() {
    let cache = fake_cache();
    let path = cache.path().join("mnist").join("t10k-labels-idx1-ubyte");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..50]).unwrap();
    let err = data::load(DatasetName::Mnist, Variant::Full, cache.path(), 0).unwrap_err();
    assert!(matches!(err, DataError::Idx(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("t10k-labels-idx1-ubyte") && message.contains("50"),
        "{message}"
    );
}

#[test]
fn load_missing_dataset_names_fetch_command() {
    let cache = tempfile::tempdir().unwrap();
    write_fake(cache.path(), DatasetName::Mnist);
    assert!(data::load(DatasetName::Mnist, Variant::Full, cache.path(), 0).is_ok());
    let err = data::load(DatasetName::FashionMnist, Variant::Full, cache.path(), 0).unwrap_err();
    assert!(matches!(
        err,
        DataError::Missing {
            name: DatasetName::FashionMnist,
            ..
        }
    ));
    assert!(
        err.to_string()
            .contains("cargo run --release -p sharpness-lab -- data fetch"),
        "{err}"
    );
}
