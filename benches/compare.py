"""Runs lmforge's benchmark cases and their PyTorch twins in turn and prints the ratio per case.

    cargo build --release -p lmforge-bench
    python benches/compare.py [--threads 2] [--rounds 3] [--case gpt-train] [--seq 256]
    python benches/compare.py --sweep          # gpt-train and lstm-train over sequence and width

Every round runs each case once on each side, alternating which side goes first, in a fresh
process (so the peak memory is the case's own); the figure kept per side is the median over
rounds of the per-run median step. The ratio is lmforge / PyTorch throughput: above 1 means
lmforge is faster. The machine's noise hits both sides alike because they alternate.
Needs torch and transformers in the Python running this script.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ["gpt-train", "lstm-train", "bert-mlm-train", "gpt-generate", "llama-generate",
         "llama-generate-bf16", "llama-generate-int8", "llama-generate-int4", "gpt-generate-f32",
         "gpt-generate-int8", "gpt-generate-int4", "minilm-forward", "matmul", "matmul-train"]
# Cases whose PyTorch twin is another case: PyTorch has no packed int4 CPU path in
# torch.ao, so int4 decoding is compared with PyTorch's dynamic int8 model.
TWINS = {"gpt-generate-int4": "gpt-generate-int8", "llama-generate-int4": "llama-generate-int8"}


def run(command, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def rate(m):
    return m["tokens_per_s"] if m["tokens_per_s"] is not None else m["gflops"]


def compare(args, case, seq=None, width=None):
    sizes = []
    if seq:
        sizes += ["--seq", str(seq)]
    if width:
        sizes += ["--width", str(width)]
    common = ["--case", case, "--repeats", str(args.repeats)] + sizes
    sides = {
        "lmforge": [str(args.bench), "--device", args.device] + common,
        "pytorch": [sys.executable, str(ROOT / "benches/torch_cases.py"),
                    "--threads", str(args.threads),
                    "--case", TWINS.get(case, case)] + common[2:],
    }
    results = {"lmforge": [], "pytorch": []}
    for round_ in range(args.rounds):
        order = ["lmforge", "pytorch"] if round_ % 2 == 0 else ["pytorch", "lmforge"]
        for side in order:
            lines = run(sides[side], args.threads)
            results[side].append(lines)
            args.raw.extend(dict(m, kind="run", round=round_, side=side) for m in lines)
    rows = []
    for i, first in enumerate(results["lmforge"][0]):
        ours = [r[i] for r in results["lmforge"]]
        theirs = [r[i] for r in results["pytorch"]]
        ours_rate = statistics.median(rate(m) for m in ours)
        theirs_rate = statistics.median(rate(m) for m in theirs)
        rows.append({
            "case": first["case"],
            "config": first["config"],
            "unit": "tokens/s" if first["tokens_per_s"] is not None else "GFLOP/s",
            "lmforge": ours_rate,
            "pytorch": theirs_rate,
            "ratio": ours_rate / theirs_rate,
            "lmforge_step_ms_min": min(m["step_ms_min"] for m in ours),
            "pytorch_step_ms_min": min(m["step_ms_min"] for m in theirs),
            "lmforge_peak_rss_mib": max(m["peak_rss_mib"] or 0 for m in ours),
            "pytorch_peak_rss_mib": max(m["peak_rss_mib"] or 0 for m in theirs),
            "pytorch_case": theirs[0]["case"],
            "lmforge_weights_rss_mib": median_or_none(m.get("weights_rss_mib") for m in ours),
            "pytorch_weights_rss_mib": median_or_none(m.get("weights_rss_mib") for m in theirs),
            "cpu_peak_gflops": first.get("cpu_peak_gflops"),
            # Other candidates lmforge-bench timed in alternation (matmul-train: the gemm crate).
            "lmforge_gemm_crate": median_or_none(m["config"].get("gemm_crate_gflops")
                                                 for m in ours),
            "lmforge_openblas": median_or_none(m["config"].get("openblas_gflops") for m in ours),
            "threads": args.threads,
        })
    return rows


def cpu_features():
    """The vector extensions lmforge's kernels can use on this CPU, from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    found = [name for flag, name in (("avx512f", "AVX-512F"), ("avx512bw", "AVX-512BW"),
                                     ("avx2", "AVX2"), ("fma", "FMA")) if flag in flags]
    return " + ".join(found) if found else "none of AVX2/FMA/AVX-512"


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def mib(value):
    return "-" if value is None else f"{value:.0f}"


def sizes(row):
    if "shape" in row["config"]:
        return row["config"]["shape"]
    keep = ("seq", "width", "hidden", "n", "weights")
    return ", ".join(f"{k} {v}" for k, v in row["config"].items() if k in keep)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", type=Path, default=ROOT / "target/release/lmforge-bench")
    parser.add_argument("--device", default="flex")
    parser.add_argument("--case", default="all", help="a case, several separated by commas, or all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seq", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--sweep", action="store_true",
                        help="gpt-train and lstm-train at sequence 64/128/256 and width "
                             "128/256/512 instead of the standard cases")
    parser.add_argument("--json", type=Path,
                        help="where to write the raw measurement of every run (kind \"run\") "
                             "and the table's rows (kind \"row\") as JSON lines; the table "
                             "goes beside it (.md). Default: docs/results/compare-<time>.jsonl")
    args = parser.parse_args()
    args.raw = []
    if not args.bench.exists():
        raise SystemExit(f"{args.bench} not found: cargo build --release -p lmforge-bench")

    if args.sweep:
        plan = [(case, seq, None) for case in ("gpt-train", "lstm-train") for seq in (64, 128, 256)]
        plan += [(case, None, w) for case in ("gpt-train", "lstm-train") for w in (128, 256, 512)]
    else:
        cases = CASES if args.case == "all" else args.case.split(",")
        plan = [(case, args.seq, args.width) for case in cases]

    if args.json is None:
        stamp = time.strftime("%Y-%m-%d-%H%M")
        args.json = ROOT / "docs/results" / f"compare-{stamp}.jsonl"
    table = []

    def emit(line=""):
        print(line, flush=True)
        table.append(line)

    emit(f"`python benches/compare.py {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d %H:%M')}, "
         f"{args.threads} threads, CPU features: {cpu_features()}")
    emit()
    emit("| case | sizes | lmforge | PyTorch | ratio | peak MiB (lmforge / PyTorch) "
         "| weights MiB (lmforge / PyTorch) | gemm crate | OpenBLAS |")
    emit("|---|---|---:|---:|---:|---|---|---:|---:|")
    rows = []
    for case, seq, width in plan:
        for row in compare(args, case, seq, width):
            rows.append(row)
            emit(f"| {row['case']} | {sizes(row)} | {row['lmforge']:.0f} | {row['pytorch']:.0f} "
                 f"{row['unit']} | {row['ratio']:.2f} | {row['lmforge_peak_rss_mib']:.0f} / "
                 f"{row['pytorch_peak_rss_mib']:.0f} | {mib(row['lmforge_weights_rss_mib'])} / "
                 f"{mib(row['pytorch_weights_rss_mib'])} | {mib(row['lmforge_gemm_crate'])} "
                 f"| {mib(row['lmforge_openblas'])} |")
    if any(r["cpu_peak_gflops"] for r in rows):
        peak = next(r["cpu_peak_gflops"] for r in rows if r["cpu_peak_gflops"])
        emit()
        emit(f"CPU peak estimate at {args.threads} threads: {peak:.0f} GFLOP/s (nominal clock x "
             "FLOP/cycle of the widest FMA the CPU has)")
    lines = args.raw + [dict(r, kind="row") for r in rows]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    args.json.with_suffix(".md").write_text("\n".join(table) + "\n")
    print(f"\nraw runs: {args.json}; table: {args.json.with_suffix('.md')}")


if __name__ == "__main__":
    main()
