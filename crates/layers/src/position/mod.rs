//! Positional encodings: learned absolute positions (GPT-2, BERT), fixed sinusoidal positions
//! (Vaswani et al. 2017) and rotary position embeddings applied to queries and keys (RoPE, Su
//! et al. 2021), either as a precomputed table ([`RotaryEncoding`]) or computed for any
//! positions with the frequency scalings of Llama-family models ([`Rope`]).

mod learned;
mod rope;
mod rotary;
mod sinusoidal;

pub use learned::{LearnedPositions, LearnedPositionsConfig};
pub use rope::{Rope, RopeConfig, RopeScaling};
pub use rotary::{RotaryEncoding, RotaryEncodingConfig, RotaryStyle};
pub use sinusoidal::{SinusoidalPositions, SinusoidalPositionsConfig};

#[cfg(test)]
mod tests;
