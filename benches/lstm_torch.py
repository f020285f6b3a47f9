"""PyTorch side of the LSTM case of `cargo bench --bench layers`: a 2-layer nn.LSTM
(hidden 256, batch 16, sequence 128) forward + backward, printing tokens/s in the same format.

    python benches/lstm_torch.py [--threads 2] [--d-input 128]
"""

import argparse
import statistics
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--d-input", type=int, default=128)
parser.add_argument("--hidden", type=int, default=256)
parser.add_argument("--batch", type=int, default=16)
parser.add_argument("--seq", type=int, default=128)
parser.add_argument("--repeats", type=int, default=10)
args = parser.parse_args()

torch.set_num_threads(args.threads)
torch.manual_seed(0)
lstm = torch.nn.LSTM(args.d_input, args.hidden, 2, batch_first=True)
x = torch.randn(args.batch, args.seq, args.d_input, requires_grad=True)


def step():
    y, (h, c) = lstm(x)
    (y.square().mean() + h.sum() + c.sum()).backward()


for _ in range(2):
    step()
times = []
for _ in range(args.repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
median = statistics.median(times)
tokens = args.batch * args.seq
print(
    f"pytorch {torch.__version__} nn.LSTM fwd+bwd: median {median * 1e3:.1f} ms, "
    f"best {min(times) * 1e3:.1f} ms, {tokens / median:.0f} tokens/s "
    f"(threads {args.threads})"
)
