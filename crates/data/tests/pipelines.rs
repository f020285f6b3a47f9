//! Datasets and batching end to end on the committed fixture corpus.

use std::path::PathBuf;

use lmforge_data::batcher::BatcherConfig;
use lmforge_data::dataset::conll::{ConllConfig, IGNORE_LABEL, tag_set};
use lmforge_data::dataset::lm_blocks::LmBlocksConfig;
use lmforge_data::dataset::nsp::{nsp_pairs, read_documents};
use lmforge_data::dataset::shuffle;
use lmforge_data::dataset::stream::{LineEnd, TokenBlocks};
use lmforge_data::tokenizer::{CharTokenizer, HfTokenizer, Tokenizer};
use lmforge_device::testing::reference_device;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data"
    ))
    .join(name)
}

fn wordpiece() -> HfTokenizer {
    HfTokenizer::from_file(fixture("wordpiece_tokenizer.json")).unwrap()
}

#[test]
fn streamed_blocks_equal_the_in_memory_split() {
    let text = std::fs::read_to_string(fixture("corpus.txt")).unwrap();
    let tokenizer = CharTokenizer::from_text(&text).unwrap();
    let splits = LmBlocksConfig::new(32)
        .with_fractions(0.0, 0.0)
        .from_file(&tokenizer, fixture("corpus.txt"))
        .unwrap();
    assert_eq!(splits.train.len(), text.chars().count() / 32);
    let streamed: Vec<Vec<u32>> =
        TokenBlocks::open(fixture("corpus.txt"), &tokenizer, 32, LineEnd::Newline)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(streamed, splits.train);
    // Newlines are kept: the blocks decode back to the start of the file.
    let first: Vec<u32> = splits.train[..2].concat();
    let chars: String = text.chars().take(64).collect();
    assert_eq!(tokenizer.decode(&first, false).unwrap(), chars);

    let with_eot = LmBlocksConfig::new(16)
        .with_line_end(LineEnd::Token(0))
        .from_text(&wordpiece(), &text)
        .unwrap();
    assert!(!with_eot.valid.is_empty() && !with_eot.test.is_empty());
    let mut shuffled = with_eot.train.clone();
    shuffle(&mut shuffled, 1);
    assert_ne!(shuffled, with_eot.train);
}

#[test]
fn nsp_pairs_from_the_corpus_batch_with_segments() {
    let documents = read_documents(fixture("corpus.txt")).unwrap();
    assert_eq!(documents.len(), 6);
    assert_eq!(documents[0].len(), 5);
    let pairs = nsp_pairs(&documents, 0).unwrap();
    assert_eq!(
        pairs.len(),
        documents.iter().map(|d| d.len() - 1).sum::<usize>()
    );
    let tokenizer = wordpiece();
    let encodings: Vec<_> = pairs
        .iter()
        .take(4)
        .map(|p| p.encode(&tokenizer).unwrap())
        .collect();
    let batcher = BatcherConfig::new(0).with_max_length(24).init().unwrap();
    let batch = batcher.batch(&encodings, reference_device()).unwrap();
    let [batch_size, seq_length] = batch.input_ids.dims();
    assert_eq!(batch_size, 4);
    assert!(seq_length <= 24);
    let ids = batch
        .input_ids
        .into_data()
        .try_into_vec_as::<i64>()
        .unwrap();
    let types = batch.type_ids.into_data().try_into_vec_as::<i64>().unwrap();
    for (b, &len) in batch.lengths.iter().enumerate() {
        let row = &ids[b * seq_length..(b + 1) * seq_length];
        assert_eq!(row[0], 2, "[CLS] first");
        assert_eq!(row[len - 1], 3, "[SEP] last, also after truncation");
        assert!(row[len..].iter().all(|&id| id == 0), "padding");
        assert!(
            types[b * seq_length..b * seq_length + len].contains(&1),
            "second segment"
        );
    }
}

#[test]
fn conll_labels_align_to_first_subwords() {
    let text = "-DOCSTART- -X- -X- O\n\nMarie NNP B-NP B-PER\nordered VBD B-VP O\na DT B-NP O\n\
                café NN I-NP O\nin IN B-PP O\nZürich NNP B-NP B-LOC\n. . O O\n";
    let sentences = ConllConfig::default().parse(text).unwrap();
    let labels = tag_set(&sentences);
    assert_eq!(labels.names(), ["B-LOC", "B-PER", "O"]);
    let aligned = sentences[0].align(&wordpiece(), &labels, true).unwrap();
    let tokens: Vec<String> = aligned
        .encoding
        .ids
        .iter()
        .map(|&id| wordpiece().id_to_token(id).unwrap())
        .collect();
    // HuggingFace: [CLS] marie o ##r ##d ##er ##ed a cafe in z ##u ##r ##i ##c ##h . [SEP]
    assert_eq!(tokens[..4], ["[CLS]", "marie", "o", "##r"]);
    let i = IGNORE_LABEL;
    let (loc, per, o) = (0, 1, 2);
    assert_eq!(
        aligned.labels,
        [i, per, o, i, i, i, i, o, o, o, loc, i, i, i, i, i, o, i]
    );
}
