//! `lmforge-bench`: runs lmforge's standard throughput cases and prints one JSON line each.
//!
//! ```sh
//! cargo run --release -p lmforge-bench -- --case all
//! RAYON_NUM_THREADS=2 cargo run --release -p lmforge-bench -- --case gpt-train --seq 256
//! python benches/compare.py          # both lmforge and PyTorch, interleaved, with ratios
//! ```

use anyhow::Result;
use clap::Parser;
use lmforge_bench::{CASES, Options, cpu_peak_gflops, run, threads};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells mimalloc to keep freed memory committed instead of purging it after a delay: a
/// training step frees and reallocates the same activations and gradients, and each purged
/// block came back as freshly faulted, kernel-zeroed huge pages on the next step (BERT case:
/// 17 000 page faults in 12 steps before, 500 after). A `MIMALLOC_PURGE_DELAY` set in the
/// environment is left as it is.
fn keep_freed_memory() {
    // mimalloc 3's `mi_option_purge_delay` (its position in `mi_option_e`, mimalloc.h; the
    // default is 1000 ms); -1 turns purging off.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain version and option accessors of the linked mimalloc.
    unsafe {
        let major = libmimalloc_sys::mi_version() / 10_000;
        if major == 3 && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}

/// Standard throughput cases (see the crate docs), one JSON line per case.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A case name or `all`: gpt-train, lstm-train, bert-mlm-train, gpt-generate,
    /// minilm-forward, matmul.
    #[arg(long, default_value = "all")]
    case: String,
    /// Backend: flex, ndarray, wgpu, ... (default: LMFORGE_DEVICE or the build's default).
    #[arg(long)]
    device: Option<String>,
    /// Timed repetitions per case (the median is reported).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Untimed repetitions before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Overrides the sequence length (for sweeps).
    #[arg(long)]
    seq: Option<usize>,
    /// Overrides the model width (for sweeps).
    #[arg(long)]
    width: Option<usize>,
    /// Tiny sizes: checks that every case runs, in seconds.
    #[arg(long)]
    tiny: bool,
}

fn main() -> Result<()> {
    keep_freed_memory();
    let args = Args::parse();
    let selected = lmforge::device::select_named(args.device.as_deref())?;
    let options = Options {
        repeats: args.repeats,
        warmup: args.warmup,
        seq_length: args.seq,
        width: args.width,
        tiny: args.tiny,
    };
    let cases: Vec<&str> = if args.case == "all" {
        CASES.to_vec()
    } else {
        vec![args.case.as_str()]
    };
    for case in cases {
        for mut m in run(case, &selected.device, &options)? {
            m.device = selected.to_string();
            let mut line = serde_json::to_value(&m)?;
            if m.gflops.is_some() {
                line["cpu_peak_gflops"] = serde_json::json!(cpu_peak_gflops(threads()));
            }
            println!("{line}");
        }
    }
    Ok(())
}
