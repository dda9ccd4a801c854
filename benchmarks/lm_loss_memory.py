"""Peak memory and time of the token-level distillation loss against vocabulary size: the chunked loss
(``lm.chunked_loss``, each chunk's gradients taken as it goes) and its checkpointed form (``recompute=True``, each
chunk run again in the backward pass) beside the dense loss that builds every ``[positions, V]`` logit, forward
and backward, each configuration in a fresh process (peak resident memory above the inputs', from ``getrusage``
and ``/proc/self/statm``).

    python benchmarks/lm_loss_memory.py [--vocab 4096 16384 65536] [--positions 4096] [--dim 128]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from common import environment, save  # noqa: E402


MODES = ("dense", "recompute", "chunked")


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(mode: str, vocab: int, positions: int, dim: int, chunk: int) -> dict:
    import torch.nn.functional as F

    from darkknowledge import lm

    torch.manual_seed(0)
    h = torch.randn(positions, dim, requires_grad=True)
    w = torch.randn(vocab, dim, requires_grad=True)
    th, tw = torch.randn(positions, dim), torch.randn(vocab, dim)  # a teacher's hidden states and head
    y = torch.randint(0, vocab, (positions,))
    base = _rss_mib()
    t0 = time.perf_counter()
    if mode == "dense":
        z = h @ w.t()
        loss = lm.dense_soft_loss(z, th @ tw.t(), 2.0) / positions * 4 + F.cross_entropy(z, y)
    else:
        loss = lm.chunked_loss(h, w, lambda z, yc, thc: 4 * lm.dense_soft_loss(z, thc @ tw.t(), 2.0)
                               + F.cross_entropy(z, yc, reduction="sum"), (y, th), chunk=chunk,
                               recompute=mode == "recompute")
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"mode": mode, "vocab": vocab, "positions": positions, "dim": dim, "chunk": chunk,
            "peak_above_inputs_mib": round(peak - base, 1), "seconds": round(seconds, 3), "loss": float(loss)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--positions", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per configuration")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.child:
        mode, v, p, d, c = args.child
        print(json.dumps(child(mode, int(v), int(p), int(d), int(c))))
        return
    rows = []
    for vocab in args.vocab:
        for mode in MODES:
            runs = []
            for _ in range(args.repeats):  # fresh processes, in turn: the median and every run kept
                r = subprocess.run([sys.executable, __file__, "--child", mode, str(vocab), str(args.positions),
                                    str(args.dim), str(args.chunk)], capture_output=True, text=True, check=True)
                runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
            row = {**runs[0], **{key: statistics.median(x[key] for x in runs)
                                 for key in ("peak_above_inputs_mib", "seconds")},
                   "runs": [{key: x[key] for key in ("peak_above_inputs_mib", "seconds")} for x in runs]}
            rows.append(row)
            print(f"{mode:9s} V={vocab:6d}  peak above inputs {row['peak_above_inputs_mib']:8.1f} MiB  "
                  f"{row['seconds']:.2f} s (medians of {len(runs)})  loss {row['loss']:.4f}", flush=True)
    for vocab in args.vocab:
        d, *cs = (next(r for r in rows if r["mode"] == m and r["vocab"] == vocab) for m in MODES)
        for c in cs:
            assert abs(d["loss"] - c["loss"]) < 1e-3 * abs(d["loss"]), (d["loss"], c["loss"])
    result = {"benchmark": "lm_loss_memory", **environment(torch.device("cpu")), "seed": 0,
              "torch_threads": torch.get_num_threads(), "rows": rows,
              "one_chunk_of_logits_mib": {v: round(args.chunk * v * 4 / 2**20, 1) for v in args.vocab}}
    print(f"wrote {save('lm-loss-memory-cpu.json', result, args.out)}")


if __name__ == "__main__":
    main()
