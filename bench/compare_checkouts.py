"""Is a change slower? The same workloads timed under two genzoo source trees, in turn, on the same machine.

    git worktree add /tmp/genzoo-base <commit>
    python bench/compare_checkouts.py --base /tmp/genzoo-base/src --head src

Each workload runs in a fresh process with the tree first on ``PYTHONPATH`` (base, head, base, head ...) and reports
the seconds of its timed part only (imports and data loading excluded); the result is the ratio head/base per
workload (median over the rounds; < 1 = head faster). Workloads use only the stable public API, so both trees run
them unchanged: training steps of each image family and of a character GPT, and sampling. Machine load is recorded
before and after, as for every benchmark here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

SHAKESPEARE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tinyshakespeare.txt"

#: name -> Python run in the child; it prints the seconds of its timed part on the last line
WORKLOADS = {
    "train vae 400 steps": "train('vae', 'digits', 400)",
    "train dcgan 300 steps": "train('dcgan', 'digits', 300)",
    "train ddpm 60 steps": "train('ddpm', 'digits', 60)",
    "train gpt 150 steps (text)": f"train('gpt', 'text:{SHAKESPEARE}', 150)",
    "sample vae 20000": "sample('vae', 'digits', 20000)",
    "sample ddpm 256 (dpm, 20 steps)": "sample('ddpm', 'digits', 256, sampler='dpm', steps=20)",
}

CHILD = """
import sys, tempfile, time
import torch
torch.set_num_threads({threads})
import genzoo

def train(name, data, steps):
    dataset = genzoo.load_dataset(data)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        genzoo.train(name, dataset, steps=steps, out=folder + '/run', seed=0, progress=False)
        return time.perf_counter() - start

def sample(name, data, n, **options):
    model = genzoo.create(name, data)
    model.sample(8, seed=0, **options)  # warm-up
    start = time.perf_counter()
    model.sample(n, seed=1, **options)
    return time.perf_counter() - start

print(f"{{{workload}:.6f}}")
"""


def run_once(tree: str, workload: str, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": tree}
    code = CHILD.format(threads=threads, workload=workload)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{workload} failed under {tree}:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="src folder of the reference tree (e.g. a git worktree)")
    parser.add_argument("--head", default="src", help="src folder of the tree under test (default: src)")
    parser.add_argument("--rounds", type=int, default=3, help="base/head pairs per workload")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="workload names to run (default: all)")
    args = parser.parse_args()
    rows = {}
    for name, workload in WORKLOADS.items():
        if args.only and name not in args.only:
            continue
        if "tinyshakespeare" in workload and not SHAKESPEARE.exists():
            print(f"skipping '{name}': {SHAKESPEARE} is missing")
            continue
        base, head = [], []
        for _ in range(args.rounds):
            base.append(run_once(str(Path(args.base).resolve()), workload, args.threads))
            head.append(run_once(str(Path(args.head).resolve()), workload, args.threads))
        ratios = [h / b for h, b in zip(head, base, strict=True)]
        rows[name] = {"base_seconds": base, "head_seconds": head, "ratio_median": statistics.median(ratios),
                      "ratio_min": min(ratios), "ratio_max": max(ratios)}
        print(f"{name}: head/base {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    path = write_result("compare_checkouts", {"base": args.base, "head": args.head, "rounds": args.rounds,
                                              "workloads": rows})
    print(json.dumps({k: round(v["ratio_median"], 3) for k, v in rows.items()}), "->", path)


if __name__ == "__main__":
    main()
