//! `tokenizer.json` parsing (`HfTokenizer::from_bytes`), then encoding and decoding a fixed
//! text with whatever tokenizer parsed: any input must give a tokenizer or a `DataError`,
//! never a panic.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use lmforge::data::tokenizer::{HfTokenizer, Tokenizer, WordPieceTrainOptions};

fn seed() -> Vec<u8> {
    let dir = common::scratch("tokenizer");
    let corpus = dir.join("corpus.txt");
    std::fs::write(
        &corpus,
        "the cat sat on the mat\nthe dog ate the bone\nunaffable fuzz\n",
    )
    .expect("corpus");
    let options = WordPieceTrainOptions {
        vocab_size: 80,
        min_frequency: 1,
        ..Default::default()
    };
    let tokenizer = HfTokenizer::train_wordpiece(&[&corpus], &options).expect("train");
    let path = dir.join("tokenizer.json");
    tokenizer.save(&path).expect("save");
    std::fs::read(path).expect("read")
}

fuzz_target!(
    init: {
        common::write_seed("wordpiece", &seed());
        // `HfTokenizer::from_bytes` turns panics inside the `tokenizers` crate into a typed
        // error; libFuzzer's hook would abort on them before that, so it is kept for every
        // other panic only. A panic from there that lmforge failed to catch still aborts (the
        // harness aborts on any panic reaching it).
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tokenizers = info
                .location()
                .is_some_and(|l| l.file().contains("/tokenizers-"));
            if !in_tokenizers {
                abort(info);
            }
        }));
    },
    |data: &[u8]| {
        if let Ok(tokenizer) = HfTokenizer::from_bytes(data) {
            for special in [false, true] {
                if let Ok(encoding) = tokenizer.encode("The cat [MASK] sat, unaffably.", special) {
                    let _ = tokenizer.decode(&encoding.ids, false);
                    let _ = tokenizer.decode(&encoding.ids, true);
                }
            }
            let _ = tokenizer.decode(&[0, 1, 2, 3, u32::MAX], false);
        }
    }
);
