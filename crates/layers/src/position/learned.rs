//! Learned absolute position embeddings.

use burn::config::Config;
use burn::module::Module;
use burn::nn::Initializer;

use crate::{Embedding, EmbeddingConfig};
use burn::tensor::{Device, Int, Tensor};

use crate::error::{LayerError, check};

/// Configuration of [`LearnedPositions`].
#[derive(Config, Debug)]
pub struct LearnedPositionsConfig {
    /// Longest sequence (number of position vectors).
    pub max_seq_length: usize,
    /// Width of each position vector.
    pub d_model: usize,
    /// Standard deviation of the normal initialisation. Default: 0.02 (GPT-2, BERT).
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl LearnedPositionsConfig {
    /// Builds the table.
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] for a zero size.
    pub fn init(&self, device: &Device) -> Result<LearnedPositions, LayerError> {
        let layer = "LearnedPositionsConfig";
        check(self.max_seq_length > 0, layer, || {
            "max_seq_length must be > 0".into()
        })?;
        check(self.d_model > 0, layer, || "d_model must be > 0".into())?;
        Ok(LearnedPositions {
            embedding: EmbeddingConfig::new(self.max_seq_length, self.d_model)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: self.init_std,
                })
                .init(device),
        })
    }
}

/// A learned vector per absolute position (GPT-2's `wpe`, BERT's `position_embeddings`),
/// added to token embeddings by the caller.
#[derive(Module, Debug)]
pub struct LearnedPositions {
    /// The table, `[max_seq_length, d_model]`.
    pub embedding: Embedding,
}

impl LearnedPositions {
    /// Longest sequence the table covers.
    pub fn max_seq_length(&self) -> usize {
        self.embedding.weight.dims()[0]
    }

    /// Position vectors for positions `start .. start + seq_length`.
    ///
    /// # Shapes
    /// - returns: `[1, seq_length, d_model]` (broadcasts over the batch)
    ///
    /// # Panics
    /// When `start + seq_length` exceeds `max_seq_length` (models check this first and return
    /// an error).
    pub fn forward(&self, start: usize, seq_length: usize) -> Tensor<3> {
        let end = start + seq_length;
        assert!(
            end <= self.max_seq_length(),
            "LearnedPositions: positions {start}..{end} exceed max_seq_length {}",
            self.max_seq_length()
        );
        let device = self.embedding.weight.device();
        let positions =
            Tensor::<1, Int>::arange(start as i64..end as i64, &device).unsqueeze::<2>();
        self.embedding.forward(positions)
    }
}

crate::pack_layers!(LearnedPositions { embedding });
