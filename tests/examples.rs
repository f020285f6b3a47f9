//! Each training example runs end to end with a tiny setting (through its own command-line
//! parser) and its training loss falls; the compression example reports every variant.
//!
//! Each example includes `examples/common/mod.rs` as its own module, so this binary holds
//! several copies of it.
#![allow(clippy::duplicate_mod)]

#[allow(dead_code)]
#[path = "../examples/bert_classify/main.rs"]
mod bert_classify;
#[allow(dead_code)]
#[path = "../examples/bert_mlm/main.rs"]
mod bert_mlm;
#[allow(dead_code)]
#[path = "../examples/bert_ner/main.rs"]
mod bert_ner;
#[allow(dead_code)]
#[path = "../examples/bert_qa/main.rs"]
mod bert_qa;
#[allow(dead_code)]
#[path = "../examples/compress/main.rs"]
mod compress;
#[allow(dead_code)]
#[path = "../examples/generate/main.rs"]
mod generate;
#[allow(dead_code)]
#[path = "../examples/gpt_char/main.rs"]
mod gpt_char;
#[allow(dead_code)]
#[path = "../examples/lstm_lm/main.rs"]
mod lstm_lm;
#[allow(dead_code)]
#[path = "../examples/translate/main.rs"]
mod translate;

use clap::Parser;

fn args<A: Parser>(flags: &str) -> A {
    A::parse_from(std::iter::once("example").chain(flags.split_whitespace()))
}

fn assert_falls(name: &str, first: f64, last: f64) {
    assert!(
        first.is_finite() && last < first,
        "{name}: training loss {first} -> {last} did not fall"
    );
}

#[test]
fn gpt_char_trains_and_samples() {
    let a: gpt_char::Args = args(
        "--steps 40 --context 16 --d-model 32 --layers 1 --heads 2 --eval-every 20 \
         --sample-len 20 --quiet",
    );
    let s = gpt_char::run(&a).unwrap();
    assert_falls("gpt_char", s.first_loss, s.last_loss);
    assert!(s.valid_loss.is_finite());
    assert_eq!(s.sample.chars().count(), 20);
}

#[test]
fn gpt_char_trains_on_two_replicas_with_burn_train() {
    let a: gpt_char::Args = args(
        "--devices flex,flex --steps 40 --batch-size 8 --context 16 --d-model 32 --layers 1 \
         --heads 2 --sample-len 10 --quiet",
    );
    let s = gpt_char::run(&a).unwrap();
    assert_falls("gpt_char --devices flex,flex", s.first_loss, s.last_loss);
    assert!(s.valid_loss.is_finite());
    assert_eq!(s.sample.chars().count(), 10);
}

#[test]
fn bert_mlm_ddp_on_cpu_devices_is_a_clear_error() {
    let a: bert_mlm::Args = args(
        "--devices flex,flex --ddp --steps 2 --batch-size 8 --d-model 32 --layers 1 --heads 2 \
         --vocab-size 300 --quiet",
    );
    let err = bert_mlm::run(&a)
        .err()
        .expect("DDP needs collective operations");
    assert!(err.to_string().contains("DDP"), "{err}");
}

#[test]
fn lstm_lm_trains_and_reports_perplexity() {
    let a: lstm_lm::Args =
        args("--steps 40 --bptt 12 --embedding 32 --hidden 32 --layers 1 --eval-every 20 --quiet");
    let s = lstm_lm::run(&a).unwrap();
    assert_falls("lstm_lm", s.first_loss, s.last_loss);
    assert!(
        s.test_perplexity > 1.0 && s.test_perplexity < 200.0,
        "{}",
        s.test_perplexity
    );
    assert!(
        s.test_accuracy > 0.0 && s.test_accuracy <= 1.0,
        "next-word accuracy {}",
        s.test_accuracy
    );
}

#[test]
fn lstm_lm_stateful_with_tied_weights() {
    let a: lstm_lm::Args = args(
        "--steps 40 --bptt 12 --embedding 32 --hidden 32 --layers 1 --eval-every 20 \
         --stateful --tie --quiet",
    );
    let s = lstm_lm::run(&a).unwrap();
    assert_falls("lstm_lm --stateful", s.first_loss, s.last_loss);
    assert!(
        s.test_perplexity > 1.0 && s.test_perplexity < 200.0,
        "{}",
        s.test_perplexity
    );
    assert!(
        s.test_accuracy > 0.0 && s.test_accuracy <= 1.0,
        "next-word accuracy {}",
        s.test_accuracy
    );
}

#[test]
fn bert_mlm_trains_and_predicts() {
    let a: bert_mlm::Args = args(
        "--steps 40 --batch-size 16 --d-model 32 --layers 1 --heads 2 --vocab-size 300 --quiet",
    );
    let s = bert_mlm::run(&a).unwrap();
    assert_falls("bert_mlm", s.first_loss, s.last_loss);
    assert_eq!(s.predictions.len(), 5);
    assert!(s.predictions.iter().all(|(_, top)| top.len() == 5));
}

#[test]
fn bert_mlm_with_next_sentence_prediction() {
    let a: bert_mlm::Args = args(
        "--steps 30 --batch-size 16 --d-model 32 --layers 1 --heads 2 --vocab-size 300 --nsp \
         --whole-word --quiet",
    );
    let s = bert_mlm::run(&a).unwrap();
    assert_falls("bert_mlm --nsp", s.first_loss, s.last_loss);
}

#[test]
fn bert_classify_fine_tunes_with_frozen_embeddings() {
    let a: bert_classify::Args = args(
        "--steps 40 --batch-size 16 --eval-every 20 --freeze-embeddings --head-lr-factor 2 \
         --compress --quiet",
    );
    let s = bert_classify::run(&a).unwrap();
    assert_falls("bert_classify", s.first_loss, s.last_loss);
    assert!((0.0..=1.0).contains(&s.test_accuracy));
    // --compress: the float row is the kept model itself, and int8 moves accuracy by at most
    // two test sentences in a hundred.
    let report = s.compression.expect("--compress gives a report");
    assert_eq!(report.rows.len(), 5);
    assert_eq!(report.rows[0].quality, s.test_accuracy);
    assert!(
        report.quality_loss(&report.rows[1]).abs() <= 0.02,
        "{:?}",
        report.rows[1]
    );
    assert!(report.rows[4].parameters < report.rows[0].parameters);
}

#[test]
fn bert_ner_trains_and_scores_entities() {
    let a: bert_ner::Args = args("--steps 40 --batch-size 16 --eval-every 20 --quiet");
    let s = bert_ner::run(&a).unwrap();
    assert_falls("bert_ner", s.first_loss, s.last_loss);
    assert!((0.0..=1.0).contains(&s.test_f1));
}

/// The compression report has every variant, each with what its method promises: int8 and
/// int4 files under 0.30x and 0.21x of the float file (looser than the 0.27x / 0.18x of a
/// width-128 model: at width 64 headers, scales and the f32 norms weigh more), half the Linear weights zero after magnitude
/// pruning, fewer parameters after head removal and distillation.
#[test]
fn compress_reports_every_variant() {
    let a: compress::Args = args(
        "--steps 30 --finetune-steps 10 --distill-steps 10 --context 16 --d-model 64 \
         --layers 2 --heads 4 --eval-batches 3 --repeats 2 --latency-batch 2 --quiet",
    );
    let report = compress::run(&a).unwrap();
    let methods: Vec<&str> = report.rows.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods.len(), 7, "{methods:?}");
    let [base, int8, int4, one_shot, gradual, heads, student] = &report.rows[..] else {
        unreachable!()
    };
    let ratio = |row: &lmforge::compression::report::ReportRow| {
        row.file_bytes as f64 / base.file_bytes as f64
    };
    assert!(ratio(int8) < 0.30, "int8 file {:.3}x", ratio(int8));
    assert!(ratio(int4) < 0.21, "int4 file {:.3}x", ratio(int4));
    // Int8 keeps perplexity within 2% even on a barely trained model.
    assert!(report.quality_loss(int8).abs() < 0.02, "{}", int8.quality);
    for row in [one_shot, gradual] {
        let zero = 1.0 - row.nonzero as f64 / row.parameters as f64;
        assert!(zero > 0.35 && zero < 0.5, "{}: {zero:.3} zero", row.method);
    }
    assert!(heads.parameters < base.parameters);
    assert!(student.parameters < base.parameters * 2 / 3);
    for row in &report.rows {
        assert!(row.quality.is_finite() && row.quality > 1.0, "{row:?}");
        assert!(row.latency_ms > 0.0, "{row:?}");
    }
}

/// The generate example on a Llama fixture folder (no tokenizer: ids in, ids out) gives
/// HuggingFace `generate()`'s greedy tokens, with the end-of-sequence id read from the
/// folder's config.json and suppressed for the first 20 tokens as HuggingFace did; a
/// sharded Qwen2 folder runs too.
#[test]
fn generate_example_reproduces_huggingface_on_a_llama_folder() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let fixture =
        lmforge_device::testing::Fixture::load(root.join("llama_gqa/reference.safetensors"));
    let ids =
        |key: &str| -> Vec<u32> { fixture.get(key).iter::<i64>().map(|v| v as u32).collect() };
    let prompt: Vec<String> = ids("input.prompt").iter().map(u32::to_string).collect();
    let a: generate::Args = args(&format!(
        "--model {} --prompt-ids {} --max-new-tokens 20 --min-new-tokens 20",
        root.join("llama_gqa").display(),
        prompt.join(",")
    ));
    assert_eq!(generate::run(&a).unwrap(), ids("generate.greedy"));
    let a: generate::Args = args(&format!(
        "--model {} --prompt-ids 3,4,5 --max-new-tokens 4 --do-sample --top-k 5",
        root.join("qwen2_tied").display()
    ));
    assert!(generate::run(&a).unwrap().len() <= 4);
    // A folder without tokenizer.json needs --prompt-ids.
    let bare = std::env::temp_dir().join(format!("lmforge-bare-{}", std::process::id()));
    std::fs::create_dir_all(&bare).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(root.join("llama_gqa").join(file), bare.join(file)).unwrap();
    }
    let a: generate::Args = args(&format!("--model {}", bare.display()));
    let err = generate::run(&a).expect_err("no tokenizer.json and no --prompt-ids");
    assert!(err.to_string().contains("--prompt-ids"), "{err}");
    std::fs::remove_dir_all(&bare).unwrap();
    // The bf16 folder keeps its parameters in bf16 (the default, --dtype file) and still
    // gives HuggingFace's tokens for that file.
    let bf16 =
        lmforge_device::testing::Fixture::load(root.join("llama_bf16/reference.safetensors"));
    let ids = |key: &str| -> Vec<u32> { bf16.get(key).iter::<i64>().map(|v| v as u32).collect() };
    let prompt: Vec<String> = ids("input.prompt").iter().map(u32::to_string).collect();
    for dtype in ["file", "f32"] {
        let a: generate::Args = args(&format!(
            "--model {} --prompt-ids {} --max-new-tokens 20 --min-new-tokens 20 --dtype {dtype}",
            root.join("llama_bf16").display(),
            prompt.join(",")
        ));
        assert_eq!(
            generate::run(&a).unwrap(),
            ids("generate.greedy"),
            "{dtype}"
        );
    }
    assert!(
        <generate::Args as clap::Parser>::try_parse_from(["generate", "--dtype", "f8"]).is_err(),
        "an unknown dtype is refused"
    );
}

/// `generate --chat --system S --prompt P` feeds the model the ids HuggingFace's
/// `apply_chat_template(tokenize=True, add_generation_prompt=True)` gives for that
/// conversation, from the folder's tokenizer.json and tokenizer_config.json (fixtures of
/// `tests/fixtures/gen_chat.py`, Llama 3 and Qwen2 kinds).
#[test]
fn generate_example_chat_prompt_equals_huggingface() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat");
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("tokenizer_cases.json")).unwrap()).unwrap();
    for name in ["llama3_style", "qwen2_style"] {
        let example = &cases[name]["example"];
        let dir = root.join(name);
        let tokenizer =
            lmforge::data::tokenizer::HfTokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let a = <generate::Args as clap::Parser>::try_parse_from([
            "generate",
            "--chat",
            "--system",
            example["system"].as_str().unwrap(),
            "--prompt",
            example["prompt"].as_str().unwrap(),
        ])
        .unwrap();
        let want = json_ids(&example["ids"]);
        assert_eq!(
            generate::prompt_ids(&dir, &a, Some(&tokenizer)).unwrap(),
            want,
            "{name}"
        );
        // Without --chat the text is encoded as it is (a different prompt).
        let plain = <generate::Args as clap::Parser>::try_parse_from([
            "generate",
            "--prompt",
            example["prompt"].as_str().unwrap(),
        ])
        .unwrap();
        assert_ne!(
            generate::prompt_ids(&dir, &plain, Some(&tokenizer)).unwrap(),
            want
        );
    }
}

/// A JSON array of token ids.
fn json_ids(ids: &serde_json::Value) -> Vec<u32> {
    ids.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// `generate --model DIR` alone runs on every decoder fixture folder (GPT-2, Llama, Mistral,
/// Qwen2, the bf16 Llama): the folder's tokenizer.json (character-level, fitted to the tiny
/// vocabularies by `tests/fixtures/gen_chat.py`) encodes the default prompt to the ids
/// HuggingFace's tokenizer gave, and the default number of tokens comes out unless the
/// end-of-sequence token ends it sooner.
#[test]
fn generate_example_runs_on_every_decoder_fixture_folder() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let prompts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("chat/tiny_prompts.json")).unwrap())
            .unwrap();
    let prompts = prompts.as_object().unwrap();
    assert_eq!(prompts.len(), 5);
    for (case, want) in prompts {
        let dir = root.join("models").join(case);
        let a: generate::Args = args(&format!("--model {}", dir.display()));
        let tokenizer =
            lmforge::data::tokenizer::HfTokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let want = json_ids(want);
        assert_eq!(
            generate::prompt_ids(&dir, &a, Some(&tokenizer)).unwrap(),
            want,
            "{case}: prompt ids"
        );
        let out = generate::run(&a).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(
            !out.is_empty() && out.len() <= a.max_new_tokens,
            "{case}: {} new tokens",
            out.len()
        );
    }
}

/// The toy language pair: training lowers the loss far below a uniform guess over the
/// vocabulary, decoding produces translations, and BLEU is scored for greedy and beam search.
#[test]
fn translate_trains_and_scores_bleu() {
    let a: translate::Args = args(
        "--steps 180 --eval-every 90 --d-model 32 --layers 1 --heads 2 --vocab-size 300 \
         --valid 100 --test 100 --test-sources 12 --beams 2 --batch-size 32 --dropout 0 \
         --lr 3e-3 --quiet",
    );
    let s = translate::run(&a).unwrap();
    assert_falls("translate", s.first_loss, s.last_loss);
    // A uniform guess over ~300 ids costs ln 300 = 5.7 nats per token.
    assert!(s.valid_loss < 4.0, "validation loss {}", s.valid_loss);
    assert!(
        s.valid_accuracy > 0.2,
        "token accuracy {}",
        s.valid_accuracy
    );
    assert_eq!(s.test_sources, 12);
    assert!((0.0..=100.0).contains(&s.bleu_greedy) && (0.0..=100.0).contains(&s.bleu_beam));
    assert!(s.samples.iter().all(|(_, hyp, _)| !hyp.is_empty()));
}

/// The same model as a denoising auto-encoder: it learns to reconstruct, and reconstruction
/// BLEU of noisy test sentences is scored.
#[test]
fn translate_denoises() {
    let a: translate::Args = args(
        "--denoise --steps 180 --eval-every 90 --d-model 32 --layers 1 --heads 2 \
         --vocab-size 300 --valid 100 --test 100 --test-sources 8 --beams 2 --batch-size 32 \
         --dropout 0 --lr 3e-3 --quiet",
    );
    let s = translate::run(&a).unwrap();
    assert_falls("translate --denoise", s.first_loss, s.last_loss);
    assert!(s.valid_loss < 3.0, "validation loss {}", s.valid_loss);
}

/// Question answering on generated passages: the span loss falls well below a uniform guess
/// over the window's positions, and the test questions are scored with SQuAD's EM and F1.
#[test]
fn bert_qa_fine_tunes_and_scores_squad_metrics() {
    let a: bert_qa::Args = args(
        "--steps 60 --eval-every 30 --batch-size 16 --max-length 96 --stride 32 \
         --max-question-tokens 16 --test-questions 40 --quiet",
    );
    let s = bert_qa::run(&a).unwrap();
    assert_falls("bert_qa", s.first_loss, s.last_loss);
    // Passages of 4-6 facts are ~40-70 tokens: a uniform guess costs ln 40 = 3.7 or more.
    assert!(s.valid_loss < 3.0, "validation loss {}", s.valid_loss);
    assert_eq!(s.test_questions, 40);
    assert!((0.0..=100.0).contains(&s.exact_match) && s.f1 >= s.exact_match);
}
