//! The image–text pairs: emoji (Google and Twitter renderings) and Open Clip Art drawings.
//!
//! **Emoji** (`emoji-datasource` 16.0.0 + `emojilib` 4.0.3): every `emoji.json` entry with a
//! Google and/or Twitter image is a concept (its `unified` code points) giving one pair per
//! rendering, both with the same caption. Images are the 32 × 32 cells of the 32 px sprite
//! sheets (34 px per cell: 1 px padding around 32), at `(34·sheet_x + 1, 34·sheet_y + 1)`.
//! Category: the entry's `category` (e.g. `Animals & Nature`). Skin-tone variations are not used.
//!
//! **Open Clip Art** (Debian `openclipart-png`/`-svg`): every drawing kept by the fetch step (a
//! regular PNG with its SVG). Title, keywords (`dc:subject` → `rdf:Bag` → `rdf:li`) and
//! description are read from the SVG's RDF metadata (the `cc:Work` element). Category: the top
//! folder (`animals`, `computer`, …). A PNG whose header says it has more than [`MAX_PIXELS`]
//! pixels is refused (counted and reported) before anything is decoded.
//!
//! **Caption rule** (version [`CAPTION_RULE_VERSION`]): `"<lead> <head>, <kw1>, …, <kwN>"` with
//! - emoji: lead `an emoji of`, head the `name`; keywords: `short_names`, then the subcategory
//!   (hyphens as spaces), then emojilib's keywords;
//! - clip art: lead `a drawing of`, head the title; keywords: the `dc:subject` entries. A title
//!   shared by more than [`MAX_TITLE_SHARE`] drawings names a collection (`gramastar`, `Part of
//!   the Flat Icon Collection`, `Lemon SVG theme`), not the drawing: the head is then the file
//!   name's words (split at `_ - .`, trailing digits dropped, words with other digits dropped);
//!   the file name also serves when the title is empty. Descriptions are parsed but not used:
//!   about four in five are empty and the rest are free text of any length;
//! - every text lower-cased, `_` read as a space, whitespace collapsed; keywords that are empty,
//!   equal to the head or repeated are dropped, and at most [`MAX_KEYWORDS`] kept in order.
//!
//! **Concepts and splits.** A concept is an emoji (`emoji:<unified>`) or a clip-art head
//! (`clipart:<head, lower-case alphanumeric words>`), so drawings with the same head share one.
//! A clip-art concept keeps at most [`MAX_PAIRS_PER_CONCEPT`] drawings (first by path; the rest
//! are counted): thousands of near-identical stars with one caption would swamp the corpus.
//! Per source, concepts are ordered by `sha256("<seed>:<concept>")` and the first
//! `round(EVAL_FRACTION · n)` go to evaluation: no concept is in both splits, and a seed fixes
//! the split whatever the order the pairs were read in.
//!
//! **Images** are composited on white (alpha), scaled to fit the image tower's input size
//! (`image`'s `Triangle` filter: bilinear, widened to average over the source when shrinking)
//! and centred on a white square.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use image::imageops::FilterType;
use image::{ImageReader, Limits, Rgb, RgbImage, RgbaImage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the caption rule and corpus construction; bump when either changes (it is part of
/// the feature cache's manifest).
pub const CAPTION_RULE_VERSION: u32 = 1;
/// At most this many keywords per caption.
pub const MAX_KEYWORDS: usize = 8;
/// A clip-art title shared by more drawings than this names a collection.
pub const MAX_TITLE_SHARE: usize = 20;
/// At most this many drawings per clip-art concept.
pub const MAX_PAIRS_PER_CONCEPT: usize = 10;
/// Largest image accepted (pixels, from the header): 16 Mpx, 64 MiB as RGBA8.
pub const MAX_PIXELS: u64 = 1 << 24;
/// Fraction of each source's concepts in the evaluation split.
pub const EVAL_FRACTION: f64 = 0.2;
/// The emoji sprite sheets' cell: 1 px padding around a 32 px image.
pub const SHEET_CELL: u32 = 34;
/// The emoji image side in the 32 px sheets.
pub const EMOJI_SIDE: u32 = 32;

const DC: &str = "http://purl.org/dc/elements/1.1/";
const RDF: &str = "http://www.w3.org/1999/02/22-rdf-syntax-ns#";

/// Where a pair comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `emoji-datasource` (Google and Twitter renderings).
    Emoji,
    /// Open Clip Art.
    ClipArt,
}

impl Source {
    /// Both sources.
    pub const ALL: [Source; 2] = [Source::Emoji, Source::ClipArt];
}

/// Training or evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training concepts.
    Train,
    /// Held-out concepts.
    Eval,
}

/// An emoji image set (the two with open licences).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmojiStyle {
    /// Noto Emoji (Apache-2.0).
    Google,
    /// Twemoji (CC-BY-4.0).
    Twitter,
}

impl EmojiStyle {
    fn name(self) -> &'static str {
        match self {
            EmojiStyle::Google => "google",
            EmojiStyle::Twitter => "twitter",
        }
    }

    /// The 32 px sprite sheet, relative to the cache.
    pub fn sheet_path(self) -> String {
        format!(
            "align/emoji/emoji-datasource/img/{}/sheets/32.png",
            self.name()
        )
    }
}

/// A pair's image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ImageRef {
    /// A cell of an emoji sprite sheet.
    Sheet {
        /// The rendering.
        style: EmojiStyle,
        /// Column.
        x: u32,
        /// Row.
        y: u32,
    },
    /// An image file, relative to the cache.
    File {
        /// Path relative to the cache.
        path: String,
    },
}

/// One image–text pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    /// Where it comes from.
    pub source: Source,
    /// The concept (unit of the split), e.g. `emoji:1F600` or `clipart:bat`.
    pub concept: String,
    /// The text side.
    pub caption: String,
    /// A coarse category for plots.
    pub category: String,
    /// Training or evaluation.
    pub split: Split,
    /// The image side.
    pub image: ImageRef,
}

/// An image refused by the size guard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    /// Path relative to the cache.
    pub path: String,
    /// Width from the header.
    pub width: u32,
    /// Height from the header.
    pub height: u32,
}

/// The corpus and what was left out of it.
#[derive(Clone, Debug, Default)]
pub struct Corpus {
    /// Every pair, emoji first, in a fixed order.
    pub pairs: Vec<Pair>,
    /// Drawings refused by the size guard.
    pub refused: Vec<Refused>,
    /// Emoji entries with neither a Google nor a Twitter image.
    pub emoji_without_image: usize,
    /// Drawings over [`MAX_PAIRS_PER_CONCEPT`] for their concept.
    pub over_concept_cap: usize,
}

impl Corpus {
    /// Pairs of `source` in `split`.
    pub fn count(&self, source: Source, split: Split) -> usize {
        self.pairs
            .iter()
            .filter(|p| p.source == source && p.split == split)
            .count()
    }

    /// Distinct concepts of `source` in `split`.
    pub fn concepts(&self, source: Source, split: Split) -> usize {
        self.pairs
            .iter()
            .filter(|p| p.source == source && p.split == split)
            .map(|p| p.concept.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }
}

/// Builds the corpus from the fetched files in `cache` (verify them first with
/// [`super::fetch::verify`]); `seed` fixes the split.
pub fn build(cache: &Path, seed: u64) -> Result<Corpus> {
    let mut corpus = Corpus::default();
    let (emoji, without) = emoji_pairs(cache)?;
    corpus.pairs = emoji;
    corpus.emoji_without_image = without;
    let clip = clipart_pairs(cache)?;
    corpus.pairs.extend(clip.pairs);
    corpus.refused = clip.refused;
    corpus.over_concept_cap = clip.over_concept_cap;
    assign_splits(&mut corpus.pairs, seed);
    Ok(corpus)
}

/// Lower-case, `_` read as a space, whitespace collapsed.
fn clean(text: &str) -> String {
    text.replace('_', " ")
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The caption rule (see the module docs): `"<lead> <head>, <kw1>, …"`.
pub fn caption(lead: &str, head: &str, keywords: &[&str]) -> String {
    let head = clean(head);
    let mut seen = BTreeSet::from([head.clone()]);
    let mut text = format!("{lead} {head}");
    let mut kept = 0;
    for keyword in keywords {
        if kept == MAX_KEYWORDS {
            break;
        }
        let keyword = clean(keyword);
        if !keyword.is_empty() && seen.insert(keyword.clone()) {
            text.push_str(", ");
            text.push_str(&keyword);
            kept += 1;
        }
    }
    text
}

/// Lower-case alphanumeric words of `text`, single-spaced (the concept key).
fn concept_key(text: &str) -> String {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A clip-art head from a file name: words split at `_ - .`, trailing digits dropped, words with
/// other digits dropped (`star_49pt05step` → `star`, `home13` → `home`).
pub fn head_from_file_stem(stem: &str) -> String {
    stem.split(['_', '-', '.', ' '])
        .map(|w| w.trim_end_matches(|c: char| c.is_ascii_digit()))
        .filter(|w| !w.is_empty() && w.chars().all(char::is_alphabetic))
        .collect::<Vec<_>>()
        .join(" ")
}

// ----- emoji -----

#[derive(Deserialize)]
struct EmojiEntry {
    name: Option<String>,
    unified: String,
    #[serde(default)]
    short_names: Vec<String>,
    category: Option<String>,
    subcategory: Option<String>,
    sheet_x: u32,
    sheet_y: u32,
    #[serde(default)]
    has_img_google: bool,
    #[serde(default)]
    has_img_twitter: bool,
}

/// `emoji.json`, relative to the cache.
pub const EMOJI_JSON: &str = "align/emoji/emoji-datasource/emoji.json";
/// emojilib's keywords, relative to the cache.
pub const EMOJILIB_JSON: &str = "align/emoji/emojilib/dist/emoji-en-US.json";

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("cannot parse {}", path.display()))
}

/// The emoji string of `unified` code points (`1F600`, `0023-FE0F-20E3`), without U+FE0F
/// (emojilib's keys are written with and without it).
fn emoji_key(unified: &str) -> Option<String> {
    unified
        .split('-')
        .map(|hex| u32::from_str_radix(hex, 16).ok().and_then(char::from_u32))
        .filter(|c| *c != Some('\u{FE0F}'))
        .collect()
}

fn emoji_pairs(cache: &Path) -> Result<(Vec<Pair>, usize)> {
    let entries: Vec<EmojiEntry> = read_json(&cache.join(EMOJI_JSON))?;
    let lib: HashMap<String, Vec<String>> = read_json(&cache.join(EMOJILIB_JSON))?;
    let keywords: HashMap<String, Vec<String>> = lib
        .into_iter()
        .map(|(emoji, words)| (emoji.replace('\u{FE0F}', ""), words))
        .collect();
    Ok(emoji_pairs_from(&entries, &keywords))
}

fn emoji_pairs_from(
    entries: &[EmojiEntry],
    keywords: &HashMap<String, Vec<String>>,
) -> (Vec<Pair>, usize) {
    let mut pairs = Vec::new();
    let mut without = 0;
    for entry in entries {
        let styles: Vec<EmojiStyle> = [
            (entry.has_img_google, EmojiStyle::Google),
            (entry.has_img_twitter, EmojiStyle::Twitter),
        ]
        .into_iter()
        .filter_map(|(has, style)| has.then_some(style))
        .collect();
        if styles.is_empty() {
            without += 1;
            continue;
        }
        let head = entry
            .name
            .clone()
            .or_else(|| entry.short_names.first().cloned())
            .unwrap_or_else(|| entry.unified.clone());
        let subcategory = entry.subcategory.as_deref().unwrap_or("").replace('-', " ");
        let lib = emoji_key(&entry.unified)
            .and_then(|k| keywords.get(&k))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let words: Vec<&str> = entry
            .short_names
            .iter()
            .map(String::as_str)
            .chain([subcategory.as_str()])
            .chain(lib.iter().map(String::as_str))
            .collect();
        let text = caption("an emoji of", &head, &words);
        for style in styles {
            pairs.push(Pair {
                source: Source::Emoji,
                concept: format!("emoji:{}", entry.unified),
                caption: text.clone(),
                category: entry.category.clone().unwrap_or_default(),
                split: Split::Train,
                image: ImageRef::Sheet {
                    style,
                    x: entry.sheet_x,
                    y: entry.sheet_y,
                },
            });
        }
    }
    (pairs, without)
}

/// Cuts the 32 × 32 emoji at column `x`, row `y` out of a 32 px sprite sheet.
pub fn cut_cell(sheet: &RgbaImage, x: u32, y: u32) -> Result<RgbaImage> {
    let (left, top) = (
        u64::from(x) * u64::from(SHEET_CELL) + 1,
        u64::from(y) * u64::from(SHEET_CELL) + 1,
    );
    let side = u64::from(EMOJI_SIDE);
    if left + side > u64::from(sheet.width()) || top + side > u64::from(sheet.height()) {
        bail!(
            "cell ({x}, {y}) lies outside the {}×{} sheet",
            sheet.width(),
            sheet.height()
        );
    }
    let view = image::imageops::crop_imm(sheet, left as u32, top as u32, EMOJI_SIDE, EMOJI_SIDE);
    Ok(view.to_image())
}

// ----- Open Clip Art -----

/// A drawing's RDF metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SvgMeta {
    /// `dc:title`, whitespace collapsed.
    pub title: String,
    /// `dc:subject`'s `rdf:li` entries, in order.
    pub keywords: Vec<String>,
    /// `dc:description`.
    pub description: String,
}

/// Reads the title, keywords and description of an SVG's `cc:Work` (the first; empty if none).
pub fn parse_svg_metadata(text: &str) -> Result<SvgMeta, roxmltree::Error> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options)?;
    let mut meta = SvgMeta::default();
    let Some(work) = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Work")
    else {
        return Ok(meta);
    };
    let text_of = |node: roxmltree::Node| {
        let joined: String = node
            .descendants()
            .filter(roxmltree::Node::is_text)
            .filter_map(|n| n.text())
            .collect();
        joined.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    for child in work
        .children()
        .filter(|n| n.is_element() && n.tag_name().namespace() == Some(DC))
    {
        match child.tag_name().name() {
            "title" => meta.title = text_of(child),
            "description" => meta.description = text_of(child),
            "subject" => {
                meta.keywords = child
                    .descendants()
                    .filter(|n| {
                        n.tag_name().name() == "li" && n.tag_name().namespace() == Some(RDF)
                    })
                    .map(text_of)
                    .collect();
            }
            _ => {}
        }
    }
    Ok(meta)
}

/// Width and height from an image file's header (nothing decoded).
pub fn read_dimensions(path: &Path) -> Result<(u32, u32)> {
    ImageReader::open(path)
        .and_then(ImageReader::with_guessed_format)
        .with_context(|| format!("cannot open {}", path.display()))?
        .into_dimensions()
        .with_context(|| format!("{}: cannot read the image header", path.display()))
}

/// Decodes an image as RGBA8 unless its header says it has more than `max_pixels` pixels (checked
/// before decoding; the decoder's own allocation limit is set to match).
pub fn decode_guarded(path: &Path, max_pixels: u64) -> Result<RgbaImage> {
    let (width, height) = read_dimensions(path)?;
    if u64::from(width) * u64::from(height) > max_pixels {
        bail!(
            "{}: {width}×{height} pixels, more than the {max_pixels} accepted",
            path.display()
        );
    }
    let mut reader = ImageReader::open(path)
        .and_then(ImageReader::with_guessed_format)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // 16-bit RGBA output plus the decoder's buffers.
    limits.max_alloc = Some(max_pixels * 8 + (64 << 20));
    reader.limits(limits);
    let image = reader
        .decode()
        .with_context(|| format!("{}: cannot decode the image", path.display()))?;
    Ok(image.to_rgba8())
}

struct ClipArt {
    pairs: Vec<Pair>,
    refused: Vec<Refused>,
    over_concept_cap: usize,
}

/// A drawing before its caption: PNG path (relative to the cache), category, file stem, metadata.
struct Drawing {
    png: String,
    category: String,
    stem: String,
    meta: SvgMeta,
}

fn clipart_pairs(cache: &Path) -> Result<ClipArt> {
    let mut drawings = Vec::new();
    let mut refused = Vec::new();
    for sum in super::fetch::clipart_sums(cache)? {
        let Some(rel) = sum.path.strip_prefix("align/openclipart/png/") else {
            continue;
        };
        let (width, height) = read_dimensions(&cache.join(&sum.path))?;
        if u64::from(width) * u64::from(height) > MAX_PIXELS {
            refused.push(Refused {
                path: sum.path.clone(),
                width,
                height,
            });
            continue;
        }
        let stem = rel.strip_suffix(".png").unwrap_or(rel);
        let svg = cache.join(format!("align/openclipart/svg/{stem}.svg"));
        let text =
            fs::read_to_string(&svg).with_context(|| format!("cannot read {}", svg.display()))?;
        let meta = parse_svg_metadata(&text)
            .with_context(|| format!("{}: cannot parse the SVG metadata", svg.display()))?;
        drawings.push(Drawing {
            png: sum.path.clone(),
            category: rel.split('/').next().unwrap_or_default().to_owned(),
            stem: stem.rsplit('/').next().unwrap_or(stem).to_owned(),
            meta,
        });
    }
    let (pairs, over_concept_cap) = clipart_pairs_from(&drawings);
    Ok(ClipArt {
        pairs,
        refused,
        over_concept_cap,
    })
}

fn clipart_pairs_from(drawings: &[Drawing]) -> (Vec<Pair>, usize) {
    let mut title_count: HashMap<String, usize> = HashMap::new();
    for d in drawings {
        *title_count.entry(concept_key(&d.meta.title)).or_default() += 1;
    }
    let mut by_concept: BTreeMap<String, Vec<Pair>> = BTreeMap::new();
    for d in drawings {
        let title = concept_key(&d.meta.title);
        let head = if title.is_empty() || title_count[&title] > MAX_TITLE_SHARE {
            Some(head_from_file_stem(&d.stem)).filter(|h| !h.is_empty())
        } else {
            None
        }
        .unwrap_or_else(|| d.meta.title.clone());
        let keywords: Vec<&str> = d.meta.keywords.iter().map(String::as_str).collect();
        let pair = Pair {
            source: Source::ClipArt,
            concept: format!("clipart:{}", concept_key(&head)),
            caption: caption("a drawing of", &head, &keywords),
            category: d.category.clone(),
            split: Split::Train,
            image: ImageRef::File {
                path: d.png.clone(),
            },
        };
        by_concept
            .entry(pair.concept.clone())
            .or_default()
            .push(pair);
    }
    let mut pairs = Vec::new();
    let mut over = 0;
    for (_, mut group) in by_concept {
        group.sort_by(|a, b| image_path(a).cmp(image_path(b)));
        over += group.len().saturating_sub(MAX_PAIRS_PER_CONCEPT);
        pairs.extend(group.into_iter().take(MAX_PAIRS_PER_CONCEPT));
    }
    pairs.sort_by(|a, b| image_path(a).cmp(image_path(b)));
    (pairs, over)
}

fn image_path(pair: &Pair) -> &str {
    match &pair.image {
        ImageRef::File { path } => path,
        ImageRef::Sheet { .. } => "",
    }
}

// ----- splits -----

/// Assigns each source's concepts to training and evaluation (see the module docs).
pub fn assign_splits(pairs: &mut [Pair], seed: u64) {
    for source in Source::ALL {
        let concepts: BTreeSet<&str> = pairs
            .iter()
            .filter(|p| p.source == source)
            .map(|p| p.concept.as_str())
            .collect();
        let mut keyed: Vec<([u8; 32], &str)> = concepts
            .into_iter()
            .map(|c| (Sha256::digest(format!("{seed}:{c}")).into(), c))
            .collect();
        keyed.sort();
        let n_eval = (EVAL_FRACTION * keyed.len() as f64).round() as usize;
        let eval: BTreeSet<String> = keyed[..n_eval]
            .iter()
            .map(|(_, c)| (*c).to_owned())
            .collect();
        for pair in pairs.iter_mut().filter(|p| p.source == source) {
            pair.split = if eval.contains(&pair.concept) {
                Split::Eval
            } else {
                Split::Train
            };
        }
    }
}

// ----- images -----

/// Composites `rgba` on white, scales it to fit `size` × `size` (aspect kept) and centres it on a
/// white square.
pub fn to_square_on_white(rgba: &RgbaImage, size: u32) -> RgbImage {
    let on_white = RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let blend = |c: u8| {
            let (c, a) = (u32::from(c), u32::from(a));
            ((c * a + 255 * (255 - a) + 127) / 255) as u8
        };
        Rgb([blend(r), blend(g), blend(b)])
    });
    let longest = rgba.width().max(rgba.height()).max(1);
    let fit = |side: u32| {
        ((u64::from(side) * u64::from(size)).div_ceil(u64::from(longest)) as u32).clamp(1, size)
    };
    let (w, h) = (fit(rgba.width()), fit(rgba.height()));
    let scaled = image::imageops::resize(&on_white, w, h, FilterType::Triangle);
    let mut square = RgbImage::from_pixel(size, size, Rgb([255, 255, 255]));
    image::imageops::replace(
        &mut square,
        &scaled,
        i64::from((size - w) / 2),
        i64::from((size - h) / 2),
    );
    square
}

/// Loads pairs' images from the cache (emoji sheets decoded once, on first use).
pub struct ImageLoader {
    cache: PathBuf,
    sheets: [OnceLock<Result<RgbaImage, String>>; 2],
}

impl ImageLoader {
    /// A loader for the files in `cache`.
    pub fn new(cache: &Path) -> Self {
        Self {
            cache: cache.to_path_buf(),
            sheets: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// The pair's image, composited on white, `size` × `size`.
    pub fn load(&self, image: &ImageRef, size: u32) -> Result<RgbImage> {
        let rgba = match image {
            ImageRef::Sheet { style, x, y } => {
                let path = self.cache.join(style.sheet_path());
                let sheet = self.sheets[*style as usize]
                    .get_or_init(|| decode_guarded(&path, MAX_PIXELS).map_err(|e| format!("{e:#}")))
                    .as_ref()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                cut_cell(sheet, *x, *y).with_context(|| format!("{}", path.display()))?
            }
            ImageRef::File { path } => decode_guarded(&self.cache.join(path), MAX_PIXELS)?,
        };
        Ok(to_square_on_white(&rgba, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_rule_on_hand_made_entries() {
        assert_eq!(
            caption(
                "an emoji of",
                "GRINNING FACE",
                &[
                    "grinning",
                    "face",
                    "grinning_face",
                    "smile",
                    "face",
                    "  ",
                    "Smile"
                ]
            ),
            "an emoji of grinning face, grinning, face, smile"
        );
        let many: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let text = caption("a drawing of", "Bat", &many);
        assert_eq!(text, "a drawing of bat, k0, k1, k2, k3, k4, k5, k6, k7");
        assert_eq!(
            caption("a drawing of", "  Tux  the_Penguin ", &[]),
            "a drawing of tux the penguin"
        );
    }

    #[test]
    fn file_stems_give_heads() {
        assert_eq!(head_from_file_stem("star_49pt05step"), "star");
        assert_eq!(head_from_file_stem("home13"), "home");
        assert_eq!(
            head_from_file_stem("2_dead_frogs_lumen_desig_01"),
            "dead frogs lumen desig"
        );
        assert_eq!(head_from_file_stem("folder_binary"), "folder binary");
        assert_eq!(head_from_file_stem("01_02"), "");
    }

    fn entry(name: &str, unified: &str, google: bool, twitter: bool) -> EmojiEntry {
        EmojiEntry {
            name: Some(name.into()),
            unified: unified.into(),
            short_names: vec!["grinning".into()],
            category: Some("Smileys & Emotion".into()),
            subcategory: Some("face-smiling".into()),
            sheet_x: 32,
            sheet_y: 5,
            has_img_google: google,
            has_img_twitter: twitter,
        }
    }

    #[test]
    fn emoji_entries_give_one_pair_per_rendering() {
        let keywords = HashMap::from([(
            "\u{1F600}".to_owned(),
            vec!["grinning_face".to_owned(), "happy".to_owned()],
        )]);
        let entries = [
            entry("GRINNING FACE", "1F600", true, true),
            entry("NOTHING", "1F601", false, false),
            entry("HASH KEY", "0023-FE0F-20E3", false, true),
        ];
        let (pairs, without) = emoji_pairs_from(&entries, &keywords);
        assert_eq!(without, 1);
        assert_eq!(pairs.len(), 3);
        assert_eq!(
            pairs[0].caption,
            "an emoji of grinning face, grinning, face smiling, happy"
        );
        assert_eq!(pairs[0].caption, pairs[1].caption);
        assert_eq!(pairs[0].concept, "emoji:1F600");
        assert_eq!(pairs[0].category, "Smileys & Emotion");
        assert_eq!(
            pairs[2].image,
            ImageRef::Sheet {
                style: EmojiStyle::Twitter,
                x: 32,
                y: 5
            }
        );
        assert_eq!(emoji_key("0023-FE0F-20E3").unwrap(), "#\u{20E3}");
    }

    #[test]
    fn sheet_cells_are_cut_at_34_px_steps_inside_the_padding() {
        // A 3 × 2 cell sheet; every pixel encodes its coordinates.
        let sheet = RgbaImage::from_fn(3 * SHEET_CELL, 2 * SHEET_CELL, |x, y| {
            image::Rgba([x as u8, y as u8, 7, 255])
        });
        let cell = cut_cell(&sheet, 2, 1).unwrap();
        assert_eq!(cell.dimensions(), (32, 32));
        assert_eq!(cell.get_pixel(0, 0).0, [69, 35, 7, 255]);
        assert_eq!(cell.get_pixel(31, 31).0, [100, 66, 7, 255]);
        let err = cut_cell(&sheet, 3, 0).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }

    const SVG: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 20010904//EN"
"http://www.w3.org/TR/2001/REC-SVG-20010904/DTD/svg10.dtd">
<svg xmlns="http://www.w3.org/2000/svg">
  <metadata>
    <rdf:RDF xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
      <cc:Work rdf:about="">
        <dc:title>  Vampire
           bat </dc:title>
        <dc:description>A bat &amp; its wings</dc:description>
        <dc:subject>
          <rdf:Bag>
            <rdf:li>mammal</rdf:li>
            <rdf:li>bat</rdf:li>
          </rdf:Bag>
        </dc:subject>
        <dc:creator><cc:Agent><dc:title>Orlando Karam</dc:title></cc:Agent></dc:creator>
      </cc:Work>
    </rdf:RDF>
  </metadata>
  <path d="M 0 0 L 1 1"/>
</svg>"#;

    #[test]
    fn svg_metadata_is_read_from_the_work() {
        let meta = parse_svg_metadata(SVG).unwrap();
        assert_eq!(meta.title, "Vampire bat");
        assert_eq!(meta.keywords, ["mammal", "bat"]);
        assert_eq!(meta.description, "A bat & its wings");
        assert_eq!(parse_svg_metadata("<svg/>").unwrap(), SvgMeta::default());
        assert!(parse_svg_metadata("<svg><metadata>").is_err());
    }

    fn drawing(png: &str, title: &str) -> Drawing {
        Drawing {
            png: png.into(),
            category: png.split('/').nth(3).unwrap().into(),
            stem: png
                .rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".png")
                .into(),
            meta: SvgMeta {
                title: title.into(),
                keywords: vec!["stars".into(), "shapes".into()],
                description: String::new(),
            },
        }
    }

    #[test]
    fn collection_titles_give_way_to_file_names_and_concepts_are_capped() {
        let mut drawings: Vec<Drawing> = (0..30)
            .map(|i| {
                drawing(
                    &format!("align/openclipart/png/shapes/star_{i:02}pt.png"),
                    "gramastar",
                )
            })
            .collect();
        drawings.push(drawing("align/openclipart/png/animals/bat_01.png", "Bat"));
        drawings.push(drawing("align/openclipart/png/animals/zzz.png", ""));
        let (pairs, over) = clipart_pairs_from(&drawings);
        assert_eq!(over, 30 - MAX_PAIRS_PER_CONCEPT);
        assert_eq!(pairs.len(), MAX_PAIRS_PER_CONCEPT + 2);
        assert_eq!(pairs[0].caption, "a drawing of bat, stars, shapes");
        assert_eq!(pairs[0].category, "animals");
        assert_eq!(pairs[1].caption, "a drawing of zzz, stars, shapes");
        assert!(pairs[2..].iter().all(|p| p.concept == "clipart:star"));
        assert_eq!(
            image_path(&pairs[2]),
            "align/openclipart/png/shapes/star_00pt.png"
        );
    }

    fn concept_pairs(n: usize, source: Source) -> Vec<Pair> {
        (0..n)
            .flat_map(|i| {
                (0..2).map(move |_| Pair {
                    source,
                    concept: format!("{source:?}:{i}"),
                    caption: String::new(),
                    category: String::new(),
                    split: Split::Train,
                    image: ImageRef::File {
                        path: String::new(),
                    },
                })
            })
            .collect()
    }

    #[test]
    fn splits_are_disjoint_by_concept_exact_and_stable_for_a_seed() {
        let mut pairs = concept_pairs(1000, Source::Emoji);
        pairs.extend(concept_pairs(501, Source::ClipArt));
        assign_splits(&mut pairs, 7);
        let corpus = Corpus {
            pairs: pairs.clone(),
            ..Default::default()
        };
        assert_eq!(corpus.concepts(Source::Emoji, Split::Eval), 200);
        assert_eq!(corpus.concepts(Source::ClipArt, Split::Eval), 100); // round(100.2)
        assert_eq!(corpus.count(Source::Emoji, Split::Eval), 400);
        let eval: BTreeSet<&str> = pairs
            .iter()
            .filter(|p| p.split == Split::Eval)
            .map(|p| p.concept.as_str())
            .collect();
        let train: BTreeSet<&str> = pairs
            .iter()
            .filter(|p| p.split == Split::Train)
            .map(|p| p.concept.as_str())
            .collect();
        assert!(eval.is_disjoint(&train));
        // The same seed on the pairs in another order: the same split per concept.
        let mut reversed: Vec<Pair> = pairs.iter().rev().cloned().collect();
        assign_splits(&mut reversed, 7);
        reversed.reverse();
        assert_eq!(reversed, pairs);
        // Another seed: another split.
        let mut other = pairs.clone();
        assign_splits(&mut other, 8);
        assert_ne!(other, pairs);
    }

    /// A PNG signature, an IHDR chunk claiming `width` × `height` RGBA8, two bytes of IDAT and IEND.
    pub(crate) fn png_header_only(width: u32, height: u32) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(data);
            png.extend_from_slice(kind);
            png.extend_from_slice(data);
            png.extend_from_slice(&crc.sum().to_be_bytes());
        };
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        chunk(b"IHDR", &ihdr);
        // The start of a zlib stream: decoders read the header up to the first IDAT.
        chunk(b"IDAT", &[0x78, 0x9c]);
        chunk(b"IEND", &[]);
        png
    }

    #[test]
    fn the_size_guard_refuses_a_huge_header_without_decoding() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("huge.png");
        // 100 000² RGBA8 would be 40 GB.
        fs::write(&path, png_header_only(100_000, 100_000)).unwrap();
        assert_eq!(read_dimensions(&path).unwrap(), (100_000, 100_000));
        let err = format!("{:#}", decode_guarded(&path, MAX_PIXELS).unwrap_err());
        assert!(
            err.contains("huge.png") && err.contains("100000×100000"),
            "{err}"
        );
        // A corrupt file names itself.
        let bad = tmp.path().join("bad.png");
        fs::write(&bad, b"not a png").unwrap();
        let err = format!("{:#}", decode_guarded(&bad, MAX_PIXELS).unwrap_err());
        assert!(err.contains("bad.png"), "{err}");
    }

    #[test]
    #[ignore = "needs `sharpness-lab align fetch`"]
    fn the_real_corpus() {
        let cache = crate::data::default_cache_dir();
        super::super::fetch::verify(&cache).unwrap();
        let corpus = build(&cache, 0).unwrap();
        let emoji = |split| corpus.concepts(Source::Emoji, split);
        let (train, eval) = (emoji(Split::Train), emoji(Split::Eval));
        // emoji-datasource 16.0.0 has 1911 entries, all with Google and Twitter images.
        assert_eq!((train + eval, corpus.emoji_without_image), (1911, 0));
        assert_eq!(eval, 382); // round(0.2 · 1911)
        assert_eq!(corpus.count(Source::Emoji, Split::Train), 2 * train);
        let clip = corpus.count(Source::ClipArt, Split::Train)
            + corpus.count(Source::ClipArt, Split::Eval);
        // The fetch step keeps 6900 drawings; each is a pair, refused or over its concept's cap.
        assert_eq!(clip + corpus.refused.len() + corpus.over_concept_cap, 6900);
        assert!(clip > 4000, "{clip}");
        // The 168 Mpx drawing is refused.
        assert!(
            corpus
                .refused
                .iter()
                .any(|r| r.width == 10524 && r.height == 16000)
        );
        // Splits are disjoint by concept.
        let concepts = |split| -> BTreeSet<&str> {
            corpus
                .pairs
                .iter()
                .filter(|p| p.split == split)
                .map(|p| p.concept.as_str())
                .collect()
        };
        assert!(concepts(Split::Train).is_disjoint(&concepts(Split::Eval)));
        eprintln!(
            "emoji concepts {train}/{eval}, clip-art pairs {clip} ({} / {} concepts), refused {}, over cap {}",
            corpus.concepts(Source::ClipArt, Split::Train),
            corpus.concepts(Source::ClipArt, Split::Eval),
            corpus.refused.len(),
            corpus.over_concept_cap
        );
        for p in corpus.pairs.iter().step_by(997) {
            eprintln!(
                "{:?} {:?} [{}] {}",
                p.source, p.split, p.category, p.caption
            );
        }
    }

    #[test]
    fn images_are_composited_on_white_and_centred() {
        // 4 × 2: left half opaque red, right half transparent; scaled to 8 × 4 on an 8 × 8 square.
        let rgba = RgbaImage::from_fn(4, 2, |x, _| {
            if x < 2 {
                image::Rgba([255, 0, 0, 255])
            } else {
                image::Rgba([0, 0, 0, 0])
            }
        });
        let square = to_square_on_white(&rgba, 8);
        assert_eq!(square.dimensions(), (8, 8));
        assert_eq!(square.get_pixel(0, 0).0, [255, 255, 255]); // padding above
        assert_eq!(square.get_pixel(0, 3).0, [255, 0, 0]);
        assert_eq!(square.get_pixel(7, 3).0, [255, 255, 255]); // transparent → white
        // Half-transparent black: mid grey.
        let half = RgbaImage::from_pixel(1, 1, image::Rgba([0, 0, 0, 128]));
        assert_eq!(
            to_square_on_white(&half, 1).get_pixel(0, 0).0,
            [127, 127, 127]
        );
    }
}
