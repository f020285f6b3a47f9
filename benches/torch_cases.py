"""PyTorch / HuggingFace twins of `lmforge-bench`'s cases (crates/bench), printing the same
JSON lines so that `benches/compare.py` can put them side by side.

    python benches/torch_cases.py --case all [--threads 2] [--seq 256] [--width 384]

Needs torch and transformers. Every case uses the sizes of its lmforge twin, dropout 0, and
is timed the same way: `--warmup` untimed calls, then the median and minimum of `--repeats`.
A training step builds its batch from Python lists (lmforge builds its batch on the host
too), runs the loss, backward and an AdamW update.
"""

import argparse
import json
import random
import statistics
import time

import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, GPT2Config, GPT2LMHeadModel

CASES = ["gpt-train", "lstm-train", "bert-mlm-train", "gpt-generate", "llama-generate",
         "llama-generate-bf16", "llama-generate-int8", "gpt-generate-f32", "gpt-generate-int8",
         "minilm-forward", "matmul", "matmul-train"]


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def resident_mib():
    """Resident memory now, MiB, after returning freed heap memory to the system (glibc)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def timed(args, fn):
    for _ in range(args.warmup):
        fn()
    seconds = []
    for _ in range(max(args.repeats, 1)):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    return seconds[0], seconds[len(seconds) // 2]


def measurement(args, case, timing, tokens, config):
    low, median = timing
    return {
        "implementation": "pytorch",
        "case": case,
        "device": f"cpu (torch {torch.__version__})",
        "threads": torch.get_num_threads(),
        "tokens_per_s": tokens / median if tokens else None,
        "gflops": None,
        "step_ms_min": low * 1e3,
        "step_ms_median": median * 1e3,
        "peak_rss_mib": None,
        "config": config,
    }


def token_rows(rows, length, vocab, seed):
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(rows)]


def gpt_shape(args):
    return {"vocab": 96, "seq": args.seq or 128, "layers": 4, "heads": 4,
            "width": args.width or 256, "batch": 16}


def gpt_model(s, positions):
    config = GPT2Config(vocab_size=s["vocab"], n_positions=positions, n_embd=s["width"],
                        n_layer=s["layers"], n_head=s["heads"], resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def train(args, model, loss_fn):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(args, step)


def gpt_train(args):
    s = gpt_shape(args)
    model = gpt_model(s, s["seq"])
    rows = token_rows(s["batch"], s["seq"], s["vocab"], 1)

    def loss():
        ids = torch.tensor(rows)
        return model(input_ids=ids, labels=ids).loss

    return measurement(args, "gpt-train", train(args, model, loss), s["batch"] * s["seq"], s)


class LstmLm(torch.nn.Module):
    def __init__(self, vocab, embedding, hidden, layers):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, embedding)
        self.lstm = torch.nn.LSTM(embedding, hidden, layers, batch_first=True)
        self.output = torch.nn.Linear(hidden, vocab)

    def forward(self, ids):
        y, _ = self.lstm(self.embedding(ids))
        return self.output(y)


def lstm_train(args):
    s = {"vocab": 96, "embedding": 128, "hidden": args.width or 256, "layers": 2,
         "seq": args.seq or 128, "batch": 16}
    model = LstmLm(s["vocab"], s["embedding"], s["hidden"], s["layers"])
    rows = token_rows(s["batch"], s["seq"], s["vocab"], 2)

    def loss():
        ids = torch.tensor(rows)
        logits = model(ids)[:, :-1]
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, s["vocab"]), ids[:, 1:].reshape(-1))

    return measurement(args, "lstm-train", train(args, model, loss), s["batch"] * s["seq"], s)


def bert_mlm_train(args):
    width = args.width or 256
    s = {"vocab": 1000, "width": width, "layers": 4, "heads": 4, "ffn": 4 * width,
         "seq": args.seq or 128, "batch": 16, "masking": 0.15}
    config = BertConfig(vocab_size=s["vocab"], hidden_size=width, num_hidden_layers=s["layers"],
                        num_attention_heads=s["heads"], intermediate_size=s["ffn"],
                        max_position_embeddings=max(s["seq"], 128), hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = BertForMaskedLM(config)
    # Ids 0-4 are the special tokens: 0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP], 4 [MASK].
    rows = [[2] + [i + 5 for i in r] + [3]
            for r in token_rows(s["batch"], s["seq"] - 2, s["vocab"] - 5, 3)]

    def loss():
        ids = torch.tensor(rows)
        special = ids < 5
        chosen = torch.bernoulli(torch.full(ids.shape, 0.15)).bool() & ~special
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        replace = torch.bernoulli(torch.full(ids.shape, 0.8)).bool() & chosen
        randomize = torch.bernoulli(torch.full(ids.shape, 0.5)).bool() & chosen & ~replace
        inputs = torch.where(replace, torch.full_like(ids, 4), ids)
        inputs = torch.where(randomize, torch.randint(5, s["vocab"], ids.shape), inputs)
        return model(input_ids=inputs, attention_mask=torch.ones_like(ids), labels=labels).loss

    return measurement(args, "bert-mlm-train", train(args, model, loss),
                       s["batch"] * s["seq"], s)


def timed_greedy(args, model, prompt, new):
    """Times HuggingFace generate(): greedy, KV cache, exactly `new` tokens after `prompt`."""
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, num_beams=1,
                  use_cache=True, pad_token_id=0, attention_mask=torch.ones_like(prompt))

    def run():
        with torch.inference_mode():
            out = model.generate(prompt, **kwargs)
        assert out.shape[1] == prompt.shape[1] + new

    return timed(args, run)


def gpt_generate(args):
    s = gpt_shape(args)
    prompt_length, new = 16, 256
    model = gpt_model(s, max(512, prompt_length + new)).eval()
    prompt = torch.tensor(token_rows(1, prompt_length, s["vocab"], 4))
    config = dict(s, batch=1, prompt=prompt_length, new_tokens=new)
    return measurement(args, "gpt-generate", timed_greedy(args, model, prompt, new), new, config)


def llama_generate(args, dtype="f32"):
    """HuggingFace LlamaForCausalLM (sdpa attention) generate() with the same sizes as
    lmforge's case (random weights, a random prompt of the same length), in f32 or with the
    model in bf16 (`model.to(torch.bfloat16)`, as `from_pretrained(dtype=torch.bfloat16)`), or
    with `quantize_dynamic` on every `nn.Linear` (int8 per channel; the embedding stays f32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    s = {"vocab": 32000, "width": 768, "layers": 8, "heads": 12, "kv_heads": 4, "ffn": 2048}
    prompt_length, new = 16, 128
    config = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["width"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                         num_key_value_heads=s["kv_heads"], intermediate_size=s["ffn"],
                         max_position_embeddings=2048, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    case = "llama-generate"
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
        case = "llama-generate-bf16"
    if dtype == "int8":
        import warnings

        warnings.filterwarnings("ignore", category=UserWarning)
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        model = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
        case = "llama-generate-int8"
    prompt = torch.tensor(token_rows(1, prompt_length, s["vocab"], 5))
    config = dict(s, batch=1, prompt=prompt_length, new_tokens=new, dtype=dtype)
    return measurement(args, case, timed_greedy(args, model, prompt, new), new, config)


def linear_gpt2(config):
    """HuggingFace GPT2LMHeadModel with its `Conv1D` layers replaced by the equivalent
    `nn.Linear` (weight transposed), so that `quantize_dynamic` quantizes them."""
    from transformers.pytorch_utils import Conv1D

    model = GPT2LMHeadModel(config).eval()

    def swap(parent):
        for name, child in parent.named_children():
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = torch.nn.Linear(n_in, n_out)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
            else:
                swap(child)

    swap(model)
    return model


def gpt2_generate(args, weights="f32"):
    """GPT-2 small's shape (random weights), batch 1, prompt 16, 128 new tokens; `int8`:
    `torch.ao.quantization.quantize_dynamic` on every `nn.Linear` (int8 weights per output
    channel, as lmforge's; activations quantized per call; embeddings stay f32)."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    s = {"vocab": 50257, "width": 768, "layers": 12, "heads": 12}
    prompt_length, new = 16, 128
    config = GPT2Config(vocab_size=s["vocab"], n_positions=1024, n_embd=s["width"],
                        n_layer=s["layers"], n_head=s["heads"], resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    before = resident_mib()
    model = linear_gpt2(config)
    if weights == "int8":
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        model = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
    after = resident_mib()
    prompt = torch.tensor(token_rows(1, prompt_length, s["vocab"], 6))
    config = dict(s, batch=1, prompt=prompt_length, new_tokens=new, weights=weights)
    m = measurement(args, f"gpt-generate-{weights}", timed_greedy(args, model, prompt, new),
                    new, config)
    m["weights_rss_mib"] = after - before if before is not None and after is not None else None
    return m


def minilm_forward(args):
    width = args.width or 384
    s = {"vocab": 30522, "width": width, "layers": 6, "heads": 12,
         "ffn": 4 * width, "seq": args.seq or 128, "batch": 8}
    config = BertConfig(vocab_size=s["vocab"], hidden_size=width, num_hidden_layers=s["layers"],
                        num_attention_heads=s["heads"], intermediate_size=s["ffn"],
                        max_position_embeddings=max(512, s["seq"]), hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = BertModel(config, add_pooling_layer=False).eval()
    ids = torch.tensor(token_rows(s["batch"], s["seq"], s["vocab"], 5))

    def run():
        with torch.inference_mode():
            model(input_ids=ids)

    return measurement(args, "minilm-forward", timed(args, run), s["batch"] * s["seq"], s)


def matmul(args):
    out = []
    for n in (256, 512, 1024):
        a, b = torch.rand(n, n) * 2 - 1, torch.rand(n, n) * 2 - 1
        inner = max(1, min(64, (1 << 30) // (n ** 3)))

        def run():
            for _ in range(inner):
                torch.mm(a, b)

        low, median = timed(args, run)
        m = measurement(args, f"matmul-{n}", (low / inner, median / inner), 0, {"n": n})
        m["gflops"] = 2 * n ** 3 / (median / inner) / 1e9
        out.append(m)
    return out


# The products of the training cases: (name, m, k, n, a transposed, b transposed), as in
# lmforge-bench's TRAINING_PRODUCTS.
TRAINING_PRODUCTS = [
    ("qkv", 2048, 256, 768, False, False),
    ("ffn-up", 2048, 256, 1024, False, False),
    ("ffn-down", 2048, 1024, 256, False, False),
    ("ffn-up-dx", 2048, 1024, 256, False, True),
    ("ffn-up-dw", 256, 2048, 1024, True, False),
    ("gpt-head", 2048, 256, 96, False, True),
    ("bert-head", 2048, 256, 1000, False, True),
    ("minilm-ffn-up", 1024, 384, 1536, False, False),
]


def matmul_train(args):
    out = []
    layouts = {(False, False): "a b", (True, False): "aT b", (False, True): "a bT",
               (True, True): "aT bT"}
    for name, m, k, n, a_t, b_t in TRAINING_PRODUCTS:
        # A transposed operand is stored transposed and read through a transposed view.
        a = (torch.rand(k, m) * 2 - 1).t() if a_t else torch.rand(m, k) * 2 - 1
        b = (torch.rand(n, k) * 2 - 1).t() if b_t else torch.rand(k, n) * 2 - 1
        c = torch.empty(m, n)
        flop = 2 * m * n * k
        inner = max(1, min(64, (1 << 30) // flop))

        def run():
            for _ in range(inner):
                torch.mm(a, b, out=c)

        low, median = timed(args, run)
        config = {"shape": f"{m}x{k}x{n} {layouts[(a_t, b_t)]}", "m": m, "k": k, "n": n}
        mm = measurement(args, f"matmul-train-{name}", (low / inner, median / inner), 0, config)
        mm["gflops"] = flop / (median / inner) / 1e9
        out.append(mm)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seq", type=int)
    parser.add_argument("--width", type=int)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    functions = {"gpt-train": gpt_train, "lstm-train": lstm_train,
                 "bert-mlm-train": bert_mlm_train, "gpt-generate": gpt_generate,
                 "llama-generate": llama_generate,
                 "llama-generate-bf16": lambda a: llama_generate(a, "bf16"),
                 "llama-generate-int8": lambda a: llama_generate(a, "int8"),
                 "gpt-generate-f32": gpt2_generate,
                 "gpt-generate-int8": lambda a: gpt2_generate(a, "int8"),
                 "minilm-forward": minilm_forward, "matmul": matmul,
                 "matmul-train": matmul_train}
    for case in CASES if args.case == "all" else [args.case]:
        if case not in functions:
            raise SystemExit(f"unknown case `{case}`; the cases are {', '.join(CASES)}")
        reset_peak_rss()
        results = functions[case](args)
        peak = peak_rss_mib()
        for m in results if isinstance(results, list) else [results]:
            m["peak_rss_mib"] = peak
            print(json.dumps(m), flush=True)


if __name__ == "__main__":
    main()
