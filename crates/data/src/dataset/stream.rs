//! Readers that stream large files line by line instead of loading them whole.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::tokenizer::Tokenizer;

/// The lines of a text file with their 1-based numbers, read one at a time (memory use is one
/// line), without the line terminator (`\n` or `\r\n`).
///
/// ```no_run
/// use lmforge_data::dataset::stream::LineReader;
///
/// for line in LineReader::open("corpus.txt")? {
///     let (number, text) = line?;
///     println!("{number}: {text}");
/// }
/// # Ok::<(), lmforge_data::DataError>(())
/// ```
#[derive(Debug)]
pub struct LineReader {
    path: PathBuf,
    reader: BufReader<File>,
    line: usize,
}

impl LineReader {
    /// Opens `path`.
    ///
    /// # Errors
    /// [`DataError::Io`] when the file cannot be opened.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        Ok(Self {
            path,
            reader: BufReader::with_capacity(1 << 16, file),
            line: 0,
        })
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for LineReader {
    type Item = Result<(usize, String), DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = String::new();
        match self.reader.read_line(&mut buf) {
            Ok(0) => None,
            Ok(_) => {
                self.line += 1;
                if buf.ends_with('\n') {
                    buf.pop();
                    if buf.ends_with('\r') {
                        buf.pop();
                    }
                }
                Some(Ok((self.line, buf)))
            }
            Err(e) => Some(Err(DataError::io(&self.path, e))),
        }
    }
}

/// What marks the end of a line when a file is tokenized line by line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LineEnd {
    /// Encode each line followed by `\n`, so newlines are tokens (character-level models).
    #[default]
    Newline,
    /// Put this id (e.g. an end-of-text token) after each line.
    Token(u32),
    /// Nothing between lines.
    Nothing,
}

/// Appends the ids of `line` (without special tokens) and its line end to `out`.
pub(crate) fn encode_line(
    tokenizer: &dyn Tokenizer,
    line: &str,
    line_end: LineEnd,
    out: &mut Vec<u32>,
) -> Result<(), DataError> {
    match line_end {
        LineEnd::Newline => out.extend(tokenizer.encode(&format!("{line}\n"), false)?.ids),
        LineEnd::Token(id) => {
            out.extend(tokenizer.encode(line, false)?.ids);
            out.push(id);
        }
        LineEnd::Nothing => out.extend(tokenizer.encode(line, false)?.ids),
    }
    Ok(())
}

/// Contiguous blocks of `block_size` token ids from a file, tokenized line by line as the
/// blocks are consumed (memory use is one line plus one block). Each line is encoded without
/// special tokens and ended as `line_end` says; the final partial block is dropped.
pub struct TokenBlocks<'t> {
    lines: LineReader,
    tokenizer: &'t dyn Tokenizer,
    block_size: usize,
    line_end: LineEnd,
    pending: Vec<u32>,
    done: bool,
}

impl<'t> TokenBlocks<'t> {
    /// Streams `path` through `tokenizer`.
    ///
    /// # Errors
    /// [`DataError::Io`] when the file cannot be opened; [`DataError::InvalidConfig`] for a
    /// zero block size.
    pub fn open(
        path: impl AsRef<Path>,
        tokenizer: &'t dyn Tokenizer,
        block_size: usize,
        line_end: LineEnd,
    ) -> Result<Self, DataError> {
        crate::error::check(block_size > 0, "TokenBlocks", || {
            "block_size must be positive".to_string()
        })?;
        Ok(Self {
            lines: LineReader::open(path)?,
            tokenizer,
            block_size,
            line_end,
            pending: Vec::new(),
            done: false,
        })
    }
}

impl Iterator for TokenBlocks<'_> {
    type Item = Result<Vec<u32>, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done && self.pending.len() < self.block_size {
            match self.lines.next() {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Some(Ok((_, line))) => {
                    if let Err(e) =
                        encode_line(self.tokenizer, &line, self.line_end, &mut self.pending)
                    {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
        }
        if self.pending.len() < self.block_size {
            return None;
        }
        let rest = self.pending.split_off(self.block_size);
        Some(Ok(std::mem::replace(&mut self.pending, rest)))
    }
}
