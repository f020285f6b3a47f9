//! Backend comparison: matmul GFLOP/s and a small forward+backward step on each burn backend
//! compiled into the build. The figures in `docs/backends.md` come from this binary.
//!
//! ```sh
//! cargo bench --bench backends --features ndarray            # flex and ndarray
//! cargo bench --bench backends --features ndarray,wgpu -- flex wgpu
//! ```
//! Arguments name the backends to measure (default: every compiled one).

mod common;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{
    Embedding, EmbeddingConfig, Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::tensor::{Device, Int, Tensor, TensorData};
use lmforge::device::{Backend, select};

const REPEATS: usize = 15;

fn matrix(n: usize, device: &Device) -> Tensor<2> {
    let values: Vec<f32> = (0..n * n)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 97.0)
        .collect();
    Tensor::from_data(TensorData::new(values, [n, n]), device)
}

/// A feed-forward language-model step: embedding, one GELU MLP block with a residual,
/// LayerNorm, vocabulary projection, cross-entropy.
#[derive(Module, Debug)]
struct MlpLm {
    embedding: Embedding,
    up: Linear,
    down: Linear,
    gelu: Gelu,
    norm: LayerNorm,
    head: Linear,
}

const VOCAB: usize = 1000;
const D_MODEL: usize = 256;
const D_FF: usize = 1024;
const BATCH: usize = 16;
const SEQ: usize = 64;

impl MlpLm {
    fn new(device: &Device) -> Self {
        Self {
            embedding: EmbeddingConfig::new(VOCAB, D_MODEL).init(device),
            up: LinearConfig::new(D_MODEL, D_FF).init(device),
            down: LinearConfig::new(D_FF, D_MODEL).init(device),
            gelu: Gelu::new(),
            norm: LayerNormConfig::new(D_MODEL).init(device),
            head: LinearConfig::new(D_MODEL, VOCAB).init(device),
        }
    }

    fn loss(&self, ids: Tensor<2, Int>, targets: Tensor<1, Int>, device: &Device) -> Tensor<1> {
        let x = self.embedding.forward(ids);
        let x = x.clone() + self.down.forward(self.gelu.forward(self.up.forward(x)));
        let logits = self.head.forward(self.norm.forward(x));
        CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits.reshape([BATCH * SEQ, VOCAB]), targets)
    }
}

fn bench(backend: Backend) {
    let selected = match select(backend) {
        Ok(selected) => selected,
        Err(e) => {
            eprintln!("{backend}: {e}");
            return;
        }
    };
    println!("## {selected}");
    let device = selected.device.clone();
    for n in [256, 512, 1024] {
        let (a, b) = (matrix(n, &device), matrix(n, &device));
        let (median, min) = common::time(&device, REPEATS, || {
            let _ = a.clone().matmul(b.clone());
        });
        let flop = 2.0 * (n as f64).powi(3);
        println!(
            "matmul {n:>4}: median {:7.1} GFLOP/s (best {:7.1})",
            flop / median / 1e9,
            flop / min / 1e9
        );
    }

    let device = device.autodiff();
    let model = MlpLm::new(&device);
    let ids: Vec<i64> = (0..BATCH * SEQ).map(|i| (i * 13 % VOCAB) as i64).collect();
    let targets: Vec<i64> = (0..BATCH * SEQ).map(|i| (i * 7 % VOCAB) as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [BATCH, SEQ]), &device);
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [BATCH * SEQ]), &device);
    let (median, min) = common::time(&device, REPEATS, || {
        let grads = model.loss(ids.clone(), targets.clone(), &device).backward();
        // Reading one gradient forces the whole backward pass on lazy backends.
        let _ = model
            .head
            .weight
            .grad(&grads)
            .map(|g| g.sum().into_scalar::<f32>());
    });
    let tokens = (BATCH * SEQ) as f64;
    println!(
        "fwd+bwd MLP LM (vocab {VOCAB}, d {D_MODEL}, ff {D_FF}, {BATCH}x{SEQ} tokens): \
         median {:.2} ms ({:.0} tokens/s), best {:.2} ms",
        median * 1e3,
        tokens / median,
        min * 1e3
    );
}

fn main() {
    let wanted: Vec<Backend> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.parse().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let backends = if wanted.is_empty() {
        Backend::compiled()
    } else {
        wanted
    };
    println!(
        "threads: {} (RAYON_NUM_THREADS={})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    for backend in backends {
        bench(backend);
    }
}
