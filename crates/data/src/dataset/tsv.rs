//! Text classification examples from TSV files.

use std::path::{Path, PathBuf};

use super::LabelSet;
use super::stream::LineReader;
use crate::error::DataError;

/// A column, by 0-based position or by header name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Column {
    /// The column at this 0-based position.
    Index(usize),
    /// The column with this header name (needs `has_header`).
    Name(String),
}

/// Where the text and the label of a classification example are in a TSV file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsvConfig {
    /// The text column. Default: index 1.
    pub text_column: Column,
    /// The label column. Default: index 0.
    pub label_column: Column,
    /// Whether the first line is a header (skipped, and used to resolve [`Column::Name`]).
    /// Default: false.
    pub has_header: bool,
    /// The field separator. Default: tab.
    pub delimiter: char,
}

impl Default for TsvConfig {
    fn default() -> Self {
        Self {
            text_column: Column::Index(1),
            label_column: Column::Index(0),
            has_header: false,
            delimiter: '\t',
        }
    }
}

/// A text with its class id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextExample {
    /// The text.
    pub text: String,
    /// The class id in the dataset's [`LabelSet`].
    pub label: usize,
}

/// Examples and the label set their ids refer to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsvDataset {
    /// The examples, in file order.
    pub examples: Vec<TextExample>,
    /// The labels.
    pub labels: LabelSet,
}

impl TsvConfig {
    /// Reads a TSV file (streamed line by line). Blank lines are skipped.
    ///
    /// With `labels`, every label must be in it (so train, valid and test share ids); without,
    /// the label set is the sorted distinct labels of the file.
    ///
    /// # Errors
    /// [`DataError::Io`]; [`DataError::MalformedLine`] (with the line number) for a line
    /// with too few fields or a header without a named column; [`DataError::UnknownLabel`]
    /// (with the line number); [`DataError::EmptyCorpus`] when there is no example;
    /// [`DataError::InvalidConfig`] for a named column without a header.
    pub fn read(
        &self,
        path: impl AsRef<Path>,
        labels: Option<&LabelSet>,
    ) -> Result<TsvDataset, DataError> {
        let path = path.as_ref();
        let lines = LineReader::open(path)?;
        self.parse_lines(path.to_path_buf(), lines, labels)
    }

    /// Like [`TsvConfig::read`] for text in memory (errors name the path `<memory>`).
    ///
    /// ```
    /// use lmforge_data::dataset::tsv::{Column, TsvConfig};
    ///
    /// let text = "sentence\tlabel\ngreat film\tpos\ndull\tneg\n";
    /// let config = TsvConfig {
    ///     text_column: Column::Name("sentence".into()),
    ///     label_column: Column::Name("label".into()),
    ///     has_header: true,
    ///     ..Default::default()
    /// };
    /// let data = config.parse(text, None)?;
    /// assert_eq!(data.labels.names(), ["neg", "pos"]);
    /// assert_eq!(data.examples[0].label, 1);
    /// # Ok::<(), lmforge_data::DataError>(())
    /// ```
    ///
    /// # Errors
    /// As [`TsvConfig::read`].
    pub fn parse(&self, text: &str, labels: Option<&LabelSet>) -> Result<TsvDataset, DataError> {
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| Ok((i + 1, l.to_string())));
        self.parse_lines(PathBuf::from("<memory>"), lines, labels)
    }

    fn parse_lines(
        &self,
        path: PathBuf,
        lines: impl Iterator<Item = Result<(usize, String), DataError>>,
        labels: Option<&LabelSet>,
    ) -> Result<TsvDataset, DataError> {
        let mut columns: Option<(usize, usize)> = None;
        if !self.has_header {
            columns = Some((
                self.index(&self.text_column)?,
                self.index(&self.label_column)?,
            ));
        }
        let mut raw: Vec<(usize, String, String)> = Vec::new();
        for line in lines {
            let (number, line) = line?;
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(self.delimiter).collect();
            let Some((text_at, label_at)) = columns else {
                let find = |c: &Column| match c {
                    Column::Index(i) => Ok(*i),
                    Column::Name(name) => {
                        fields.iter().position(|f| f.trim() == name).ok_or_else(|| {
                            DataError::malformed(
                                &path,
                                number,
                                format!("header has no column `{name}`"),
                            )
                        })
                    }
                };
                columns = Some((find(&self.text_column)?, find(&self.label_column)?));
                continue;
            };
            let needed = text_at.max(label_at) + 1;
            if fields.len() < needed {
                return Err(DataError::malformed(
                    &path,
                    number,
                    format!("expected at least {needed} fields, found {}", fields.len()),
                ));
            }
            raw.push((
                number,
                fields[text_at].to_string(),
                fields[label_at].trim().to_string(),
            ));
        }
        if raw.is_empty() {
            return Err(DataError::EmptyCorpus {
                what: format!("{} has no example", path.display()),
            });
        }
        let labels = match labels {
            Some(l) => l.clone(),
            None => LabelSet::sorted(raw.iter().map(|(_, _, l)| l.clone())),
        };
        let examples = raw
            .into_iter()
            .map(|(number, text, label)| {
                let id = labels.id(&label).ok_or_else(|| DataError::UnknownLabel {
                    label,
                    known: labels.names().to_vec(),
                    path: Some(path.clone()),
                    line: Some(number),
                })?;
                Ok(TextExample { text, label: id })
            })
            .collect::<Result<_, DataError>>()?;
        Ok(TsvDataset { examples, labels })
    }

    fn index(&self, column: &Column) -> Result<usize, DataError> {
        match column {
            Column::Index(i) => Ok(*i),
            Column::Name(name) => Err(DataError::InvalidConfig {
                what: "TsvConfig",
                reason: format!("column `{name}` is named but has_header is false"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_and_unknown_labels_name_the_line() {
        let config = TsvConfig::default();
        let err = config.parse("pos\tgood\n\nneg\n", None).unwrap_err();
        assert!(
            matches!(err, DataError::MalformedLine { line: 3, .. }),
            "{err}"
        );
        let labels = LabelSet::new(["neg", "pos"]);
        let err = config
            .parse("pos\tgood\nmeh\tso so\n", Some(&labels))
            .unwrap_err();
        assert!(
            matches!(&err, DataError::UnknownLabel { label, line: Some(2), .. } if label == "meh"),
            "{err}"
        );
        assert!(err.to_string().ends_with("<memory>:2"), "{err}");
        assert!(matches!(
            config.parse("\n\n", None),
            Err(DataError::EmptyCorpus { .. })
        ));
        let named = TsvConfig {
            text_column: Column::Name("text".into()),
            ..Default::default()
        };
        assert!(matches!(
            named.parse("a\tb", None),
            Err(DataError::InvalidConfig { .. })
        ));
        let header = TsvConfig {
            has_header: true,
            ..named
        };
        assert!(matches!(
            header.parse("label\tsentence\npos\tx\n", None),
            Err(DataError::MalformedLine { line: 1, .. })
        ));
    }

    #[test]
    fn reads_files_with_given_labels_and_columns() {
        let dir = std::env::temp_dir().join(format!("lmforge-tsv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data.tsv");
        std::fs::write(&path, "id,text,label\n1,fine,b\n2,bad,a\n").unwrap();
        let config = TsvConfig {
            text_column: Column::Index(1),
            label_column: Column::Index(2),
            has_header: true,
            delimiter: ',',
        };
        let labels = LabelSet::new(["b", "a"]);
        let data = config.read(&path, Some(&labels)).unwrap();
        assert_eq!(
            data.examples,
            [
                TextExample {
                    text: "fine".into(),
                    label: 0
                },
                TextExample {
                    text: "bad".into(),
                    label: 1
                }
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            config.read(&path, None),
            Err(DataError::Io { .. })
        ));
    }
}
