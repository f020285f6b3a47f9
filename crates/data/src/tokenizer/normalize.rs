//! Optional text normalization: Unicode NFKC, accent stripping, lowercasing.

use serde::{Deserialize, Serialize};
use tokenizers::normalizers::{Lowercase, NFC, NFD, NFKC, Sequence, StripAccents};
use tokenizers::{NormalizedString, Normalizer, NormalizerWrapper};

/// Which normalizations to apply before tokenizing, in this order: NFKC, accent stripping,
/// lowercasing. The default applies none.
///
/// Accent stripping decomposes (NFD), drops combining marks and recomposes (NFC), so `é`
/// becomes `e` while other characters keep their composed form.
///
/// ```
/// use lmforge_data::tokenizer::Normalization;
///
/// let n = Normalization { nfkc: true, strip_accents: true, lowercase: true };
/// assert_eq!(n.apply("Ｃafé Ｎaïve"), "cafe naive"); // full-width letters too (NFKC)
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Normalization {
    /// Unicode compatibility composition (full-width forms, ligatures, ...).
    #[serde(default)]
    pub nfkc: bool,
    /// Remove accents and other combining marks.
    #[serde(default)]
    pub strip_accents: bool,
    /// Lowercase.
    #[serde(default)]
    pub lowercase: bool,
}

impl Normalization {
    /// No normalization.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether nothing is applied.
    pub fn is_identity(&self) -> bool {
        !(self.nfkc || self.strip_accents || self.lowercase)
    }

    /// The equivalent HuggingFace normalizer, `None` when nothing is applied.
    pub fn to_hf(&self) -> Option<NormalizerWrapper> {
        let mut steps: Vec<NormalizerWrapper> = Vec::new();
        if self.nfkc {
            steps.push(NFKC.into());
        }
        if self.strip_accents {
            steps.push(NFD.into());
            steps.push(StripAccents.into());
            steps.push(NFC.into());
        }
        if self.lowercase {
            steps.push(Lowercase.into());
        }
        (!steps.is_empty()).then(|| Sequence::new(steps).into())
    }

    /// Normalizes `text`.
    pub fn apply(&self, text: &str) -> String {
        match self.to_hf() {
            None => text.to_string(),
            Some(normalizer) => {
                let mut normalized = NormalizedString::from(text);
                // These normalizers only map characters; they cannot fail.
                normalizer
                    .normalize(&mut normalized)
                    .expect("character normalizers do not fail");
                normalized.get().to_string()
            }
        }
    }
}
