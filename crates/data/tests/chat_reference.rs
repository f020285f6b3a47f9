//! Chat templates and byte-level BPE tokenizers of the Llama 3 / Qwen2 kind against
//! HuggingFace (fixtures written by `tests/fixtures/gen_chat.py` with transformers 5.24.0):
//! every template renders every conversation as `apply_chat_template(tokenize=False)` did,
//! with and without the generation prompt, or fails with the template's own message; the
//! tokenizers give HuggingFace's ids and decode them back to the text exactly.

use std::path::PathBuf;

use lmforge_data::DataError;
use lmforge_data::chat::{ChatMessage, ChatTemplate};
use lmforge_data::tokenizer::{HfTokenizer, Tokenizer};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/chat"
    ))
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

#[test]
fn templates_render_as_huggingface() {
    let fixture = json("templates.json");
    let specials = fixture["special_tokens"].as_object().unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 32, "4 templates x 4 conversations x 2");
    let (mut rendered, mut raised) = (0, 0);
    for case in cases {
        let name = case["template"].as_str().unwrap();
        let mut template = ChatTemplate::new(fixture["templates"][name].as_str().unwrap()).unwrap();
        for (token, value) in specials {
            template = template.with_special_token(token.as_str(), value.as_str().unwrap());
        }
        let conversation = case["conversation"].as_str().unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let got = template.render(&messages(&fixture["conversations"][conversation]), add);
        let label = format!("{name} / {conversation} / add_generation_prompt {add}");
        match (&case["rendered"], &case["error"]) {
            (Value::String(want), _) => {
                assert_eq!(got.unwrap(), *want, "{label}");
                rendered += 1;
            }
            (_, Value::String(message)) => {
                match got {
                    Err(DataError::ChatTemplate(m)) => assert_eq!(m, *message, "{label}"),
                    other => panic!("{label}: expected the template's error, got {other:?}"),
                }
                raised += 1;
            }
            _ => panic!("{label}: fixture has neither output nor error"),
        }
    }
    assert!(
        rendered >= 28 && raised >= 4,
        "{rendered} rendered, {raised} raised"
    );
}

/// The byte-level BPE tokenizers (Llama 3's split pattern and ByteLevel; Qwen2's NFC and
/// single digits) give HuggingFace's ids and decode back to HuggingFace's text, which is the
/// input itself (NFC-normalised for Qwen2); the folder's template, read from
/// `tokenizer_config.json` with its special tokens, renders as HuggingFace did and encodes to
/// the same ids.
#[test]
fn byte_level_bpe_round_trips_and_folder_templates_render() {
    let cases = json("tokenizer_cases.json");
    let conversation = &json("templates.json")["conversations"]["system_and_turns"];
    for name in ["llama3_style", "qwen2_style"] {
        let dir = fixtures().join(name);
        let tokenizer = HfTokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let case = &cases[name];
        for row in case["texts"].as_array().unwrap() {
            let text = row["text"].as_str().unwrap();
            let want: Vec<u32> = row["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let ids = tokenizer.encode(text, false).unwrap().ids;
            assert_eq!(ids, want, "{name}: {text:?}");
            let decoded = tokenizer.decode(&ids, false).unwrap();
            assert_eq!(
                decoded,
                row["decoded"].as_str().unwrap(),
                "{name}: {text:?}"
            );
            if name == "llama3_style" {
                assert_eq!(decoded, text, "{name}: exact round trip");
            }
        }
        let template = ChatTemplate::from_folder(&dir).unwrap();
        let chat = template.render(&messages(conversation), true).unwrap();
        assert_eq!(chat, case["chat"].as_str().unwrap(), "{name}");
        let ids = tokenizer.encode(&chat, false).unwrap().ids;
        let want: Vec<u32> = case["chat_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want, "{name}: the rendered chat's ids");
    }
}

/// A folder without a template, and a template that does not parse, are typed errors.
#[test]
fn missing_or_broken_templates_are_typed_errors() {
    let dir = std::env::temp_dir().join(format!("lmforge-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "</s>"}"#,
    )
    .unwrap();
    assert!(matches!(
        ChatTemplate::from_folder(&dir),
        Err(DataError::ChatTemplate(m)) if m.contains("no chat template")
    ));
    std::fs::write(dir.join("chat_template.jinja"), "{% for m in messages %}").unwrap();
    assert!(matches!(
        ChatTemplate::from_folder(&dir),
        Err(DataError::ChatTemplate(_))
    ));
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{{ eos_token }}{{ messages[0].content }}",
    )
    .unwrap();
    let template = ChatTemplate::from_folder(&dir).unwrap();
    assert_eq!(
        template
            .render(&[ChatMessage::new("user", "x")], false)
            .unwrap(),
        "</s>x"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
