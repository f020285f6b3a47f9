//! Text generation: greedy tokens equal HuggingFace `generate()` on an imported GPT-2, cached
//! generation equals recomputing every prefix, sampled frequencies follow the renormalised
//! top-k / top-p distribution, batches equal their rows alone, end-of-sequence handling, and
//! typed errors for bad requests.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lmforge::models::Pretrained;
use lmforge::models::generate::logits::sampling_distribution;
use lmforge::models::generate::{
    BeamConfig, Decoder, EarlyStopping, GenerationConfig, GenerationError, beam_search, generate,
    generate_with_detokenizer, next_token_distribution,
};
use lmforge::models::gpt::{Gpt, GptConfig};
use lmforge::models::lstm_lm::LstmLmConfig;
use lmforge::models::seq2seq::Seq2SeqConfig;
use lmforge_device::testing::{Fixture, reference_device, test_devices};

fn ints(data: TensorData) -> Vec<u32> {
    data.iter::<i64>().map(|v| v as u32).collect()
}

fn gpt2_fixture() -> (Gpt, Fixture) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/gpt2_generate");
    let gpt = Gpt::from_pretrained(&dir, reference_device()).unwrap();
    (gpt, Fixture::load(dir.join("generate.safetensors")))
}

/// Greedy decoding of an imported GPT-2 gives HuggingFace's tokens, plain and with a
/// repetition penalty of 1.3, on every enabled device.
#[test]
fn greedy_tokens_equal_huggingface_generate() {
    let (gpt, fixture) = gpt2_fixture();
    let prompt = ints(fixture.get("input.prompt"));
    for selected in test_devices() {
        let device = &selected.device;
        let gpt = gpt.clone().fork(device);
        for (penalty, key) in [(1.0, "output.greedy"), (1.3, "output.greedy_penalty_1.3")] {
            let config = GenerationConfig::new()
                .with_max_new_tokens(12)
                .with_repetition_penalty(penalty);
            let out = generate(
                &gpt,
                std::slice::from_ref(&prompt),
                &config,
                device,
                |_, _| {},
            )
            .unwrap();
            assert_eq!(out[0], ints(fixture.get(key)), "{selected}: {key}");
        }
    }
}

/// Beam search with 4 beams gives HuggingFace's tokens (on a prompt where it disagrees with
/// greedy decoding), on every enabled device.
#[test]
fn beam_search_equals_huggingface_generate() {
    let (gpt, fixture) = gpt2_fixture();
    let prompt = ints(fixture.get("input.beam_prompt"));
    let expected = ints(fixture.get("output.beam4"));
    for selected in test_devices() {
        let device = &selected.device;
        let gpt = gpt.clone().fork(device);
        let config = GenerationConfig::new()
            .with_max_new_tokens(12)
            .with_eos_token_ids(vec![49]);
        let out = beam_search(&gpt, &prompt, &config, &BeamConfig::new(4), device).unwrap();
        assert_eq!(out, expected, "{selected}");
        let greedy = generate(
            &gpt,
            std::slice::from_ref(&prompt),
            &config,
            device,
            |_, _| {},
        )
        .unwrap();
        assert_ne!(
            greedy[0], expected,
            "{selected}: beam search should differ from greedy here"
        );
    }
}

/// Beam search's stopping rules (HuggingFace `early_stopping` true, false, "never") and
/// length penalties give HuggingFace's tokens where they disagree with one another.
#[test]
fn beam_search_stopping_rules_equal_huggingface() {
    let (gpt, fixture) = gpt2_fixture();
    let device = reference_device();
    let prompt = ints(fixture.get("input.stop_prompt"));
    let config = GenerationConfig::new()
        .with_max_new_tokens(12)
        .with_eos_token_ids(vec![16]);
    let mut distinct = std::collections::HashSet::new();
    for (rule, name) in [
        (EarlyStopping::Finished, "true"),
        (EarlyStopping::Heuristic, "false"),
        (EarlyStopping::Never, "never"),
    ] {
        for penalty in [1.0f32, 2.0] {
            let key = format!("output.beam4_eos16_{name}_lp{penalty}");
            let beam = BeamConfig::new(4)
                .with_length_penalty(penalty)
                .with_early_stopping(rule);
            let out = beam_search(&gpt, &prompt, &config, &beam, device).unwrap();
            assert_eq!(out, ints(fixture.get(&key)), "{key}");
            distinct.insert(out);
        }
    }
    assert!(distinct.len() >= 3, "the cases should disagree");
}

/// `min_new_tokens` holds beam search back from ending (here it would end at once with id 16)
/// and gives HuggingFace's tokens.
#[test]
fn beam_search_min_new_tokens_equals_huggingface() {
    let (gpt, fixture) = gpt2_fixture();
    let device = reference_device();
    let prompt = ints(fixture.get("input.stop_prompt"));
    let beam = BeamConfig::new(4)
        .with_length_penalty(1.0)
        .with_early_stopping(EarlyStopping::Finished);
    let base = GenerationConfig::new()
        .with_max_new_tokens(12)
        .with_eos_token_ids(vec![16]);
    let unconstrained = beam_search(&gpt, &prompt, &base, &beam, device).unwrap();
    assert_eq!(
        unconstrained,
        [16],
        "without the rule the search ends at once"
    );
    for min_new_tokens in [3usize, 6] {
        let config = base.clone().with_min_new_tokens(min_new_tokens);
        let out = beam_search(&gpt, &prompt, &config, &beam, device).unwrap();
        let key = format!("output.beam4_eos16_true_lp1_min{min_new_tokens}");
        assert_eq!(out, ints(fixture.get(&key)), "{key}");
        assert!(out.len() > min_new_tokens, "{key}: ends too early: {out:?}");
    }
}

/// Generating with the KV cache gives the same tokens as recomputing the whole prefix and
/// taking the argmax of its last position at every step.
#[test]
fn cached_greedy_generation_equals_full_recompute() {
    let device = reference_device();
    device.seed(11);
    let gpt = GptConfig::tiny(31).with_init_std(0.2).init(device).unwrap();
    let prompt = vec![3u32, 1, 4, 1, 5];
    let config = GenerationConfig::new().with_max_new_tokens(20);
    let cached = generate(
        &gpt,
        std::slice::from_ref(&prompt),
        &config,
        device,
        |_, _| {},
    )
    .unwrap();
    let mut sequence = prompt;
    for _ in 0..20 {
        let ids: Vec<i64> = sequence.iter().map(|&t| t as i64).collect();
        let n = ids.len();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device);
        let logits = gpt.forward(tokens, None).slice([0..1, n - 1..n]);
        sequence.push(ints(logits.argmax(2).into_data())[0]);
    }
    assert_eq!(cached[0], sequence[5..]);
    assert!(
        cached[0]
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1,
        "a constant sequence would make this test weak"
    );
}

/// The first sampled token over many seeds: every draw lies in the kept set, and the
/// frequencies match the renormalised distribution (Pearson chi-square below the 0.999
/// quantile for the degrees of freedom).
/// The distribution a sampled token is drawn from equals HuggingFace's logits processors
/// (repetition penalty, minimum new tokens, temperature, top-k, top-p, in `generate()`'s order)
/// followed by a softmax, on fixed logits (tests/fixtures/gen_sampling.py), within 1e-6 per
/// probability; the largest difference measured is printed.
#[test]
fn sampling_distribution_equals_huggingface_logits_processors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/sampling");
    let fixture = Fixture::load(dir.join("processors.safetensors"));
    let mut cases = 0;
    let mut worst = 0.0f32;
    while fixture.try_get(&format!("case{cases}.logits")).is_some() {
        let key = |name: &str| format!("case{cases}.{name}");
        let logits: Vec<f32> = fixture.get(&key("logits")).iter::<f32>().collect();
        let history = ints(fixture.get(&key("history")));
        let config: Vec<f64> = fixture.get(&key("config")).iter::<f64>().collect();
        let want: Vec<f32> = fixture.get(&key("probs")).iter::<f32>().collect();
        let [
            temperature,
            top_k,
            top_p,
            penalty,
            min_new,
            prompt_length,
            eos,
        ] = config[..]
        else {
            panic!("case {cases}: config has {} values", config.len());
        };
        let config = GenerationConfig::new()
            .with_do_sample(true)
            .with_temperature(temperature)
            .with_top_k((top_k > 0.0).then_some(top_k as usize))
            .with_top_p((top_p < 1.0).then_some(top_p))
            .with_repetition_penalty(penalty)
            .with_min_new_tokens(min_new as usize)
            .with_max_new_tokens(8)
            .with_eos_token_ids(vec![eos as u32]);
        let step = history.len() - prompt_length as usize;
        let got = next_token_distribution(&logits, &history, step, &config);
        assert_eq!(got.len(), want.len(), "case {cases}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = (g - w).abs();
            worst = worst.max(d);
            assert!(d <= 1e-6, "case {cases}, token {i}: {g} vs HuggingFace {w}");
            // Tokens HuggingFace excludes are excluded exactly.
            assert_eq!(*w == 0.0, *g == 0.0, "case {cases}, token {i}: {g} vs {w}");
        }
        cases += 1;
    }
    assert_eq!(cases, 11, "every fixture case ran");
    println!("{cases} cases, largest difference {worst:e}");
}

#[test]
fn sampled_frequencies_follow_top_k_and_top_p() {
    let device = reference_device();
    device.seed(12);
    let gpt = GptConfig::tiny(12).init(device).unwrap();
    let prompt = vec![1u32, 2, 3];
    let (logits, _) = gpt.prefill(Tensor::from_data(
        TensorData::new(vec![1i64, 2, 3], [1, 3]),
        device,
    ));
    let logits: Vec<f32> = logits.into_data().iter::<f32>().collect();
    let draws = 4000;
    for (top_k, top_p) in [(Some(4), None), (None, Some(0.7)), (Some(6), Some(0.9))] {
        let expected = sampling_distribution(&logits, 0.8, top_k, top_p);
        let kept = expected.iter().filter(|p| **p > 0.0).count();
        assert!((2..12).contains(&kept), "kept {kept}: a weak case");
        let mut counts = [0usize; 12];
        for seed in 0..draws {
            let config = GenerationConfig::new()
                .with_max_new_tokens(1)
                .with_do_sample(true)
                .with_temperature(0.8)
                .with_top_k(top_k)
                .with_top_p(top_p.map(f64::from))
                .with_seed(seed);
            let out = generate(
                &gpt,
                std::slice::from_ref(&prompt),
                &config,
                device,
                |_, _| {},
            )
            .unwrap();
            counts[out[0][0] as usize] += 1;
        }
        let mut chi2 = 0.0;
        for (count, p) in counts.iter().zip(&expected) {
            if *p == 0.0 {
                assert_eq!(*count, 0, "a token outside the kept set was drawn");
            } else {
                let e = f64::from(*p) * draws as f64;
                chi2 += (*count as f64 - e).powi(2) / e;
            }
        }
        // 0.999 quantiles of chi-square with 1..=10 degrees of freedom.
        let quantile = [
            10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59,
        ];
        assert!(
            chi2 < quantile[kept - 2],
            "top_k {top_k:?} top_p {top_p:?}: chi2 {chi2}"
        );
    }
}

fn batch_equals_rows(model: &impl Decoder, config: &GenerationConfig, device: &Device) {
    let prompts = vec![vec![1u32, 2, 3], vec![7, 7, 2], vec![0, 5, 9]];
    let batched = generate(model, &prompts, config, device, |_, _| {}).unwrap();
    for (r, prompt) in prompts.iter().enumerate() {
        let alone = config.clone().with_seed(config.seed + r as u64);
        let single = generate(
            model,
            std::slice::from_ref(prompt),
            &alone,
            device,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(batched[r], single[0], "row {r}");
    }
}

#[test]
fn batched_generation_equals_each_row_alone() {
    let device = reference_device();
    device.seed(13);
    let gpt = GptConfig::tiny(17).with_init_std(0.2).init(device).unwrap();
    let greedy = GenerationConfig::new().with_max_new_tokens(8);
    batch_equals_rows(&gpt, &greedy, device);
    batch_equals_rows(
        &gpt,
        &greedy
            .clone()
            .with_do_sample(true)
            .with_top_p(Some(0.9))
            .with_seed(5),
        device,
    );
    let lstm = LstmLmConfig::new(17)
        .with_d_embedding(8)
        .with_d_hidden(16)
        .with_init_range(1.0)
        .with_dropout(0.0)
        .init(device)
        .unwrap()
        .valid();
    batch_equals_rows(&lstm, &greedy, device);
}

/// A row stops at its end-of-sequence id while the other goes on; `min_new_tokens`
/// suppresses the id; tokens are streamed in order. (The fixture checkpoint keeps the
/// weights, and so the rows, fixed.)
#[test]
fn end_of_sequence_minimum_length_and_streaming() {
    let device = reference_device();
    let (gpt, _) = gpt2_fixture();
    let prompts = vec![vec![3u32, 14, 15, 9, 26], vec![4, 4, 44, 11, 23]];
    let free_config = GenerationConfig::new().with_max_new_tokens(8);
    let free = generate(&gpt, &prompts, &free_config, device, |_, _| {}).unwrap();
    let first = |row: &[u32], t: u32| row.iter().position(|&x| x == t);
    // An id both rows produce, first at different steps: one row stops before the other.
    let eos = free[0]
        .iter()
        .copied()
        .find(|&t| first(&free[1], t).is_some_and(|p| Some(p) != first(&free[0], t)))
        .expect("the fixture rows share an id at different steps");
    let config = free_config.clone().with_eos_token_ids(vec![eos]);
    let mut streamed = vec![Vec::new(); 2];
    let out = generate(&gpt, &prompts, &config, device, |r, t| streamed[r].push(t)).unwrap();
    for r in 0..2 {
        let stop = first(&free[r], eos).unwrap();
        assert_eq!(out[r], free[r][..=stop], "row {r}");
    }
    assert_ne!(out[0].len(), out[1].len());
    assert_eq!(out, streamed);
    let suppressed = config.with_min_new_tokens(8);
    let out = generate(&gpt, &prompts, &suppressed, device, |_, _| {}).unwrap();
    for row in out {
        assert_eq!(row.len(), 8);
        assert!(
            !row.contains(&eos),
            "{row:?} contains the suppressed id {eos}"
        );
    }
}

#[test]
fn bad_requests_are_typed_errors() {
    let device = reference_device();
    let gpt = GptConfig::tiny(17)
        .with_max_seq_length(10)
        .init(device)
        .unwrap();
    let run = |prompts: &[Vec<u32>], config: GenerationConfig| {
        generate(&gpt, prompts, &config, device, |_, _| {}).unwrap_err()
    };
    let sample = GenerationConfig::new()
        .with_do_sample(true)
        .with_max_new_tokens(2);
    let p = [vec![1u32, 2]];
    for (config, needle) in [
        (sample.clone().with_temperature(0.0), "temperature"),
        (sample.clone().with_top_p(Some(0.0)), "top_p"),
        (sample.clone().with_top_p(Some(1.5)), "top_p"),
        (sample.clone().with_top_k(Some(0)), "top_k"),
        (
            sample.clone().with_repetition_penalty(0.0),
            "repetition_penalty",
        ),
    ] {
        let err = run(&p, config);
        assert!(
            matches!(&err, GenerationError::InvalidConfig(m) if m.contains(needle)),
            "{err}"
        );
    }
    assert_eq!(run(&[vec![]], sample.clone()), GenerationError::EmptyPrompt);
    assert_eq!(run(&[], sample.clone()), GenerationError::EmptyPrompt);
    // A model that cannot left-pad (the trait's default) refuses ragged prompts.
    struct NoPadding<'a>(&'a Gpt);
    impl Decoder for NoPadding<'_> {
        type State = lmforge::models::gpt::GptCache;
        fn vocab_size(&self) -> usize {
            self.0.vocab_size()
        }
        fn max_seq_length(&self) -> Option<usize> {
            Some(self.0.max_seq_length())
        }
        fn prefill(&self, tokens: Tensor<2, Int>) -> (Tensor<2>, Self::State) {
            self.0.prefill(tokens)
        }
        fn step(&self, tokens: Tensor<2, Int>, state: &mut Self::State) -> Tensor<2> {
            self.0.step(tokens, state)
        }
        fn reorder(&self, state: &mut Self::State, rows: &[usize]) {
            self.0.reorder(state, rows)
        }
    }
    assert_eq!(
        generate(
            &NoPadding(&gpt),
            &[vec![1, 2], vec![3]],
            &sample,
            device,
            |_, _| {}
        )
        .unwrap_err(),
        GenerationError::RaggedPrompts(vec![2, 1])
    );
    assert_eq!(
        run(&[vec![1, 17]], sample.clone()),
        GenerationError::TokenOutOfRange {
            token: 17,
            vocab_size: 17
        }
    );
    let err = run(&[vec![1; 8]], sample.with_max_new_tokens(4));
    assert!(
        matches!(
            err,
            GenerationError::PromptTooLong {
                prompt: 8,
                max_new_tokens: 4,
                max_seq_length: 10
            }
        ),
        "{err}"
    );
}

/// Generation from a Seq2Seq with cached self- and cross-attention equals decoding the whole
/// prefix each step; beam search runs with the source repeated for every beam.
#[test]
fn seq2seq_generation_equals_full_decode() {
    let device = reference_device();
    device.seed(15);
    let model = Seq2SeqConfig::tiny(19)
        .with_init_std(0.2)
        .init(device)
        .unwrap();
    let src =
        Tensor::<2, Int>::from_data(TensorData::new(vec![5i64, 6, 7, 8, 9, 10], [1, 6]), device);
    let decoder = model.decoder(src.clone(), None);
    let config = GenerationConfig::new().with_max_new_tokens(10);
    let out = generate(&decoder, &[vec![1]], &config, device, |_, _| {}).unwrap();
    let memory = model.encode(src, None);
    let mut sequence = vec![1u32];
    for _ in 0..10 {
        let ids: Vec<i64> = sequence.iter().map(|&t| t as i64).collect();
        let n = ids.len();
        let logits = model.decode(
            Tensor::from_data(TensorData::new(ids, [1, n]), device),
            None,
            &memory,
        );
        sequence.push(ints(logits.slice([0..1, n - 1..n]).argmax(2).into_data())[0]);
    }
    assert_eq!(out[0], sequence[1..]);
    let beams = beam_search(&decoder, &[1], &config, &BeamConfig::new(3), device).unwrap();
    assert_eq!(beams.len(), 10);
}

/// Prompts of different lengths are left-padded: every row gives exactly what it gives
/// alone, greedy and sampled.
#[test]
fn left_padded_batches_equal_each_row_alone() {
    let device = reference_device();
    let (gpt, _) = gpt2_fixture();
    let prompts = vec![vec![1u32, 2, 3], vec![7, 7, 2, 9, 4], vec![5]];
    for config in [
        GenerationConfig::new().with_max_new_tokens(8),
        GenerationConfig::new()
            .with_max_new_tokens(8)
            .with_do_sample(true)
            .with_seed(3),
    ] {
        let batched = generate(&gpt, &prompts, &config, device, |_, _| {}).unwrap();
        for (r, prompt) in prompts.iter().enumerate() {
            let alone = config.clone().with_seed(config.seed + r as u64);
            let single = generate(
                &gpt,
                std::slice::from_ref(prompt),
                &alone,
                device,
                |_, _| {},
            )
            .unwrap();
            assert_eq!(batched[r], single[0], "row {r}");
        }
    }
    let lstm = LstmLmConfig::new(50)
        .with_d_embedding(8)
        .with_d_hidden(16)
        .with_init_range(1.0)
        .with_dropout(0.0)
        .init(device)
        .unwrap()
        .valid();
    let config = GenerationConfig::new().with_max_new_tokens(8);
    let batched = generate(&lstm, &prompts, &config, device, |_, _| {}).unwrap();
    for (r, prompt) in prompts.iter().enumerate() {
        let single = generate(
            &lstm,
            std::slice::from_ref(prompt),
            &config,
            device,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(batched[r], single[0], "LSTM row {r}");
    }
}

/// Stop strings end a row once its decoded new text contains one, also across a token
/// boundary; without a detokenizer they are a typed error.
#[test]
fn stop_strings_end_rows() {
    let device = reference_device();
    let (gpt, _) = gpt2_fixture();
    let prompt = vec![3u32, 14, 15, 9, 26];
    // A toy detokenizer: id 16 -> "<16>".
    let decode = |ids: &[u32]| ids.iter().map(|i| format!("<{i}>")).collect::<String>();
    let free = generate(
        &gpt,
        std::slice::from_ref(&prompt),
        &GenerationConfig::new().with_max_new_tokens(10),
        device,
        |_, _| {},
    )
    .unwrap();
    // The text of tokens 2 and 3 (spanning a token boundary).
    let stop = decode(&free[0][2..4]);
    let config = GenerationConfig::new()
        .with_max_new_tokens(10)
        .with_stop_strings(vec!["never".into(), stop.clone()]);
    let out = generate_with_detokenizer(
        &gpt,
        std::slice::from_ref(&prompt),
        &config,
        device,
        &decode,
        |_, _| {},
    )
    .unwrap();
    let end = (1..=free[0].len())
        .find(|&n| decode(&free[0][..n]).contains(&stop))
        .unwrap();
    assert_eq!(out[0], free[0][..end]);
    assert!(
        end < free[0].len(),
        "the stop string must end the row early"
    );
    let err = generate(&gpt, &[prompt], &config, device, |_, _| {}).unwrap_err();
    assert!(matches!(err, GenerationError::InvalidConfig(m) if m.contains("detokenizer")));
}
