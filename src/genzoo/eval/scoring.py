"""``genzoo.score``: one anomaly score per example, and how well it separates in- from out-of-distribution data.

Any model with :attr:`~genzoo.contract.Capability.ANOMALY_SCORE` scores examples (higher = more unusual): the
negative log-likelihood in nats for likelihood models (exact, or the VAE's bound), the energy of an energy-based
model, an RBM's free energy. Likelihood models also get bits/dim per example in the convention of
:mod:`genzoo.metrics.likelihood`, evaluated on the data's grid (no dequantization noise, so the same example always
gets the same number; for a density on discrete data this is an estimate of the bin probability).

Data to score is read onto the model's terms: images of another size are resized to the model's (square models),
and images with other levels (8-bit MNIST for a 17-level digits model) are snapped to the model's levels. With an
out-of-distribution set (``ood``: a data spec, or ``"noise"`` for uniform noise on the model's levels) the AUROC of
the score at telling the two apart is reported (1 = perfect, 0.5 = chance).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from genzoo.contract import Capability, DataKind, GenerativeModel, LogLikelihood
from genzoo.data.base import SPLITS
from genzoo.data.specs import load_dataset
from genzoo.errors import DataError, GenzooError
from genzoo.io import atomic_write_text
from genzoo.metrics import to_discrete
from genzoo.runs import load

Split = Literal["train", "val", "test", "all"]


@dataclass
class ScoreResult:
    """Scores of the examples (``scores``) and, with an out-of-distribution set, of its examples (``ood_scores``)."""

    score_name: str
    scores: Tensor
    bits_per_dim: Tensor | None = None
    ood_scores: Tensor | None = None
    ood_bits_per_dim: Tensor | None = None
    auroc: float | None = None
    notes: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """Counts, mean scores and the AUROC, JSON-able."""
        out: dict[str, Any] = {"score": self.score_name, "n": len(self.scores),
                               "mean_score": float(self.scores.mean())}
        if self.bits_per_dim is not None:
            out["mean_bits_per_dim"] = float(self.bits_per_dim.mean())
        if self.ood_scores is not None:
            out.update({"n_ood": len(self.ood_scores), "mean_score_ood": float(self.ood_scores.mean()),
                        "auroc": self.auroc})
        return {**out, "notes": list(self.notes)}

    def to_csv(self) -> str:
        """One row per example: set (in/ood), index within its set, the score, and bits/dim where there is one."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        with_bpd = self.bits_per_dim is not None
        writer.writerow(["set", "index", self.score_name, *(["bits_per_dim"] if with_bpd else [])])
        parts = [("in", self.scores, self.bits_per_dim), ("ood", self.ood_scores, self.ood_bits_per_dim)]
        for name, scores, bpd in parts:
            if scores is None:
                continue
            for i, value in enumerate(scores.tolist()):
                writer.writerow([name, i, f"{value:.6g}", *([f"{float(bpd[i]):.6g}"] if bpd is not None else [])])
        return buffer.getvalue()


def auroc(inliers: Tensor, outliers: Tensor) -> float:
    """Area under the ROC curve of the score as a detector of outliers (higher score = outlier); ties count 1/2."""
    from sklearn.metrics import roc_auc_score

    labels = torch.cat([torch.zeros(len(inliers)), torch.ones(len(outliers))])
    return float(roc_auc_score(labels.numpy(), torch.cat([inliers, outliers]).double().numpy()))


def score(run_or_model: str | Path | GenerativeModel, data: str | Tensor | None = None, *, split: Split = "all",
          ood: str | Tensor | None = None, out: str | Path | None = None, checkpoint: str = "best",
          seed: int = 0, batch: int = 256) -> ScoreResult:
    """Score every example of ``data`` (a data spec or a tensor in data units; default: the run's own data) with the
    model's anomaly score; with ``ood`` (a data spec, a tensor or ``"noise"``) also the AUROC of in vs out. ``out``
    writes the scores as CSV (atomically)."""
    model = run_or_model if isinstance(run_or_model, GenerativeModel) else load(run_or_model, checkpoint=checkpoint)
    model.require(Capability.ANOMALY_SCORE)
    notes: list[str] = []
    spec = data if data is not None else model.data.spec
    if spec is None or spec == "":
        raise GenzooError(f"'{model.name}' does not record the data it was trained on: name the data to score")
    x = model_examples(model, spec, split, notes)
    scores, bpd = example_scores(model, x, batch)
    result = ScoreResult(model.score_name, scores, bpd)
    if ood is not None:
        x_ood = _noise(model, len(x), seed) if isinstance(ood, str) and ood == "noise" else \
            model_examples(model, ood, split, notes)
        result.ood_scores, result.ood_bits_per_dim = example_scores(model, x_ood, batch)
        result.auroc = auroc(result.scores, result.ood_scores)
    result.notes = tuple(notes)
    if out is not None:
        atomic_write_text(Path(out), result.to_csv())
    return result


def example_scores(model: GenerativeModel, x: Tensor, batch: int = 256) -> tuple[Tensor, Tensor | None]:
    """The anomaly score per example; likelihood models (whose score is the NLL) also give bits/dim."""
    with torch.no_grad():
        if model.score_name != GenerativeModel.score_name:
            return torch.cat([model.score(x[i : i + batch]).cpu() for i in range(0, len(x), batch)]).float(), None
        parts = [model.log_likelihood(x[i : i + batch].to(model.device)) for i in range(0, len(x), batch)]
    ll = LogLikelihood(torch.cat([p.values.detach().cpu() for p in parts]).float(), parts[0].kind,
                       parts[0].discrete, parts[0].method)
    levels = model.data.levels if model.data.kind is DataKind.IMAGE else None
    dims = model.data.dims
    return -ll.values, to_discrete(ll, dims, levels, dequantized=False).bits_per_dim(dims)


def model_examples(model: GenerativeModel, data: str | Tensor, split: Split = "all",
                   notes: list[str] | None = None) -> Tensor:
    """Examples of ``data`` in the model's terms (shape, levels); a clear error when they cannot be. What was
    changed to get there is added to ``notes``."""
    notes = [] if notes is None else notes
    if isinstance(data, Tensor):
        x = data.float()
    else:
        dataset = load_dataset(data, image_size=_square_side(model))
        names = SPLITS if split == "all" else (split,)
        x = dataset.examples(*names).x
        levels = dataset.info.levels
        if model.data.kind is DataKind.IMAGE and model.data.levels and levels != model.data.levels:
            notes.append(f"{data}: images with {levels or 'continuous'} levels snapped to the model's "
                         f"{model.data.levels} levels")
    if model.data.kind is DataKind.TOKENS:
        raise GenzooError("anomaly scores are for images and vectors; score text with genzoo eval (perplexity)")
    if tuple(x.shape[1:]) != tuple(model.data.shape):
        raise DataError(f"'{data if isinstance(data, str) else 'tensor'}' has examples of shape "
                        f"{tuple(x.shape[1:])} but model '{model.name}' models shape {tuple(model.data.shape)}")
    if not torch.isfinite(x).all():
        raise DataError("the examples to score contain NaN or Inf values")
    return _on_levels(model, x)


def _square_side(model: GenerativeModel) -> int | None:
    """The side images are resized to for a model of square images (None for other models)."""
    if model.data.kind is not DataKind.IMAGE or model.data.shape[1] != model.data.shape[2]:
        return None
    return model.data.shape[1]


def _on_levels(model: GenerativeModel, x: Tensor) -> Tensor:
    levels = model.data.levels if model.data.kind is DataKind.IMAGE else None
    if not levels:
        return x
    return (x.clamp(0, 1) * (levels - 1)).round() / (levels - 1)


def _noise(model: GenerativeModel, n: int, seed: int) -> Tensor:
    """``n`` examples of uniform noise in the model's terms: pixels uniform on [0, 1] (on the model's levels);
    vectors uniform on the box mean +- 3 std of the training data."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(n, *model.data.shape, generator=generator)
    if model.data.kind is DataKind.IMAGE:
        return _on_levels(model, u)
    if model.data.mean is None or model.data.std is None:
        raise GenzooError(f"model '{model.name}' does not record its data's scale; give an ood data spec")
    mean, std = torch.tensor(model.data.mean), torch.tensor(model.data.std)
    return mean + (2 * u - 1) * 3 * std


def format_auroc(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"
