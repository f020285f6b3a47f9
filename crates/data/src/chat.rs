//! Chat templates: the Jinja template a HuggingFace tokenizer folder ships
//! (`tokenizer_config.json`'s `chat_template`, or `chat_template.jinja`), rendered as
//! `transformers`' `apply_chat_template(..., tokenize=False)` renders it.
//!
//! The template sees what HuggingFace passes: `messages` (each with `role` and `content`),
//! `add_generation_prompt`, the folder's special tokens (`bos_token`, `eos_token`, `unk_token`,
//! `pad_token` when set), `tools` and `documents` (none), and the same environment: blocks
//! trimmed (`trim_blocks`, `lstrip_blocks`), loop controls, Python's string and dict methods
//! (`.strip()`, `.startswith()`, `.items()`, ...), a `tojson` filter that writes JSON as
//! Python's `json.dumps` does (`", "` and `": "` separators, non-ASCII kept, `indent`),
//! `raise_exception(message)` and `strftime_now(format)` (UTC).
//!
//! ```
//! use lmforge_data::chat::{ChatMessage, ChatTemplate};
//!
//! let template = ChatTemplate::new(
//!     "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
//!      {% if add_generation_prompt %}<|assistant|>{% endif %}",
//! )?;
//! let text = template.render(&[ChatMessage::new("user", "Hi")], true)?;
//! assert_eq!(text, "<|user|>Hi\n<|assistant|>");
//! # Ok::<(), lmforge_data::DataError>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::error::DataError;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ... (whatever the template expects).
    pub role: String,
    /// The message's text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: BTreeMap<String, String>,
}

/// The name the template is compiled under (appears in error messages).
const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`.
    ///
    /// # Errors
    /// [`DataError::ChatTemplate`] when the template does not parse.
    pub fn new(source: impl Into<String>) -> Result<Self, DataError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.into())
            .map_err(template_error)?;
        Ok(Self {
            env,
            special_tokens: BTreeMap::new(),
        })
    }

    /// Sets a special token the template can name (`bos_token`, `eos_token`, ...).
    pub fn with_special_token(mut self, name: impl Into<String>, token: impl Into<String>) -> Self {
        self.special_tokens.insert(name.into(), token.into());
        self
    }

    /// The template of a HuggingFace tokenizer folder: `chat_template.jinja` when present
    /// (newer `transformers` save it there), else `tokenizer_config.json`'s `chat_template`
    /// (a string, or a list of named templates of which `default` is taken), with the special
    /// tokens `tokenizer_config.json` declares.
    ///
    /// # Errors
    /// [`DataError::Io`] for a missing or unreadable file, [`DataError::ChatTemplate`] when
    /// the folder has no template or it does not parse.
    pub fn from_folder(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read(&config_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                DataError::ChatTemplate(format!("{}: not JSON: {e}", config_path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(source) => {
                return Err(DataError::Io {
                    path: config_path,
                    source,
                });
            }
        };
        let jinja_path = dir.join("chat_template.jinja");
        let source = if jinja_path.exists() {
            std::fs::read_to_string(&jinja_path).map_err(|source| DataError::Io {
                path: jinja_path.clone(),
                source,
            })?
        } else {
            match &config["chat_template"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(named) => named
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        DataError::ChatTemplate(format!(
                            "{}: `chat_template` lists no template named `default`",
                            config_path.display()
                        ))
                    })?,
                _ => {
                    return Err(DataError::ChatTemplate(format!(
                        "{}: no chat template (neither chat_template.jinja nor \
                         tokenizer_config.json's `chat_template`)",
                        dir.display()
                    )));
                }
            }
        };
        let mut template = Self::new(source)?;
        for name in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            // A plain string, or an added-token object with `content`.
            let token = match &config[name] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                _ => None,
            };
            if let Some(token) = token {
                template = template.with_special_token(name, token);
            }
        }
        Ok(template)
    }

    /// Renders `messages`; `add_generation_prompt` appends the template's opening of the
    /// assistant's turn.
    ///
    /// # Errors
    /// [`DataError::ChatTemplate`] with the template's own message when it calls
    /// `raise_exception` (e.g. roles that do not alternate), or any rendering error.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        let mut context: BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        context.insert("messages".into(), Value::from_serialize(messages));
        context.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        context.insert("tools".into(), Value::from(()));
        context.insert("documents".into(), Value::from(()));
        let template = self.env.get_template(NAME).map_err(template_error)?;
        template.render(context).map_err(template_error)
    }
}

fn template_error(e: Error) -> DataError {
    if e.kind() == ErrorKind::InvalidOperation
        && let Some(detail) = e.detail()
        && let Some(message) = detail.strip_prefix(RAISED)
    {
        return DataError::ChatTemplate(message.to_string());
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    DataError::ChatTemplate(message)
}

/// Marks the detail of an error raised by the template itself.
const RAISED: &str = "raise_exception: ";

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

/// `tojson(indent=None, sort_keys=False)` as `json.dumps(x, ensure_ascii=False, ...)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item, key) = match &separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ));
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let style = JsonStyle {
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
        item,
        key,
    };
    let mut out = String::new();
    style.write(&value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// How Python's `json.dumps` lays out a value.
struct JsonStyle {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
    item: String,
    key: String,
}

impl JsonStyle {
    fn write(&self, value: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        use minijinja::value::ValueKind as K;
        match value.kind() {
            K::Undefined | K::None => out.push_str("null"),
            K::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            K::Number => out.push_str(&python_number(value)),
            K::String => self.string(value.as_str().unwrap_or_default(), out),
            K::Seq | K::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container(('[', ']'), items.len(), depth, out, |i, out| {
                    self.write(&items[i], depth + 1, out)
                })?;
            }
            K::Map => {
                let mut entries: Vec<(Value, Value)> = value
                    .try_iter()?
                    .map(|key| {
                        let item = value.get_item(&key).unwrap_or_default();
                        (key, item)
                    })
                    .collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(('{', '}'), entries.len(), depth, out, |i, out| {
                    self.string(&entries[i].0.to_string(), out);
                    out.push_str(&self.key);
                    self.write(&entries[i].1, depth + 1, out)
                })?;
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot write a {other} value"),
                ));
            }
        }
        Ok(())
    }

    fn container(
        &self,
        (open, close): (char, char),
        len: usize,
        depth: usize,
        out: &mut String,
        mut each: impl FnMut(usize, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if len == 0 {
            out.push(close);
            return Ok(());
        }
        let newline = |out: &mut String, level: usize| {
            if let Some(width) = self.indent {
                out.push('\n');
                out.push_str(&" ".repeat(width * level));
            }
        };
        for i in 0..len {
            if i > 0 {
                out.push_str(&self.item);
            }
            newline(out, depth + 1);
            each(i, out)?;
        }
        newline(out, depth);
        out.push(close);
        Ok(())
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A number as Python's `json.dumps` prints it (floats always with a fraction or exponent).
fn python_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let s = format!("{f:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// `strftime_now(format)`: the current UTC time formatted with `%Y %m %d %e %b %B %a %A %H
/// %M %S %j %%` (the directives chat templates use).
fn strftime_now(format: String) -> Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime(&format, secs).map(Value::from)
}

/// Formats `secs` since the Unix epoch (UTC) with the directives of [`strftime_now`].
fn strftime(format: &str, secs: u64) -> Result<String, Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    // 1970-01-01 was a Thursday.
    let weekday = ((days + 3) % 7) as usize;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.unwrap_or(' ')
                    ),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::strftime;

    /// Dates derived by hand: the epoch (a Thursday), a leap day, and the end of a leap year.
    #[test]
    fn strftime_formats_known_instants() {
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %A %b %B %j %e %%", 0).unwrap(),
            "1970-01-01 00:00:00 Thu Thursday Jan January 001  1 %"
        );
        // 2024-02-29 12:34:56 UTC = 19782 days + 45296 s.
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S %a %j", 19_782 * 86_400 + 45_296).unwrap(),
            "29 Feb 2024 12:34:56 Thu 060"
        );
        // 2024-12-31: day 366 of a leap year, a Tuesday.
        assert_eq!(strftime("%j %A", 20_088 * 86_400).unwrap(), "366 Tuesday");
        assert!(strftime("%Q", 0).is_err());
    }
}
