//! The Llama family (Llama, Mistral, Qwen2) loaded from HuggingFace folders gives
//! HuggingFace's numbers: every hidden state and the logits within 1e-4 on every enabled
//! device, greedy and beam-search tokens equal to `generate()`, cached decoding equal to
//! recomputation, export -> import identical, and typed errors for folders lmforge cannot
//! read. Fixtures from `tests/fixtures/gen_llama.py`: tiny checkpoints with every parameter
//! redrawn, GQA with llama3 rotary scaling, a sliding window shorter than the sequences,
//! Qwen2 biases with tied embeddings in three shards, and a bf16 file.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use lmforge::models::generate::{BeamConfig, GenerationConfig, beam_search, generate};
use lmforge::models::llama::{Llama, LlamaCache, LlamaConfig, LlamaFamily};
use lmforge::models::{ModelError, Pretrained};
use lmforge_device::testing::{
    Fixture, Outputs, Tolerance, assert_parity, reference_device, test_devices, to_test_device,
};

const CASES: [&str; 4] = ["llama_gqa", "mistral_window", "qwen2_tied", "llama_bf16"];

fn folder(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/models/{case}"))
}

fn fixture(case: &str) -> Fixture {
    Fixture::load(folder(case).join("reference.safetensors"))
}

fn load(case: &str) -> Llama {
    Llama::from_pretrained(folder(case), reference_device())
        .unwrap_or_else(|e| panic!("{case}: {e}"))
}

fn tokens(fixture: &Fixture, name: &str, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(fixture.get(&format!("input.{name}")), device)
}

fn ints(data: TensorData) -> Vec<u32> {
    data.iter::<i64>().map(|v| v as u32).collect()
}

/// Hidden states and logits of the fixture's (padded) batch.
fn run(model: &Llama, fixture: &Fixture, device: &Device) -> Outputs {
    let tokens = tokens(fixture, "tokens", device);
    let mask: Tensor<2, Bool> = self::tokens(fixture, "attention_mask", device).equal_elem(0);
    let mut outputs = Outputs::new();
    for (i, state) in model
        .hidden_states(tokens.clone(), Some(mask.clone()))
        .into_iter()
        .enumerate()
    {
        outputs = outputs.float(format!("output.hidden.{i}"), state);
    }
    outputs.float("output.logits", model.forward(tokens, Some(mask)))
}

/// Every hidden state and the logits of each case within 1e-4 of HuggingFace's, on every
/// enabled device.
#[test]
fn llama_family_matches_huggingface() {
    let tolerance = Tolerance::absolute(1e-4);
    for case in CASES {
        let fixture = fixture(case);
        let model = load(case);
        let outputs = assert_parity(tolerance, |device| {
            run(&to_test_device(&model, device), &fixture, device)
        });
        fixture.assert_close(&outputs, "output.", tolerance);
    }
}

/// The configs come out as HuggingFace describes them: families, grouped-query heads,
/// explicit head width, biases, window, tying, rotary scaling.
#[test]
fn configs_are_read_as_written() {
    let gqa = load("llama_gqa");
    let config = gqa.config();
    assert_eq!(config.family, LlamaFamily::Llama);
    assert_eq!(
        (config.n_heads, config.n_kv_heads(), config.d_head()),
        (4, 2, 8)
    );
    assert!(config.rope_scaling.is_some() && !config.tie_embeddings);
    assert_eq!(gqa.blocks[0].self_attention.n_kv_heads(), 2);
    let mistral = load("mistral_window");
    assert_eq!(mistral.config().family, LlamaFamily::Mistral);
    assert_eq!(mistral.config().sliding_window, Some(4));
    assert_eq!(mistral.config().n_kv_heads(), 1);
    let qwen = load("qwen2_tied");
    let config = qwen.config();
    assert_eq!(config.family, LlamaFamily::Qwen2);
    assert!(config.tie_embeddings && qwen.lm_head.is_none());
    assert!(config.qkv_bias && !config.output_bias);
    assert_eq!(config.d_head(), 12);
}

/// Greedy decoding (20 tokens) and 4-beam search (12 tokens) give HuggingFace's tokens on
/// every enabled device, for every case (the Mistral case decodes past its window).
#[test]
fn generation_equals_huggingface_generate() {
    for case in CASES {
        let fixture = fixture(case);
        let model = load(case);
        let prompt = ints(fixture.get("input.prompt"));
        for selected in test_devices() {
            let device = &selected.device;
            let model = model.clone().fork(device);
            // HuggingFace suppressed the end-of-sequence id (2) until the last token.
            let greedy = GenerationConfig::new()
                .with_max_new_tokens(20)
                .with_min_new_tokens(20)
                .with_eos_token_ids(vec![2]);
            let out = generate(
                &model,
                std::slice::from_ref(&prompt),
                &greedy,
                device,
                |_, _| {},
            )
            .unwrap();
            assert_eq!(
                out[0],
                ints(fixture.get("generate.greedy")),
                "{case} on {selected}: greedy"
            );
            let beam = GenerationConfig::new()
                .with_max_new_tokens(12)
                .with_min_new_tokens(12)
                .with_eos_token_ids(vec![2]);
            let out = beam_search(&model, &prompt, &beam, &BeamConfig::new(4), device).unwrap();
            assert_eq!(
                out,
                ints(fixture.get("generate.beam4")),
                "{case} on {selected}: beam search"
            );
        }
    }
}

/// Parameters kept in half precision. The bf16 file loaded with its own dtype keeps bf16
/// parameters (half the bytes of f32) and, since bf16 values widen exactly and the
/// activations are f32, gives HuggingFace's f32 numbers for that file: every hidden state and
/// the logits within 1e-4, greedy tokens equal to `generate()`, on every device that stores
/// bf16 (flex through lmforge's kernel, without autodiff); a device that does not is a typed
/// error. An f32 file loaded as f16 equals the f32 model with its weights rounded to f16
/// (burn's cast and product) within 1e-4.
#[test]
fn half_precision_parameters_keep_their_dtype() {
    use burn::tensor::DType;
    use lmforge::models::pretrained::ParamDtype;

    let fixture = fixture("llama_bf16");
    let prompt = ints(fixture.get("input.prompt"));
    let tolerance = Tolerance::absolute(1e-4);
    let mut ran = 0;
    for selected in test_devices() {
        let device = &selected.device;
        eprintln!(
            "{selected}: stores f16 {}, bf16 {}",
            device.supports_dtype(DType::F16),
            device.supports_dtype(DType::BF16)
        );
        let loaded = Llama::from_pretrained_as(folder("llama_bf16"), device, ParamDtype::File);
        if !device.supports_dtype(DType::BF16) {
            assert!(
                matches!(loaded, Err(ModelError::DtypeNotSupported { .. })),
                "{selected}: expected DtypeNotSupported, got {:?}",
                loaded.map(|m| m.param_dtype())
            );
            continue;
        }
        let model = loaded.unwrap_or_else(|e| panic!("{selected}: {e}"));
        assert_eq!(model.param_dtype(), DType::BF16, "{selected}");
        let f32_model = load("llama_bf16");
        assert_eq!(
            model.num_params(),
            f32_model.num_params(),
            "{selected}: same parameters"
        );
        fixture.assert_close(&run(&model, &fixture, device), "output.", tolerance);
        let greedy = GenerationConfig::new()
            .with_max_new_tokens(20)
            .with_min_new_tokens(20)
            .with_eos_token_ids(vec![2]);
        let out = generate(
            &model,
            std::slice::from_ref(&prompt),
            &greedy,
            device,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(out[0], ints(fixture.get("generate.greedy")), "{selected}");
        ran += 1;
    }
    assert!(ran > 0, "no test device stores bf16");

    // f16 parameters from an f32 file, against f32 parameters rounded the same way, on every
    // device that stores f16.
    let fixture = self::fixture("llama_gqa");
    let exact = load("llama_gqa");
    let rounded = exact
        .clone()
        .with_param_dtype(DType::F16)
        .and_then(|m| m.with_param_dtype(DType::F32))
        .unwrap();
    assert_eq!(rounded.param_dtype(), DType::F32);
    let mut ran = 0;
    for selected in test_devices() {
        let device = &selected.device;
        let loaded = Llama::from_pretrained_as(folder("llama_gqa"), device, ParamDtype::F16);
        if !device.supports_dtype(DType::F16) {
            assert!(
                matches!(loaded, Err(ModelError::DtypeNotSupported { .. })),
                "{selected}: f16 should be refused"
            );
            continue;
        }
        let half = loaded.unwrap_or_else(|e| panic!("{selected}: {e}"));
        assert_eq!(half.param_dtype(), DType::F16);
        let want = run(&rounded.clone().fork(device), &fixture, device);
        let got = run(&half, &fixture, device);
        let problems = got.mismatches(&want, tolerance, "f16 parameters", "rounded f32");
        assert!(problems.is_empty(), "{selected}: {problems:#?}");
        // Rounding to f16 changed the function (the comparison above is not vacuous).
        let exact = run(&exact.clone().fork(device), &fixture, device);
        assert!(
            !exact
                .mismatches(&want, tolerance, "f32", "rounded f32")
                .is_empty(),
            "{selected}: f16 rounding left the outputs within the tolerance"
        );
        ran += 1;
    }
    assert!(ran > 0, "no test device stores f16");
}

/// Decoding one position at a time through the cache (the cache holding the key/value heads
/// only) gives the logits of one forward pass over the whole sequence; also past the
/// sliding window, and for a left-padded batch against each row alone.
#[test]
fn cached_decoding_equals_full_recompute() {
    let tolerance = Tolerance::absolute(2e-5);
    for case in ["llama_gqa", "mistral_window"] {
        let model = load(case);
        assert_parity(tolerance, |device| {
            let model = to_test_device(&model, device);
            let ids: Vec<i64> = (0..12).map(|i| (i * 7 + 3) % 64).collect();
            let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 12]), device);
            let full = model.forward(tokens.clone(), None);
            let mut cache = LlamaCache::default();
            let mut steps =
                vec![model.forward_cached(tokens.clone().narrow(1, 0, 3), None, &mut cache)];
            for t in 3..12 {
                steps.push(model.forward_cached(tokens.clone().narrow(1, t, 1), None, &mut cache));
            }
            let key = cache.blocks[0].self_attention.key().unwrap();
            let config = model.config();
            assert_eq!(
                key.dims(),
                [1, config.n_kv_heads(), 12, config.d_head()],
                "{case}: the cache holds the key/value heads only"
            );
            let cached = Tensor::cat(steps, 1);
            let difference = (cached - full.clone()).abs().max().into_scalar::<f32>();
            assert!(difference < 2e-5, "{case}: cached vs full {difference}");
            Outputs::new().float(format!("{case}.logits"), full)
        });
    }
    let model = load("llama_gqa");
    let device = reference_device();
    let prompts = [vec![5i64, 9, 11, 3, 7], vec![12, 30]];
    let width = 5;
    let mut rows = Vec::new();
    for prompt in &prompts {
        let mut row = vec![0i64; width - prompt.len()];
        row.extend(prompt);
        rows.extend(row);
    }
    let batch = Tensor::<2, Int>::from_data(TensorData::new(rows, [2, width]), device);
    let mut cache = LlamaCache::left_padded(vec![0, 3]);
    let logits = model.forward_cached(batch, None, &mut cache);
    for (r, prompt) in prompts.iter().enumerate() {
        let alone =
            Tensor::<2, Int>::from_data(TensorData::new(prompt.clone(), [1, prompt.len()]), device);
        let expected = model.forward(alone, None).narrow(1, prompt.len() - 1, 1);
        let got = logits.clone().narrow(0, r, 1).narrow(1, width - 1, 1);
        let difference = (got - expected).abs().max().into_scalar::<f32>();
        assert!(
            difference < 2e-5,
            "row {r}: left-padded vs alone {difference}"
        );
    }
}

/// `save_pretrained` writes a folder that loads back to identical logits, and HuggingFace's
/// config fields (family, heads, rotary scaling, window, tying). With `LMFORGE_KEEP_EXPORT`
/// set to a folder, the exports are kept there (`<case>/`) for
/// `tests/fixtures/gen_llama.py --check-export`, which loads them with HuggingFace.
#[test]
fn export_then_import_gives_identical_logits() {
    let device = reference_device();
    let keep = std::env::var_os("LMFORGE_KEEP_EXPORT").map(PathBuf::from);
    for case in ["llama_gqa", "mistral_window", "qwen2_tied"] {
        let model = load(case);
        let dir = match &keep {
            Some(root) => root.join(case),
            None => std::env::temp_dir().join(format!(
                "lmforge-llama-export-{case}-{}",
                std::process::id()
            )),
        };
        model.save_pretrained(&dir).unwrap();
        let again = Llama::from_pretrained(&dir, device).unwrap();
        let tokens = Tensor::<2, Int>::from_ints([[1, 5, 9, 33, 60, 2, 7]], device);
        let a = model.forward(tokens.clone(), None).into_data();
        let b = again.forward(tokens, None).into_data();
        assert_eq!(a, b, "{case}");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let original: serde_json::Value =
            serde_json::from_slice(&std::fs::read(folder(case).join("config.json")).unwrap())
                .unwrap();
        for field in [
            "model_type",
            "num_key_value_heads",
            "head_dim",
            "tie_word_embeddings",
        ] {
            assert_eq!(config[field], original[field], "{case}: {field}");
        }
        if keep.is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

fn copy_folder(case: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lmforge-llama-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(folder(case)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, serde_json::to_vec(&value).unwrap()).unwrap();
}

/// A folder as transformers 4.x writes it (top-level `rope_theta`, a `rope_scaling` object)
/// loads to the same model as the 5.x layout.
#[test]
fn transformers_4_configs_are_read() {
    let dir = copy_folder("llama_gqa", "v4");
    edit_json(&dir.join("config.json"), |config| {
        let parameters = config["rope_parameters"].take();
        let map = config.as_object_mut().unwrap();
        map.remove("rope_parameters");
        map.insert("rope_theta".into(), parameters["rope_theta"].clone());
        let mut scaling = parameters.clone();
        scaling.as_object_mut().unwrap().remove("rope_theta");
        map.insert("rope_scaling".into(), scaling);
    });
    let device = reference_device();
    let v4 = Llama::from_pretrained(&dir, device).unwrap();
    let v5 = load("llama_gqa");
    let tokens = Tensor::<2, Int>::from_ints([[3, 1, 4, 1, 5, 9, 2, 6]], device);
    assert_eq!(
        v4.forward(tokens.clone(), None).into_data(),
        v5.forward(tokens, None).into_data()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What lmforge cannot read is a typed error naming the field, file or tensor.
#[test]
fn unreadable_folders_are_typed_errors() {
    let device = reference_device();
    let expect_field =
        |case: &str, name: &str, edit: &dyn Fn(&mut serde_json::Value), field: &str| {
            let dir = copy_folder(case, name);
            edit_json(&dir.join("config.json"), edit);
            match Llama::from_pretrained(&dir, device) {
                Err(ModelError::ConfigField { field: f, .. }) => assert_eq!(f, field, "{name}"),
                other => panic!("{name}: expected a config error on `{field}`, got {other:?}"),
            }
            std::fs::remove_dir_all(&dir).unwrap();
        };
    expect_field(
        "llama_gqa",
        "yarn",
        &|c| c["rope_parameters"]["rope_type"] = "yarn".into(),
        "rope_parameters.rope_type",
    );
    expect_field(
        "llama_gqa",
        "heads",
        &|c| c["num_key_value_heads"] = 3.into(),
        "num_key_value_heads",
    );
    expect_field(
        "llama_gqa",
        "act",
        &|c| c["hidden_act"] = "gelu".into(),
        "hidden_act",
    );
    expect_field(
        "llama_gqa",
        "gpt2",
        &|c| c["model_type"] = "gpt2".into(),
        "model_type",
    );
    expect_field(
        "qwen2_tied",
        "qwen-window",
        &|c| c["use_sliding_window"] = true.into(),
        "use_sliding_window",
    );

    // A shard the index names is missing: the error names the file.
    let dir = copy_folder("qwen2_tied", "shard");
    std::fs::remove_file(dir.join("model-00002-of-00005.safetensors")).unwrap();
    match Llama::from_pretrained(&dir, device) {
        Err(ModelError::FileMissing { path }) => {
            assert!(
                path.ends_with("model-00002-of-00005.safetensors"),
                "{path:?}"
            )
        }
        other => panic!("expected FileMissing, got {other:?}"),
    }
    // The index assigns a tensor to a shard that does not hold it.
    std::fs::copy(
        folder("qwen2_tied").join("model-00002-of-00005.safetensors"),
        dir.join("model-00002-of-00005.safetensors"),
    )
    .unwrap();
    edit_json(&dir.join("model.safetensors.index.json"), |index| {
        let map = index["weight_map"].as_object_mut().unwrap();
        let name = map.keys().next().unwrap().clone();
        let shard = map[&name].as_str().unwrap().to_string();
        let other = map
            .values()
            .find(|s| s.as_str() != Some(&shard))
            .unwrap()
            .clone();
        map.insert(name, other);
    });
    assert!(
        matches!(
            Llama::from_pretrained(&dir, device),
            Err(ModelError::UnexpectedKeys { .. } | ModelError::MissingKey { .. })
        ),
        "a tensor in the wrong shard must be refused"
    );
    // A shard path that leaves the folder is refused.
    edit_json(&dir.join("model.safetensors.index.json"), |index| {
        let map = index["weight_map"].as_object_mut().unwrap();
        let name = map.keys().next().unwrap().clone();
        map.insert(name, "../elsewhere.safetensors".into());
    });
    assert!(matches!(
        Llama::from_pretrained(&dir, device),
        Err(ModelError::NotSafetensors { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();

    // Grouped-query heads that do not divide the query heads never build.
    let bad = LlamaConfig::tiny(32).with_n_kv_heads(Some(3));
    assert!(matches!(bad.init(device), Err(ModelError::Layer(_))));
}
