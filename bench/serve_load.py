"""Load test of `genzoo serve` on loopback: throughput, p50/p99 latency, 5xx count and server memory at
concurrency 1, 8 and 32, per endpoint; and the throughput gain of dynamic batching on score requests.

The server runs as its own process (`genzoo serve`, request store on, as users run it); the client sends a fixed
number of requests per level from that many threads, so the test is bounded in count and time. Models: a small
`gpt` trained on tiny Shakespeare and a `made` (exact likelihood, so its scores are batched) and a `vae` on digits,
trained here for a few seconds unless --runs names a folder holding runs of those names. ``--cascade`` adds the
completions load sent to a cascade of the ``gpt`` with itself, its threshold calibrated to escalate half of a few
held-out prompts (the cost of a cascade's second attempt and of its bookkeeping).

    python bench/serve_load.py [--requests 64] [--levels 1,8,32] [--runs DIR] [--cascade]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, write_result

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def train_runs(folder: Path) -> None:
    import genzoo

    text = f"text:{SHAKESPEARE}#context=64" if SHAKESPEARE.is_file() else "text:" + str(_fallback_text(folder))
    quiet = {"progress": False, "eval_every": 10_000, "sample_every": 10_000}
    genzoo.train("gpt", text, steps=200, out=folder / "gpt", seed=0, **quiet)
    genzoo.train("made", "digits", steps=200, out=folder / "made", seed=0, **quiet)
    genzoo.train("vae", "digits", steps=200, out=folder / "vae", seed=0, **quiet)


def _fallback_text(folder: Path) -> Path:
    path = folder / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog.\n" * 2000)
    return path


class Server:
    """`genzoo serve` in a subprocess on a free loopback port."""

    def __init__(self, runs: Path, config: dict[str, Any], folder: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config_file = folder / f"serve-{self.port}.yaml"
        config_file.write_text(json.dumps(config))  # JSON is YAML
        command = [sys.executable, "-m", "genzoo", "serve", str(runs), "--port", str(self.port), "--eager",
                   "--config", str(config_file), "--store", f"sqlite:///{folder / f'requests-{self.port}.db'}"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read()[-2000:]}")
        raise RuntimeError("the server did not start within 180 s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def cascade_config(folder: Path) -> dict[str, Any]:
    """A cascade of the gpt with itself, calibrated to escalate half of a few held-out prompts."""
    prompts = folder / "calibration-prompts.txt"
    prompts.write_text("ROMEO:\nJULIET:\nFirst Citizen:\nKING RICHARD III:\nHAMLET:\nMENENIUS:\n")
    return {"name": "cascade", "calibration_prompts": str(prompts), "calibration_options": {"max_new_tokens": 32},
            "steps": [{"model": "gpt", "signal": "mean_logprob", "target_escalation": 0.5}, {"model": "gpt"}]}


def run_level(url: str, path: str, body: dict[str, Any], concurrency: int, requests: int) -> dict[str, Any]:
    """``requests`` POSTs from ``concurrency`` threads: throughput, latency percentiles, status counts."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=concurrency))

    def one(i: int) -> None:
        start = time.perf_counter()
        seeded = {} if path == "/v1/score" else {"seed": i}  # different answers, so nothing is served from a cache
        status = client.post(url + path, json={**body, **seeded}).status_code
        with lock:
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    client.close()
    ordered = sorted(latencies)
    return {"concurrency": concurrency, "requests": requests, "seconds": round(wall, 3),
            "requests_per_s": round(requests / wall, 2), "p50_s": round(statistics.median(ordered), 4),
            "p99_s": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 4),
            "status": statuses, "errors_5xx": sum(v for k, v in statuses.items() if k >= 500)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per endpoint and concurrency level")
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels")
    parser.add_argument("--runs", type=Path, default=None, help="folder with runs named gpt, made and vae")
    parser.add_argument("--name", default="serve_load", help="result file name in bench/results/")
    parser.add_argument("--cascade", action="store_true", help="also load a cascade (gpt, then gpt again)")
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="genzoo-serve-bench-") as tmp:
        folder = Path(tmp)
        runs = args.runs or folder / "runs"
        if args.runs is None:
            train_runs(runs)
        import genzoo

        digits = genzoo.load_dataset("digits").examples("test").x[:8].tolist()
        work = {"completions": ("/v1/completions", {"model": "gpt", "prompt": "ROMEO:", "max_tokens": 32}),
                "images": ("/v1/images/generations", {"model": "vae", "n": 4}),
                "score": ("/v1/score", {"model": "made", "input": digits})}
        results: dict[str, Any] = {"levels": {}, "batching": {}}
        serve_config: dict[str, Any] = {}
        if args.cascade:
            work["cascade"] = ("/v1/completions", {**work["completions"][1], "model": "cascade"})
            serve_config = {"cascades": [cascade_config(folder)]}
        server = Server(runs, serve_config, folder)
        try:
            for name, (path, body) in work.items():
                results["levels"][name] = [run_level(server.url, path, body, c, args.requests) for c in levels]
                print(name, [(r["concurrency"], r["requests_per_s"], r["p99_s"]) for r in results["levels"][name]])
            results["server_rss_mb"] = round(server.rss_mb(), 1)
        finally:
            server.stop()
        # dynamic batching: the same score load against a server that scores each request alone
        top = max(levels)
        for label, config in (("batched", {}), ("unbatched", {"max_batch": 1})):
            server = Server(runs, config, folder)
            try:
                results["batching"][label] = run_level(server.url, *work["score"], top, args.requests * 2)
            finally:
                server.stop()
        gain = results["batching"]["batched"]["requests_per_s"] / results["batching"]["unbatched"]["requests_per_s"]
        results["batching"]["throughput_gain"] = round(gain, 2)
        print("batching gain at concurrency", top, results["batching"]["throughput_gain"])
    write_result(args.name, {"protocol": {"requests_per_level": args.requests, "levels": levels,
                                          "work": {k: v[1] | {"path": v[0]} for k, v in work.items()}},
                             "machine": machine_info(), **results})


if __name__ == "__main__":
    main()
