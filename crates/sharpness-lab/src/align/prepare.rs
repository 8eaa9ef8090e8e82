//! `sharpness-lab align prepare`: the corpus and both frozen towers' features, computed once into
//! the cache and reused while nothing they depend on changes.
//!
//! Written to `<cache>/align/features/` (each file atomically, the manifest last):
//! - `features.safetensors`: `text` f32 `[n, 384]` and `image` f32 `[n, 1280]`, row `i` = pair `i`;
//! - `pairs.json`: the pairs ([`Pair`]: source, concept, caption, category, split, image);
//! - `manifest.json`: the [`Inputs`] (format and caption-rule versions, seed, the image tower's
//!   input size, hashes of the data and of both towers' files), the outputs' SHA-256, the corpus
//!   counts and the time it took.
//!
//! A later run reuses the files when the manifest's inputs equal the current ones and the files
//! still hash to the recorded sums; otherwise it says why and computes them again.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::image::{IMAGE_DIM, ImageEncoder};
use super::pairs::{self, Corpus, ImageLoader, Pair, Refused, Source, Split};
use super::text::{TEXT_DIM, TextEncoder};
use crate::data::fetch::{hex, sha256_file};
use crate::report::write_atomic;

/// Version of the files written here; bump when their layout changes.
pub const FEATURES_FORMAT: u32 = 1;
/// The features file.
pub const FEATURES_FILE: &str = "features.safetensors";
/// The pairs file.
pub const PAIRS_FILE: &str = "pairs.json";
/// The manifest.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Pairs per tower call by default (images are decoded in parallel per call).
pub const BATCH: usize = 64;

/// Where the features go: `<cache>/align/features`.
pub fn features_dir(cache: &Path) -> PathBuf {
    super::dir(cache).join("features")
}

/// The two frozen towers as the pipeline sees them (host data in and out).
pub trait Towers {
    /// Side of the square images the image tower takes.
    fn input_size(&self) -> usize;
    /// Sentence embeddings, row-major `[texts.len(), TEXT_DIM]`.
    fn embed(&self, texts: &[&str]) -> Result<Vec<f32>>;
    /// Image features, row-major `[n, IMAGE_DIM]`, of `pixels` `[n, 3, s, s]` (values 0–255).
    fn features(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>>;
}

/// The real towers running in Burn.
pub struct FrozenTowers {
    /// The text tower.
    pub text: TextEncoder,
    /// The image tower.
    pub image: ImageEncoder,
    /// Where both run.
    pub device: Device,
}

fn host(tensor: Tensor<2>) -> Result<Vec<f32>> {
    tensor
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read the features back: {e:?}"))
}

impl Towers for FrozenTowers {
    fn input_size(&self) -> usize {
        self.image.input_size()
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
        host(self.text.embed(texts)?)
    }

    fn features(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        let s = self.input_size();
        let images = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, s, s]), &self.device);
        // The tower's fastest batch (measured) rather than the pipeline's.
        let mut out = Vec::with_capacity(n * IMAGE_DIM);
        for start in (0..n).step_by(super::image::FEATURE_BATCH) {
            let count = super::image::FEATURE_BATCH.min(n - start);
            out.extend(host(
                self.image
                    .features(images.clone().narrow(0, start, count))?,
            )?);
        }
        Ok(out)
    }
}

/// Everything the features depend on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// [`FEATURES_FORMAT`].
    pub format: u32,
    /// [`pairs::CAPTION_RULE_VERSION`] and the corpus constants.
    pub corpus_rule: String,
    /// The split's seed.
    pub seed: u64,
    /// The image tower's input side.
    pub input_size: usize,
    /// Hash of the fetched data ([`super::fetch::verify`]).
    pub data: String,
    /// Hash of the text tower's files.
    pub text_model: String,
    /// Hash of the image tower's weights.
    pub image_model: String,
}

/// The corpus rule with its constants, as recorded in [`Inputs::corpus_rule`].
pub fn corpus_rule() -> String {
    format!(
        "captions v{}, keywords <= {}, title share <= {}, pairs per concept <= {}, max pixels {}, \
         eval fraction {}",
        pairs::CAPTION_RULE_VERSION,
        pairs::MAX_KEYWORDS,
        pairs::MAX_TITLE_SHARE,
        pairs::MAX_PAIRS_PER_CONCEPT,
        pairs::MAX_PIXELS,
        pairs::EVAL_FRACTION
    )
}

/// Pairs and concepts of one source in one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Count {
    /// Source.
    pub source: Source,
    /// Split.
    pub split: Split,
    /// Pairs.
    pub pairs: usize,
    /// Concepts.
    pub concepts: usize,
}

/// What a prepare run built, saved next to the features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// What the features depend on.
    pub inputs: Inputs,
    /// SHA-256 of each written file.
    pub files: BTreeMap<String, String>,
    /// `[n, TEXT_DIM]`.
    pub text_shape: [usize; 2],
    /// `[n, IMAGE_DIM]`.
    pub image_shape: [usize; 2],
    /// Pairs and concepts per source and split.
    pub counts: Vec<Count>,
    /// Drawings refused by the size guard.
    pub refused: Vec<Refused>,
    /// Emoji entries without a usable image.
    pub emoji_without_image: usize,
    /// Drawings left out over the per-concept cap.
    pub over_concept_cap: usize,
    /// Seconds the computation took.
    pub seconds: f64,
}

/// The outcome of [`prepare_features`].
pub struct Outcome {
    /// The manifest of the features now in the directory.
    pub manifest: Manifest,
    /// `None` if reused, else why they were computed.
    pub computed_because: Option<String>,
}

/// Why the features in `dir` cannot be reused for `inputs`, or their manifest if they can.
fn reusable(dir: &Path, inputs: &Inputs) -> std::result::Result<Manifest, String> {
    let path = dir.join(MANIFEST_FILE);
    let manifest: Manifest = match fs::read(&path) {
        Err(_) => return Err("no features yet".into()),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("unreadable manifest {} ({e})", path.display()))?,
    };
    if manifest.inputs != *inputs {
        let old = serde_json::to_value(&manifest.inputs).unwrap_or_default();
        let new = serde_json::to_value(inputs).unwrap_or_default();
        let changed: Vec<&str> = [
            "format",
            "corpus_rule",
            "seed",
            "input_size",
            "data",
            "text_model",
            "image_model",
        ]
        .into_iter()
        .filter(|k| old.get(k) != new.get(k))
        .collect();
        return Err(format!("changed: {}", changed.join(", ")));
    }
    for (file, sum) in &manifest.files {
        let actual = sha256_file(&dir.join(file)).unwrap_or_default();
        if actual != *sum {
            return Err(format!(
                "{} is missing or changed",
                dir.join(file).display()
            ));
        }
    }
    Ok(manifest)
}

/// Computes the features of the corpus `build` makes (images read from `cache`) into `dir`,
/// unless the features there were made from the same `inputs`.
pub fn prepare_features(
    cache: &Path,
    dir: &Path,
    towers: &dyn Towers,
    inputs: &Inputs,
    build: impl FnOnce() -> Result<Corpus>,
    batch_size: usize,
    show_progress: bool,
) -> Result<Outcome> {
    if batch_size == 0 {
        bail!("the batch size must be positive");
    }
    let reason = match reusable(dir, inputs) {
        Ok(manifest) => {
            return Ok(Outcome {
                manifest,
                computed_because: None,
            });
        }
        Err(reason) => reason,
    };
    let started = Instant::now();
    let corpus = build()?;
    let n = corpus.pairs.len();
    let size = towers.input_size();
    let loader = ImageLoader::new(cache);
    let mut text = Vec::with_capacity(n * TEXT_DIM);
    let mut image = Vec::with_capacity(n * IMAGE_DIM);
    let bar = if show_progress {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("features [{bar:25}] {pos}/{len} pairs {elapsed}<{eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    for batch in corpus.pairs.chunks(batch_size) {
        let captions: Vec<&str> = batch.iter().map(|p| p.caption.as_str()).collect();
        let rows = towers.embed(&captions)?;
        check_rows("text", &rows, batch.len(), TEXT_DIM)?;
        text.extend(rows);
        let pixels = batch_pixels(&loader, batch, size)?;
        let rows = towers.features(pixels, batch.len())?;
        check_rows("image", &rows, batch.len(), IMAGE_DIM)?;
        image.extend(rows);
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    let (image_bytes, text_bytes) = (le_bytes(&image), le_bytes(&text));
    let features = safetensors::serialize(
        [
            ("image", view(&image_bytes, IMAGE_DIM)?),
            ("text", view(&text_bytes, TEXT_DIM)?),
        ],
        None,
    )?;
    let pairs_json = serde_json::to_vec(&corpus.pairs)?;
    let mut files = BTreeMap::new();
    for (name, bytes) in [(FEATURES_FILE, &features), (PAIRS_FILE, &pairs_json)] {
        write_atomic(&dir.join(name), bytes)?;
        files.insert(name.to_owned(), hex(&Sha256::digest(bytes)));
    }
    let counts = Source::ALL
        .into_iter()
        .flat_map(|source| [Split::Train, Split::Eval].map(|split| (source, split)))
        .map(|(source, split)| Count {
            source,
            split,
            pairs: corpus.count(source, split),
            concepts: corpus.concepts(source, split),
        })
        .collect();
    let manifest = Manifest {
        inputs: inputs.clone(),
        files,
        text_shape: [n, TEXT_DIM],
        image_shape: [n, IMAGE_DIM],
        counts,
        refused: corpus.refused,
        emoji_without_image: corpus.emoji_without_image,
        over_concept_cap: corpus.over_concept_cap,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_atomic(
        &dir.join(MANIFEST_FILE),
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(Outcome {
        manifest,
        computed_because: Some(reason),
    })
}

fn check_rows(tower: &str, rows: &[f32], n: usize, width: usize) -> Result<()> {
    if rows.len() != n * width {
        bail!(
            "the {tower} tower returned {} values for {n} inputs, expected {n} × {width}",
            rows.len()
        );
    }
    Ok(())
}

/// The little-endian bytes of a row-major `[len / width, width]` matrix.
fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn view(bytes: &[u8], width: usize) -> Result<safetensors::tensor::TensorView<'_>> {
    Ok(safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![bytes.len() / 4 / width, width],
        bytes,
    )?)
}

/// `[n, 3, size, size]` pixel values 0–255 of a batch's images, loaded in parallel.
fn batch_pixels(loader: &ImageLoader, batch: &[Pair], size: usize) -> Result<Vec<f32>> {
    let side = u32::try_from(size).context("input size")?;
    let images: Vec<_> = batch
        .par_iter()
        .map(|p| loader.load(&p.image, side))
        .collect::<Result<_>>()?;
    let plane = size * size;
    let mut pixels = vec![0f32; batch.len() * 3 * plane];
    for (i, img) in images.iter().enumerate() {
        for (j, px) in img.pixels().enumerate() {
            for c in 0..3 {
                pixels[(i * 3 + c) * plane + j] = f32::from(px.0[c]);
            }
        }
    }
    Ok(pixels)
}

/// Prepared features read back from the cache.
pub struct Prepared {
    /// The pairs, row `i` of both matrices.
    pub pairs: Vec<Pair>,
    /// Row-major `[n, TEXT_DIM]`.
    pub text: Vec<f32>,
    /// Row-major `[n, IMAGE_DIM]`.
    pub image: Vec<f32>,
    /// Their manifest.
    pub manifest: Manifest,
}

/// Reads the features in `dir` (checked against their manifest's sums); errors name the file and
/// the command that makes it.
pub fn load(dir: &Path) -> Result<Prepared> {
    let hint = "run `cargo run --release -p sharpness-lab -- align prepare`";
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest: Manifest = serde_json::from_slice(
        &fs::read(&manifest_path)
            .with_context(|| format!("cannot read {}; {hint}", manifest_path.display()))?,
    )
    .with_context(|| format!("cannot parse {}; {hint}", manifest_path.display()))?;
    let read = |name: &str| -> Result<Vec<u8>> {
        let path = dir.join(name);
        let bytes =
            fs::read(&path).with_context(|| format!("cannot read {}; {hint}", path.display()))?;
        if manifest.files.get(name) != Some(&hex(&Sha256::digest(&bytes))) {
            bail!("{} does not match its manifest; {hint}", path.display());
        }
        Ok(bytes)
    };
    let pairs: Vec<Pair> = serde_json::from_slice(&read(PAIRS_FILE)?)?;
    let bytes = read(FEATURES_FILE)?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)?;
    let matrix = |name: &str, width: usize| -> Result<Vec<f32>> {
        let t = tensors.tensor(name)?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape() != [pairs.len(), width] {
            bail!(
                "{}: `{name}` is {:?} {:?}, expected F32 [{}, {width}]",
                dir.join(FEATURES_FILE).display(),
                t.dtype(),
                t.shape(),
                pairs.len()
            );
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    Ok(Prepared {
        text: matrix("text", TEXT_DIM)?,
        image: matrix("image", IMAGE_DIM)?,
        pairs,
        manifest,
    })
}

/// The summary printed by `align prepare`.
pub fn summary(manifest: &Manifest, dir: &Path) -> String {
    let mut out = format!("features in {}\n", dir.display());
    out += "source   split  pairs  concepts\n";
    for c in &manifest.counts {
        out += &format!(
            "{:<8} {:<6} {:>5}  {:>8}\n",
            format!("{:?}", c.source).to_lowercase(),
            format!("{:?}", c.split).to_lowercase(),
            c.pairs,
            c.concepts
        );
    }
    out += &format!(
        "text features {:?}, image features {:?} (f32), image input {} px\n",
        manifest.text_shape, manifest.image_shape, manifest.inputs.input_size
    );
    out += &format!(
        "left out: {} drawings over {} px (size guard), {} over {} per concept, {} emoji without an image\n",
        manifest.refused.len(),
        pairs::MAX_PIXELS,
        manifest.over_concept_cap,
        pairs::MAX_PAIRS_PER_CONCEPT,
        manifest.emoji_without_image
    );
    out += &format!("computed in {:.1}s", manifest.seconds);
    out
}

/// `sharpness-lab align prepare`.
#[derive(Args, Debug)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub cache: crate::data::CacheArg,
    /// Seed of the split by concept.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pairs per tower call.
    #[arg(long, default_value_t = BATCH)]
    pub batch_size: usize,
}

/// Runs `sharpness-lab align prepare`: fetches what is missing, loads both towers, prepares or
/// reuses the features and prints the summary.
pub fn cli(args: PrepareArgs) -> Result<()> {
    let cache = args.cache.dir();
    let (outcome, dir) = ensure(&cache, args.seed, args.batch_size, &mut |line| {
        eprintln!("{line}")
    })?;
    match &outcome.computed_because {
        None => eprintln!("features reused (manifest matches)"),
        Some(reason) => eprintln!("features computed ({reason})"),
    }
    println!("{}", summary(&outcome.manifest, &dir));
    Ok(())
}

/// The features for split seed `seed`: fetched, verified and computed where needed (reused when
/// the manifest matches); returns the outcome and their directory. `log` gets the fetch step's
/// lines.
pub fn ensure(
    cache: &Path,
    seed: u64,
    batch_size: usize,
    log: &mut dyn FnMut(&str),
) -> Result<(Outcome, PathBuf)> {
    super::fetch::fetch_all(cache, log)?;
    let data = super::fetch::verify(cache)?;
    let fetch = super::fetch::fetch_command(cache);
    // Frozen: inference only, no autodiff.
    let device = crate::device::device().inner();
    let weights = super::efficientnet_dir(cache).join(super::image::WEIGHTS_FILE);
    let image_model = sha256_file(&weights).with_context(|| {
        format!(
            "cannot read the image tower's weights {}; make them with `{fetch}`",
            weights.display()
        )
    })?;
    let towers = FrozenTowers {
        text: TextEncoder::load(&super::minilm_dir(cache), &device)
            .with_context(|| format!("loading the text tower; repair with `{fetch}`"))?,
        image: ImageEncoder::load(&super::efficientnet_dir(cache), &device)
            .with_context(|| format!("loading the image tower; repair with `{fetch}`"))?,
        device,
    };
    let inputs = Inputs {
        format: FEATURES_FORMAT,
        corpus_rule: corpus_rule(),
        seed,
        input_size: towers.input_size(),
        data,
        text_model: super::fetch::package_hash(super::fetch::Package::MiniLm),
        image_model,
    };
    let dir = features_dir(cache);
    let outcome = prepare_features(
        cache,
        &dir,
        &towers,
        &inputs,
        || pairs::build(cache, seed),
        batch_size,
        true,
    )?;
    Ok((outcome, dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::pairs::{EmojiStyle, ImageRef};
    use std::cell::Cell;

    /// Text row: the caption's length then zeros; image row: the mean pixel value then zeros.
    struct Fake {
        calls: Cell<usize>,
    }

    impl Towers for Fake {
        fn input_size(&self) -> usize {
            8
        }
        fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
            self.calls.set(self.calls.get() + 1);
            Ok(texts
                .iter()
                .flat_map(|t| {
                    let mut row = vec![0.0; TEXT_DIM];
                    row[0] = t.len() as f32;
                    row
                })
                .collect())
        }
        fn features(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>> {
            let per = pixels.len() / n;
            Ok(pixels
                .chunks(per)
                .flat_map(|img| {
                    let mut row = vec![0.0; IMAGE_DIM];
                    row[0] = img.iter().sum::<f32>() / per as f32;
                    row
                })
                .collect())
        }
    }

    fn fixture() -> (tempfile::TempDir, Corpus) {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path();
        // A 2 × 1 cell Google sheet: cell 0 opaque black, cell 1 transparent.
        let sheet = image::RgbaImage::from_fn(2 * 34, 34, |x, _| {
            if x < 34 {
                image::Rgba([0, 0, 0, 255])
            } else {
                image::Rgba([0, 0, 0, 0])
            }
        });
        let sheet_path = cache.join(EmojiStyle::Google.sheet_path());
        fs::create_dir_all(sheet_path.parent().unwrap()).unwrap();
        sheet.save(&sheet_path).unwrap();
        // A mid-grey opaque drawing.
        let drawing = cache.join("align/openclipart/png/animals/grey.png");
        fs::create_dir_all(drawing.parent().unwrap()).unwrap();
        image::RgbaImage::from_pixel(5, 5, image::Rgba([100, 100, 100, 255]))
            .save(&drawing)
            .unwrap();
        let pair = |source, concept: &str, caption: &str, image| Pair {
            source,
            concept: concept.into(),
            caption: caption.into(),
            category: "c".into(),
            split: Split::Train,
            image,
        };
        let mut pairs = vec![
            pair(
                Source::Emoji,
                "emoji:1",
                "an emoji of black",
                ImageRef::Sheet {
                    style: EmojiStyle::Google,
                    x: 0,
                    y: 0,
                },
            ),
            pair(
                Source::Emoji,
                "emoji:2",
                "an emoji of nothing",
                ImageRef::Sheet {
                    style: EmojiStyle::Google,
                    x: 1,
                    y: 0,
                },
            ),
            pair(
                Source::ClipArt,
                "clipart:grey",
                "a drawing of grey",
                ImageRef::File {
                    path: "align/openclipart/png/animals/grey.png".into(),
                },
            ),
        ];
        pairs::assign_splits(&mut pairs, 0);
        (
            tmp,
            Corpus {
                pairs,
                ..Default::default()
            },
        )
    }

    fn inputs() -> Inputs {
        Inputs {
            format: FEATURES_FORMAT,
            corpus_rule: corpus_rule(),
            seed: 0,
            input_size: 8,
            data: "d".into(),
            text_model: "t".into(),
            image_model: "i".into(),
        }
    }

    #[test]
    fn features_are_computed_reused_and_recomputed_when_an_input_changes() {
        let (tmp, corpus) = fixture();
        let cache = tmp.path();
        let dir = features_dir(cache);
        let fake = Fake {
            calls: Cell::new(0),
        };
        let built = Cell::new(0);
        let build = || {
            built.set(built.get() + 1);
            Ok(corpus.clone())
        };
        let first = prepare_features(cache, &dir, &fake, &inputs(), build, 2, false).unwrap();
        assert_eq!(first.computed_because.as_deref(), Some("no features yet"));
        assert_eq!(fake.calls.get(), 2); // batches of 2 and 1
        let prepared = load(&dir).unwrap();
        assert_eq!(prepared.pairs, corpus.pairs);
        assert_eq!(prepared.text.len(), 3 * TEXT_DIM);
        assert_eq!(prepared.text[TEXT_DIM], "an emoji of nothing".len() as f32);
        // Black emoji on a white square: the 8 × 8 image keeps the 32 px cell's full area → 0.
        assert_eq!(prepared.image[0], 0.0);
        // Transparent emoji → white; opaque grey drawing → 100 on the fitted square (5 → 8 px).
        assert_eq!(prepared.image[IMAGE_DIM], 255.0);
        assert!(
            (prepared.image[2 * IMAGE_DIM] - 100.0).abs() < 1e-4,
            "{}",
            prepared.image[2 * IMAGE_DIM]
        );

        // Same inputs: reused, nothing built or run.
        let again =
            prepare_features(cache, &dir, &fake, &inputs(), || unreachable!(), 2, false).unwrap();
        assert!(again.computed_because.is_none());
        assert_eq!(again.manifest, first.manifest);
        assert_eq!(fake.calls.get(), 2);

        // Another text model: recomputed, and the reason names it.
        let mut changed = inputs();
        changed.text_model = "t2".into();
        let third = prepare_features(
            cache,
            &dir,
            &fake,
            &changed,
            || Ok(corpus.clone()),
            2,
            false,
        )
        .unwrap();
        assert_eq!(
            third.computed_because.as_deref(),
            Some("changed: text_model")
        );
        assert_eq!(fake.calls.get(), 4);

        // A damaged features file: recomputed; and `load` refuses it, naming the file.
        fs::write(dir.join(FEATURES_FILE), b"garbage").unwrap();
        let err = format!("{:#}", load(&dir).err().unwrap());
        assert!(
            err.contains(FEATURES_FILE) && err.contains("align prepare"),
            "{err}"
        );
        let fourth = prepare_features(
            cache,
            &dir,
            &fake,
            &changed,
            || Ok(corpus.clone()),
            2,
            false,
        )
        .unwrap();
        assert!(fourth.computed_because.unwrap().contains(FEATURES_FILE));
        assert_eq!(built.get(), 1);
        load(&dir).unwrap();
    }

    #[test]
    #[ignore = "needs `sharpness-lab align fetch`"]
    fn the_real_corpus_through_the_pipeline_with_fake_towers() {
        let cache = crate::data::default_cache_dir();
        let data = super::super::fetch::verify(&cache).unwrap();
        // Not the cache's features directory: fake features must never be mistaken for real ones.
        let out = tempfile::tempdir().unwrap();
        let fake = Fake {
            calls: Cell::new(0),
        };
        let inputs = Inputs {
            data,
            input_size: 224,
            ..inputs()
        };
        struct At224(Fake);
        impl Towers for At224 {
            fn input_size(&self) -> usize {
                224
            }
            fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
                self.0.embed(texts)
            }
            fn features(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>> {
                self.0.features(pixels, n)
            }
        }
        let towers = At224(fake);
        let started = Instant::now();
        let outcome = prepare_features(
            &cache,
            out.path(),
            &towers,
            &inputs,
            || pairs::build(&cache, 0),
            64,
            true,
        )
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "{}\nwall {seconds:.1}s",
            summary(&outcome.manifest, out.path())
        );
        let prepared = load(out.path()).unwrap();
        assert_eq!(prepared.image.len(), prepared.pairs.len() * IMAGE_DIM);
        // Every image is mostly white: mean pixel value well above mid-grey on average.
        let mean: f32 = prepared.image.chunks(IMAGE_DIM).map(|r| r[0]).sum::<f32>()
            / prepared.pairs.len() as f32;
        assert!(mean > 150.0 && mean < 255.0, "{mean}");
    }

    #[test]
    fn a_missing_image_names_the_file() {
        let (tmp, mut corpus) = fixture();
        fs::remove_file(tmp.path().join("align/openclipart/png/animals/grey.png")).unwrap();
        corpus.pairs.retain(|p| p.source == Source::ClipArt);
        let fake = Fake {
            calls: Cell::new(0),
        };
        let err = prepare_features(
            tmp.path(),
            &features_dir(tmp.path()),
            &fake,
            &inputs(),
            || Ok(corpus),
            4,
            false,
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("grey.png"), "{err:#}");
        assert!(!features_dir(tmp.path()).join(MANIFEST_FILE).exists());
    }

    #[test]
    fn a_tower_with_the_wrong_width_is_an_error() {
        struct Narrow;
        impl Towers for Narrow {
            fn input_size(&self) -> usize {
                4
            }
            fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
                Ok(vec![0.0; texts.len() * 10])
            }
            fn features(&self, _: Vec<f32>, n: usize) -> Result<Vec<f32>> {
                Ok(vec![0.0; n * IMAGE_DIM])
            }
        }
        let (tmp, corpus) = fixture();
        let err = prepare_features(
            tmp.path(),
            &features_dir(tmp.path()),
            &Narrow,
            &inputs(),
            || Ok(corpus),
            4,
            false,
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("text tower returned 30 values"),
            "{err}"
        );
    }
}
