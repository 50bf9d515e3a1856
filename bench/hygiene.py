"""Duplicates and split leaks of the datasets genzoo ships or reads, and what the checks cost.

For each spec: `genzoo.data.hygiene.check` at the kind's default threshold and at the extra ``--near`` values
(exact and near duplicates, leaks per split pair, seconds), and `leak_report` (the cheap check every `genzoo eval`
runs) with its seconds. Loading time is reported apart. Results go to bench/results/hygiene.json.

    python bench/hygiene.py                                    # digits, scenes, task:reverse, toy:moons
    python bench/hygiene.py --specs digits --near 0.9 0.85     # one dataset, two more thresholds
    python bench/hygiene.py --specs mnist:../shared/data text:../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import write_result
from genzoo.data import load_dataset
from genzoo.data.hygiene import check, leak_report

DEFAULT_SPECS = ("digits", "scenes:#caption=none", "task:reverse", "toy:moons")


def measure(spec: str, extra: list[float]) -> dict[str, Any]:
    start = time.perf_counter()
    data = load_dataset(spec)
    out: dict[str, Any] = {"spec": spec, "load_s": round(time.perf_counter() - start, 2), "checks": []}
    for near in [None, *extra]:
        start = time.perf_counter()
        report = check(data, near)
        seconds = time.perf_counter() - start
        row = {"near": report.near, "how": report.how, "sizes": report.sizes, "seconds": round(seconds, 2),
               "examples_per_s": round(sum(report.sizes.values()) / seconds),
               "duplicates": {k: report.duplicates.to_json()[k] for k in ("exact", "near", "total", "fraction")},
               "leaks": {name: {k: f.to_json()[k] for k in ("exact", "near", "total", "fraction")}
                         for name, f in report.leaks.items()}}
        out["checks"].append(row)
        print(f"{spec} near={report.near:g}: {report.duplicates.exact} exact + {report.duplicates.near} near "
              f"duplicates of {report.duplicates.total}; leaks "
              + ", ".join(f"{n} {f.exact}+{f.near}/{f.total}" for n, f in report.leaks.items())
              + f" ({seconds:.1f} s)")
    start = time.perf_counter()
    leak = leak_report(data)
    out["leak_report"] = {**leak.to_json(), "seconds": round(time.perf_counter() - start, 2)}
    print(f"{spec} eval leak check: {leak.exact} exact + {leak.near} near of {leak.total} test examples "
          f"({out['leak_report']['seconds']} s)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS), help="data specs to check")
    parser.add_argument("--near", nargs="*", type=float, default=[], help="thresholds to check besides the default")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results/hygiene.json")
    args = parser.parse_args()
    results = [measure(spec, args.near) for spec in args.specs]
    if not args.no_write:
        print("wrote", write_result("hygiene", {"protocol": {"near_extra": args.near}, "results": results}))


if __name__ == "__main__":
    main()
