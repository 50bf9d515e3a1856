"""Generate-and-verify on an arithmetic-target task: a `gpt` trained briefly on `grammar:arith` proposes expressions
(constrained by the arith grammar, so every proposal parses), sympy checks whether each equals the target, and
rejection sampling draws until one does. Reports, per target, whether it was solved, the acceptance rate and the
model calls (generated tokens) spent, next to the same search without the grammar constraint.

    python bench/verify_arith.py [--steps 300] [--targets 1 2 ... ] [--tries 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result


def search(model: Any, target: int, tries: int, constrained: bool) -> dict[str, Any]:
    from genzoo.constrain import Grammar
    from genzoo.constrain.verify import arithmetic_equals, rejection_sample

    # the data's strings end at a newline; under a constraint the newline is allowed only once the text is complete
    options = {"stop": ("\n",), **({"constraint": Grammar.builtin("arith")} if constrained else {})}
    start = time.perf_counter()
    report = rejection_sample(model, "", arithmetic_equals(target), tries=tries, seed=0, max_new_tokens=16,
                              temperature=1.0, **options)
    return {"target": target, "solved": report.text is not None, "text": report.text,
            "candidates": report.candidates, "acceptance_rate": report.acceptance_rate,
            "model_calls": report.model_calls, "seconds": round(time.perf_counter() - start, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of the gpt on grammar:arith")
    parser.add_argument("--targets", type=int, nargs="+", default=list(range(1, 13)), help="targets to reach")
    parser.add_argument("--tries", type=int, default=64, help="most proposals per target")
    parser.add_argument("--name", default="verify_arith", help="result file name in bench/results/")
    args = parser.parse_args()
    import genzoo

    with tempfile.TemporaryDirectory(prefix="genzoo-verify-") as tmp:
        run = genzoo.train("gpt", "grammar:arith#context=32", steps=args.steps, out=Path(tmp) / "gpt", seed=0,
                           progress=False)
        model = genzoo.load(run)
    rows = {"constrained": [search(model, t, args.tries, True) for t in args.targets],
            "unconstrained": [search(model, t, args.tries, False) for t in args.targets]}
    summary = {}
    for mode, found in rows.items():
        candidates = sum(r["candidates"] for r in found)
        accepted = sum(1 for r in found if r["solved"])
        summary[mode] = {"solved": accepted, "targets": len(found), "proposals": candidates,
                         "acceptance_rate": accepted / candidates, "model_calls": sum(r["model_calls"] for r in found)}
        print(mode, summary[mode])
    write_result(args.name, {"protocol": {"steps": args.steps, "targets": args.targets, "tries": args.tries,
                                          "data": "grammar:arith#context=32", "temperature": 1.0,
                                          "max_new_tokens": 16},
                             "summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
