//! A fixed, ordered set of class labels.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// Class names and their ids (the position in the list).
///
/// ```
/// use lmforge_data::dataset::LabelSet;
///
/// let labels = LabelSet::new(["neg", "pos"]);
/// assert_eq!(labels.id("pos"), Some(1));
/// assert_eq!(labels.name(0), Some("neg"));
/// assert!(labels.require("meh").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<String>", into = "Vec<String>")]
pub struct LabelSet {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl From<Vec<String>> for LabelSet {
    fn from(names: Vec<String>) -> Self {
        Self::new(names)
    }
}

impl From<LabelSet> for Vec<String> {
    fn from(set: LabelSet) -> Self {
        set.names
    }
}

impl LabelSet {
    /// The labels in the given order (repeated names keep their first position).
    pub fn new<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        let mut set = Self {
            names: Vec::new(),
            index: HashMap::new(),
        };
        for name in names {
            set.insert(name.into());
        }
        set
    }

    /// The distinct labels of `names` in sorted order (a deterministic id assignment).
    pub fn sorted<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        let mut all: Vec<String> = names.into_iter().map(Into::into).collect();
        all.sort();
        all.dedup();
        Self::new(all)
    }

    fn insert(&mut self, name: String) {
        if !self.index.contains_key(&name) {
            self.index.insert(name.clone(), self.names.len());
            self.names.push(name);
        }
    }

    /// The id of `name`.
    pub fn id(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The id of `name`, or [`DataError::UnknownLabel`] (without a location).
    ///
    /// # Errors
    /// When `name` is not in the set.
    pub fn require(&self, name: &str) -> Result<usize, DataError> {
        self.id(name).ok_or_else(|| DataError::UnknownLabel {
            label: name.to_string(),
            known: self.names.clone(),
            path: None,
            line: None,
        })
    }

    /// The name of id `id`.
    pub fn name(&self, id: usize) -> Option<&str> {
        self.names.get(id).map(String::as_str)
    }

    /// All names, in id order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there is no label.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}
