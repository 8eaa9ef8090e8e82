//! The encoder end to end on a small randomly initialised BERT written to disk in the real
//! files' formats (always run), and on all-MiniLM-L6-v2 from the cache (ignored: CI has none).

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use super::*;

/// The small model's architecture: nothing square where a transposition could hide, two layers,
/// three heads, and an ε large enough that using any other one shows.
const CONFIG: &str = r#"{
  "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
  "hidden_size": 12, "num_attention_heads": 3, "num_hidden_layers": 2, "intermediate_size": 20,
  "max_position_embeddings": 16, "type_vocab_size": 2, "vocab_size": 30,
  "layer_norm_eps": 0.05, "pad_token_id": 0, "position_embedding_type": "absolute"
}"#;
const WIDTH: usize = 12;
const HEADS: usize = 3;
const LAYERS: usize = 2;
const INTERMEDIATE: usize = 20;
const EPS: f64 = 0.05;
const MAX_SEQ_LENGTH: usize = 10;

const VOCAB: [&str; 24] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "eating", "food", "bread",
    "horse", "riding", "the", "dog", "cat", "sat", "on", "mat", ".", "piece", "of", "##s", "long",
];
const CLS: u32 = 2;
const SEP: u32 = 3;

/// A tokenizer.json like the package's (BERT normaliser and pre-tokeniser, WordPiece,
/// `[CLS] … [SEP]`, truncation to 128 and fixed padding to 128 declared) over [`VOCAB`].
fn tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i.into()))
        .collect();
    let special = |id: usize| {
        serde_json::json!({"id": id, "special": true, "content": VOCAB[id], "single_word": false,
                           "lstrip": false, "rstrip": false, "normalized": false})
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": {"max_length": 128, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": (0..5).map(special).collect::<Vec<_>>(),
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [CLS], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [SEP], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    })
    .to_string()
}

/// The small model's tensors by name: shape and values.
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Random weights under `BertModel`'s names (plus a pooler, which the encoder ignores).
fn random_tensors(seed: u64) -> Tensors {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut tensors = Tensors::new();
    let mut add = |name: String, shape: Vec<usize>, centre: f32, spread: f32| {
        let n = shape.iter().product();
        let values = (0..n)
            .map(|_| centre + rng.random_range(-spread..spread))
            .collect();
        tensors.insert(name, (shape, values));
    };
    let linear = |add: &mut dyn FnMut(String, Vec<usize>, f32, f32), p: &str, i, o| {
        add(format!("{p}.weight"), vec![o, i], 0.0, 0.6);
        add(format!("{p}.bias"), vec![o], 0.0, 0.2);
    };
    let norm = |add: &mut dyn FnMut(String, Vec<usize>, f32, f32), p: &str| {
        add(format!("{p}.weight"), vec![WIDTH], 1.0, 0.3);
        add(format!("{p}.bias"), vec![WIDTH], 0.0, 0.2);
    };
    add(
        "embeddings.word_embeddings.weight".into(),
        vec![30, WIDTH],
        0.0,
        1.0,
    );
    add(
        "embeddings.position_embeddings.weight".into(),
        vec![16, WIDTH],
        0.0,
        1.0,
    );
    add(
        "embeddings.token_type_embeddings.weight".into(),
        vec![2, WIDTH],
        0.0,
        1.0,
    );
    norm(&mut add, "embeddings.LayerNorm");
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for part in ["query", "key", "value"] {
            linear(
                &mut add,
                &format!("{p}.attention.self.{part}"),
                WIDTH,
                WIDTH,
            );
        }
        linear(
            &mut add,
            &format!("{p}.attention.output.dense"),
            WIDTH,
            WIDTH,
        );
        norm(&mut add, &format!("{p}.attention.output.LayerNorm"));
        linear(
            &mut add,
            &format!("{p}.intermediate.dense"),
            WIDTH,
            INTERMEDIATE,
        );
        linear(&mut add, &format!("{p}.output.dense"), INTERMEDIATE, WIDTH);
        norm(&mut add, &format!("{p}.output.LayerNorm"));
    }
    linear(&mut add, "pooler.dense", WIDTH, WIDTH);
    tensors
}

/// The safetensors file of `tensors` (with the package's extra `embeddings.position_ids`, i64).
fn safetensors_bytes(tensors: &Tensors) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), shape.clone(), Dtype::F32, data)
        })
        .chain(std::iter::once((
            "embeddings.position_ids".to_string(),
            vec![1, 16],
            Dtype::I64,
            (0..16i64).flat_map(|v| v.to_le_bytes()).collect(),
        )))
        .collect();
    let views = bytes.iter().map(|(name, shape, dtype, data)| {
        (
            name.clone(),
            TensorView::new(*dtype, shape.clone(), data).unwrap(),
        )
    });
    safetensors::serialize(views, None).unwrap()
}

/// A directory holding the small model's four files, and its tensors.
fn small_model() -> (tempfile::TempDir, Tensors) {
    let dir = tempfile::tempdir().unwrap();
    let tensors = random_tensors(7);
    std::fs::write(dir.path().join(WEIGHTS_FILE), safetensors_bytes(&tensors)).unwrap();
    std::fs::write(dir.path().join(TOKENIZER_FILE), tokenizer_json()).unwrap();
    std::fs::write(dir.path().join(CONFIG_FILE), CONFIG).unwrap();
    let sentence = format!(r#"{{"max_seq_length": {MAX_SEQ_LENGTH}, "do_lower_case": false}}"#);
    std::fs::write(dir.path().join(SENTENCE_CONFIG_FILE), sentence).unwrap();
    (dir, tensors)
}

fn load_small(dir: &Path) -> Result<TextEncoder> {
    TextEncoder::load_width(dir, &Device::flex(), WIDTH)
}

fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, width] = t.dims();
    let values = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    values.chunks(width).map(<[f32]>::to_vec).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The sentence embedding of `ids` computed directly from the weights in f64, one scalar at a
/// time: BERT as PyTorch's `BertModel` defines it, mean pooling, L2 normalisation.
fn direct_embedding(tensors: &Tensors, ids: &[u32]) -> Vec<f32> {
    let get = |name: &str| -> Vec<f64> { tensors[name].1.iter().map(|&v| f64::from(v)).collect() };
    // PyTorch's layout: weight [out, in].
    let linear = |x: &[Vec<f64>], p: &str| -> Vec<Vec<f64>> {
        let (w, b) = (get(&format!("{p}.weight")), get(&format!("{p}.bias")));
        let d_in = x[0].len();
        x.iter()
            .map(|row| {
                b.iter()
                    .enumerate()
                    .map(|(o, bo)| bo + (0..d_in).map(|i| w[o * d_in + i] * row[i]).sum::<f64>())
                    .collect()
            })
            .collect()
    };
    let norm = |x: Vec<Vec<f64>>, p: &str| -> Vec<Vec<f64>> {
        let (g, b) = (get(&format!("{p}.weight")), get(&format!("{p}.bias")));
        x.into_iter()
            .map(|row| {
                let n = row.len() as f64;
                let mean = row.iter().sum::<f64>() / n;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                row.iter()
                    .enumerate()
                    .map(|(j, v)| (v - mean) / (var + EPS).sqrt() * g[j] + b[j])
                    .collect()
            })
            .collect()
    };
    let add = |a: Vec<Vec<f64>>, b: &[Vec<f64>]| -> Vec<Vec<f64>> {
        a.into_iter()
            .zip(b)
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p + q).collect())
            .collect()
    };
    let (word, pos, typ) = (
        get("embeddings.word_embeddings.weight"),
        get("embeddings.position_embeddings.weight"),
        get("embeddings.token_type_embeddings.weight"),
    );
    let x: Vec<Vec<f64>> = ids
        .iter()
        .enumerate()
        .map(|(t, &id)| {
            (0..WIDTH)
                .map(|j| word[id as usize * WIDTH + j] + pos[t * WIDTH + j] + typ[j])
                .collect()
        })
        .collect();
    let mut x = norm(x, "embeddings.LayerNorm");
    let head_dim = WIDTH / HEADS;
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        let q = linear(&x, &format!("{p}.attention.self.query"));
        let k = linear(&x, &format!("{p}.attention.self.key"));
        let v = linear(&x, &format!("{p}.attention.self.value"));
        let mut context = vec![vec![0.0; WIDTH]; ids.len()];
        for h in 0..HEADS {
            let cols = h * head_dim..(h + 1) * head_dim;
            for (i, out) in context.iter_mut().enumerate() {
                let scores: Vec<f64> = (0..ids.len())
                    .map(|j| {
                        cols.clone().map(|c| q[i][c] * k[j][c]).sum::<f64>()
                            / (head_dim as f64).sqrt()
                    })
                    .collect();
                let top = scores.iter().copied().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in cols.clone() {
                    out[c] = (0..ids.len()).map(|j| e[j] / z * v[j][c]).sum();
                }
            }
        }
        let attended = linear(&context, &format!("{p}.attention.output.dense"));
        x = norm(
            add(attended, &x),
            &format!("{p}.attention.output.LayerNorm"),
        );
        let mut hidden = linear(&x, &format!("{p}.intermediate.dense"));
        for v in hidden.iter_mut().flatten() {
            *v = 0.5 * *v * (1.0 + libm::erf(*v / std::f64::consts::SQRT_2));
        }
        let out = linear(&hidden, &format!("{p}.output.dense"));
        x = norm(add(out, &x), &format!("{p}.output.LayerNorm"));
    }
    let mean: Vec<f64> = (0..WIDTH)
        .map(|j| x.iter().map(|row| row[j]).sum::<f64>() / ids.len() as f64)
        .collect();
    let length = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
    mean.iter().map(|v| (v / length) as f32).collect()
}

#[test]
fn tokenises_lower_cased_between_cls_and_sep() {
    let (dir, _) = small_model();
    let encoder = load_small(dir.path()).unwrap();
    // a man is eating food . ; "dogs" is WordPiece "dog ##s"; "zebra" is unknown.
    assert_eq!(
        encoder.token_ids("A Man is eating food.").unwrap(),
        [CLS, 5, 6, 7, 8, 9, 19, SEP]
    );
    assert_eq!(
        encoder.token_ids("dogs zebra").unwrap(),
        [CLS, 14, 22, 1, SEP]
    );
    assert_eq!(encoder.token_ids("").unwrap(), [CLS, SEP]);
}

#[test]
fn small_bert_matches_a_direct_computation_from_its_weights() {
    let (dir, tensors) = small_model();
    let encoder = load_small(dir.path()).unwrap();
    assert_eq!(encoder.dim(), WIDTH);
    let texts = ["A man is eating food.", "the dog sat on the mat", "horse"];
    let embedded = rows(encoder.embed(&texts).unwrap());
    for (text, row) in texts.iter().zip(&embedded) {
        let expected = direct_embedding(&tensors, &encoder.token_ids(text).unwrap());
        let diff = max_diff(row, &expected);
        assert!(diff < 1e-5, "{text:?}: {row:?} vs {expected:?} ({diff})");
    }
    // Different sentences, different embeddings (the check above is not between constants).
    assert!(max_diff(&embedded[0], &embedded[1]) > 0.1);
}

#[test]
fn padding_does_not_change_an_embedding() {
    let (dir, _) = small_model();
    let encoder = load_small(dir.path()).unwrap();
    let short = "a man";
    let long = "the dog sat on the mat.";
    assert!(encoder.token_ids(long).unwrap().len() > encoder.token_ids(short).unwrap().len() + 4);
    let alone = rows(encoder.embed(&[short]).unwrap());
    let padded = rows(encoder.embed(&[short, long]).unwrap());
    let diff = max_diff(&alone[0], &padded[0]);
    assert!(diff < 1e-5, "padding moved the embedding by {diff}");
}

#[test]
fn many_texts_come_back_in_their_order_in_bounded_batches() {
    let (dir, _) = small_model();
    let encoder = load_small(dir.path()).unwrap();
    let words = [
        "a", "man", "is", "eating", "bread", "the", "cat", "sat", "on", "mat",
    ];
    // 300 texts of 0 to 9 words in a scrambled order of lengths: three batches at least.
    let texts: Vec<String> = (0..300).map(|i| words[..(i * 7) % 10].join(" ")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut reports = Vec::new();
    let all = encoder
        .embed_with_progress(&texts, |done| reports.push(done))
        .unwrap();
    assert_eq!(all.dims(), [300, WIDTH]);
    assert!(reports.len() >= 3, "{reports:?}");
    assert!(reports.windows(2).all(|w| w[0] < w[1]) && reports.last() == Some(&300));
    let all = rows(all);
    for len in 0..10 {
        let text = words[..len].join(" ");
        let one = rows(encoder.embed(&[&text]).unwrap());
        for (row, t) in all.iter().zip(&texts) {
            if *t == text {
                let diff = max_diff(row, &one[0]);
                assert!(diff < 1e-5, "{text:?}: {diff}");
            }
        }
    }
}

#[test]
fn a_long_caption_is_truncated_not_refused() {
    let (dir, _) = small_model();
    let encoder = load_small(dir.path()).unwrap();
    let words = [
        "a", "man", "is", "riding", "a", "horse", "on", "the", "mat", ".",
    ];
    let long: Vec<&str> = words.iter().cycle().take(5000).copied().collect();
    let long = long.join(" ");
    let ids = encoder.token_ids(&long).unwrap();
    assert_eq!(ids.len(), MAX_SEQ_LENGTH);
    assert_eq!((ids[0], ids[MAX_SEQ_LENGTH - 1]), (CLS, SEP));
    // Cut from the right: the same as the caption's first max_seq_length − 2 words.
    let head = words[..MAX_SEQ_LENGTH - 2].join(" ");
    let both = rows(encoder.embed(&[&long, &head]).unwrap());
    assert!(max_diff(&both[0], &both[1]) < 1e-6);
}

#[test]
fn no_texts_give_no_rows() {
    let (dir, _) = small_model();
    let encoder = load_small(dir.path()).unwrap();
    assert_eq!(encoder.embed(&[]).unwrap().dims(), [0, WIDTH]);
}

/// The error of loading `dir`, with its causes.
fn load_error(dir: &Path) -> String {
    match load_small(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_names(err: &str, file: &str) {
    assert!(err.contains(file), "the error does not name {file}: {err}");
    assert!(
        err.contains(FETCH_COMMAND),
        "the error does not name the repair: {err}"
    );
}

#[test]
fn a_missing_file_is_named_with_the_fetch_command() {
    for file in FILES {
        let (dir, _) = small_model();
        std::fs::remove_file(dir.path().join(file)).unwrap();
        let err = load_error(dir.path());
        assert_names(&err, file);
        assert!(err.contains("missing"), "{err}");
    }
    // The real model's width is checked too.
    let (dir, _) = small_model();
    let err = match TextEncoder::load(dir.path(), &Device::flex()) {
        Ok(_) => panic!("a 12-wide model loaded as the 384-wide tower"),
        Err(e) => format!("{e:#}"),
    };
    assert_names(&err, CONFIG_FILE);
}

#[test]
fn a_truncated_or_corrupt_weights_file_is_an_error_not_a_panic() {
    let (dir, _) = small_model();
    let path = dir.path().join(WEIGHTS_FILE);
    let full = std::fs::read(&path).unwrap();
    let header = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    for cut in [0, 5, 8, header / 2, header, header + 10, full.len() - 1] {
        std::fs::write(&path, &full[..cut]).unwrap();
        assert_names(&load_error(dir.path()), WEIGHTS_FILE);
    }
    let mut garbage = full.clone();
    garbage[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &garbage).unwrap();
    assert_names(&load_error(dir.path()), WEIGHTS_FILE);
}

#[test]
fn weights_that_do_not_match_the_config_are_named() {
    let cases = [
        (
            r#""intermediate_size": 20"#,
            r#""intermediate_size": 24"#,
            "intermediate.dense.weight",
        ),
        (
            r#""num_hidden_layers": 2"#,
            r#""num_hidden_layers": 3"#,
            "2 encoder layers",
        ),
        (
            r#""vocab_size": 30"#,
            r#""vocab_size": 31"#,
            "word_embeddings",
        ),
    ];
    for (from, to, detail) in cases {
        let (dir, _) = small_model();
        let config = CONFIG.replace(from, to);
        assert_ne!(config, CONFIG);
        std::fs::write(dir.path().join(CONFIG_FILE), config).unwrap();
        let err = load_error(dir.path());
        assert_names(&err, WEIGHTS_FILE);
        assert!(err.contains(detail), "{err}");
    }
    // A tokenizer with more tokens than the model has rows.
    let (dir, _) = small_model();
    let config = CONFIG.replace(r#""vocab_size": 30"#, r#""vocab_size": 20"#);
    std::fs::write(dir.path().join(CONFIG_FILE), config).unwrap();
    assert_names(&load_error(dir.path()), TOKENIZER_FILE);
}

#[test]
fn a_corrupt_tokenizer_or_config_is_named() {
    for file in [TOKENIZER_FILE, CONFIG_FILE, SENTENCE_CONFIG_FILE] {
        let (dir, _) = small_model();
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert_names(&load_error(dir.path()), file);
    }
    let (dir, _) = small_model();
    std::fs::write(
        dir.path().join(SENTENCE_CONFIG_FILE),
        r#"{"max_seq_length": 17}"#,
    )
    .unwrap();
    assert_names(&load_error(dir.path()), SENTENCE_CONFIG_FILE);
}

/// The real tower from the cache; fails (does not skip) if the files are not there.
fn minilm() -> TextEncoder {
    let dir = super::super::minilm_dir(&crate::data::default_cache_dir());
    TextEncoder::load(&dir, &Device::flex()).unwrap_or_else(|e| panic!("{e:#}"))
}

fn cosines(encoder: &TextEncoder, first: &str, others: &[&str]) -> Vec<f32> {
    let texts: Vec<&str> = std::iter::once(first)
        .chain(others.iter().copied())
        .collect();
    let e = rows(encoder.embed(&texts).unwrap());
    for row in &e {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    e[1..]
        .iter()
        .map(|r| r.iter().zip(&e[0]).map(|(a, b)| a * b).sum())
        .collect()
}

#[test]
#[ignore = "needs all-MiniLM-L6-v2 in the cache (`sharpness-lab align fetch`)"]
fn minilm_reproduces_the_model_card() {
    let encoder = minilm();
    assert_eq!(encoder.dim(), TEXT_DIM);
    assert_eq!(encoder.max_tokens(), 256);
    let food = "A man is eating food.";
    let c = cosines(
        &encoder,
        food,
        &[
            "A man is eating a piece of bread.",
            "A man is riding a horse.",
        ],
    );
    println!(
        "cos(food, bread) = {:.4}, cos(food, horse) = {:.4}",
        c[0], c[1]
    );
    assert!((c[0] - 0.755).abs() <= 0.005, "cos(food, bread) = {}", c[0]);
    assert!(
        c[1] < 0.4 && c[1] < c[0] - 0.3,
        "cos(food, horse) = {}",
        c[1]
    );

    // Padding (a much longer sentence in the batch) leaves an embedding where it was.
    let long = "A man in a red jacket is eating a very large plate of spaghetti with meatballs \
                at a small wooden table outside a busy restaurant in the evening.";
    let alone = rows(encoder.embed(&[food]).unwrap());
    let padded = rows(encoder.embed(&[long, food]).unwrap());
    let diff = max_diff(&alone[0], &padded[1]);
    println!("padding moved the embedding by {diff:e}");
    assert!(diff < 1e-5, "{diff}");
}

#[test]
#[ignore = "needs all-MiniLM-L6-v2 in the cache (`sharpness-lab align fetch`)"]
fn minilm_truncates_a_long_caption_to_256_tokens() {
    let encoder = minilm();
    // 5400 words, each one token: the first 254 are read, between [CLS] and [SEP].
    let sentence = "a man is riding a horse on the beach";
    let words: Vec<&str> = sentence.split(' ').cycle().take(5400).collect();
    let long = words.join(" ");
    let head = words[..254].join(" ");
    let ids = encoder.token_ids(&long).unwrap();
    assert_eq!(ids.len(), 256);
    assert_eq!(ids, encoder.token_ids(&head).unwrap());
    let e = rows(
        encoder
            .embed(&[&long, &head, "A man is riding a horse."])
            .unwrap(),
    );
    assert!(max_diff(&e[0], &e[1]) < 1e-5);
    // 0.2541 here and in an f64 numpy reference: a repetitive caption this long is far from
    // its subject under mean pooling.
    let cos: f32 = e[0].iter().zip(&e[2]).map(|(a, b)| a * b).sum();
    println!("cos(long caption, its subject) = {cos:.4}");
}

#[test]
#[ignore = "needs all-MiniLM-L6-v2 in the cache; a timing (run with --release --nocapture)"]
fn minilm_embeds_a_thousand_captions() {
    let encoder = minilm();
    let subjects = [
        "a man",
        "a small dog",
        "two children",
        "a red car",
        "an old woman",
    ];
    let verbs = [
        "is eating",
        "is riding",
        "looks at",
        "is painting",
        "walks past",
    ];
    let objects = [
        "a horse",
        "the sea",
        "a piece of bread",
        "a tall building",
        "a cat",
    ];
    let captions: Vec<String> = (0..1000)
        .map(|i| {
            let (s, v, o) = (subjects[i % 5], verbs[(i / 5) % 5], objects[(i / 25) % 5]);
            format!("{s} {v} {o} (picture {i}).")
        })
        .collect();
    let captions: Vec<&str> = captions.iter().map(String::as_str).collect();
    let start = std::time::Instant::now();
    let e = encoder.embed(&captions).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(e.dims(), [1000, TEXT_DIM]);
    println!(
        "1000 captions in {seconds:.2} s ({:.2} ms each, {} threads)",
        seconds * 1e3 / 1000.0,
        rayon::current_num_threads()
    );
}
