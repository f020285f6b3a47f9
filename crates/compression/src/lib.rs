//! Model compression for deployment: quantization, pruning and distillation.
//!
//! - [`quantize`]: post-training weight quantization of every `Linear` and `Embedding`,
//!   int8 per output channel or int4 per block of 32, saved at the reduced size and loaded
//!   back.
//!
//! Every function works on any lmforge model (or any burn module): parameters are found by
//! their path and the type of the module that holds them.

mod error;
mod paths;
pub mod quantize;

pub use error::CompressionError;
pub use paths::Site;
