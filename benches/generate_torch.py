"""HuggingFace side of `cargo bench --bench generate`: greedy `generate()` with its KV cache
on a GPT-2 of 4 layers, width 256, 4 heads, vocab 96, context 512; batch 1, prompt 16, 256 new
tokens, printing new tokens/s in the same format.

    python benches/generate_torch.py [--threads 2]
"""

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--new", type=int, default=256)
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()

torch.set_num_threads(args.threads)
torch.manual_seed(0)
config = GPT2Config(vocab_size=96, n_positions=512, n_embd=256, n_layer=4, n_head=4,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                    bos_token_id=0, eos_token_id=0)
model = GPT2LMHeadModel(config).eval()
prompt = torch.tensor([[i * 7 % 96 for i in range(16)]])
kwargs = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False,
              num_beams=1, use_cache=True, pad_token_id=0,
              attention_mask=torch.ones_like(prompt))


def run():
    with torch.inference_mode():
        out = model.generate(prompt, **kwargs)
    assert out.shape[1] == 16 + args.new


for _ in range(2):
    run()
seconds = []
for _ in range(args.repeats):
    start = time.perf_counter()
    run()
    seconds.append(time.perf_counter() - start)
median = statistics.median(seconds)
print(f"HuggingFace greedy generation: median {median * 1e3:.1f} ms, "
      f"best {min(seconds) * 1e3:.1f} ms, {args.new / median:.0f} tokens/s")
