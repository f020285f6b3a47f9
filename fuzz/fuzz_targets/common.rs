//! Shared by the fuzz targets: a scratch folder per process, and the valid seed input each
//! target writes into its corpus folder at start (so a fresh `cargo fuzz run` begins from a
//! real file rather than from nothing).

#![allow(dead_code)]

use std::path::PathBuf;

/// A scratch folder for this process's files.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lmforge-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Writes `bytes` as `seed-<name>` into the corpus folder libFuzzer was given (its first
/// folder argument), unless that file exists.
pub fn write_seed(name: &str, bytes: &[u8]) {
    let corpus = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .find(|p| p.is_dir());
    if let Some(dir) = corpus {
        let path = dir.join(format!("seed-{name}"));
        if !path.exists() {
            std::fs::write(path, bytes).expect("seed");
        }
    }
}

/// The flex device.
pub fn device() -> lmforge::burn::tensor::Device {
    lmforge::device::device("flex").expect("flex")
}

/// The tiny GPT-2 the model targets load into: vocabulary 12, width 8, 2 heads, 1 block,
/// context 8.
pub fn tiny_gpt() -> lmforge::models::gpt::GptConfig {
    lmforge::models::gpt::GptConfig::tiny(12)
        .with_d_model(8)
        .with_n_heads(2)
        .with_n_layers(1)
        .with_max_seq_length(8)
}

/// Folders holding a saved tiny BERT masked-LM and a tiny GPT-2 (HuggingFace layout), under
/// this process's scratch folder `tag`.
pub fn hf_folders(tag: &str) -> (PathBuf, PathBuf) {
    use lmforge::models::Pretrained;
    use lmforge::models::bert::BertConfig;
    let device = device();
    let bert = scratch(&format!("{tag}-bert"));
    BertConfig::tiny(12)
        .with_n_layers(1)
        .with_d_model(8)
        .with_n_heads(2)
        .with_d_ff(16)
        .init_masked_lm(&device)
        .expect("bert")
        .save_pretrained(&bert)
        .expect("save bert");
    let gpt = scratch(&format!("{tag}-gpt"));
    tiny_gpt()
        .init(&device)
        .expect("gpt")
        .save_pretrained(&gpt)
        .expect("save gpt");
    (bert, gpt)
}

/// Seeds the corpus with `file` of both folders, behind the selector byte (0: BERT, 1: GPT-2).
pub fn seed_hf(file: &str, (bert, gpt): &(PathBuf, PathBuf)) {
    for (selector, dir, name) in [(0u8, bert, "bert"), (1, gpt, "gpt")] {
        let mut seed = vec![selector];
        seed.extend(std::fs::read(dir.join(file)).expect("saved file"));
        write_seed(name, &seed);
    }
}

/// Replaces `file` in the BERT folder (first byte even) or the GPT-2 folder (odd) with the rest
/// of `data` and loads the folder; the result is dropped, only panics and crashes matter.
pub fn load_hf(data: &[u8], file: &str, (bert, gpt): &(PathBuf, PathBuf)) {
    use lmforge::models::Pretrained;
    use lmforge::models::bert::BertForMaskedLm;
    use lmforge::models::gpt::Gpt;
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let device = device();
    let dir = if selector % 2 == 0 { bert } else { gpt };
    std::fs::write(dir.join(file), bytes).expect("write");
    if selector % 2 == 0 {
        let _ = BertForMaskedLm::from_pretrained(dir, &device);
    } else {
        let _ = Gpt::from_pretrained(dir, &device);
    }
}
