"""Evaluation: one protocol for every family (see docs/evaluation.md).

``evaluate(run_or_model)`` samples and scores a model against real data with the reference row;
``compare_sets(real, fake)`` scores two sets of examples with no model involved; ``score(run, data, ood=...)``
gives per-example anomaly scores and the AUROC of in- vs out-of-distribution data.
"""

from genzoo.eval.features import FeatureSpace, feature_space
from genzoo.eval.protocol import PROTOCOL, Protocol, compare_sets, score_features
from genzoo.eval.report import check_comparable, table
from genzoo.eval.runner import evaluate
from genzoo.eval.scoring import ScoreResult, auroc, score
from genzoo.io import cache_dir

__all__ = ["PROTOCOL", "FeatureSpace", "Protocol", "ScoreResult", "auroc", "cache_dir", "check_comparable",
           "compare_sets", "evaluate", "feature_space", "score", "score_features", "table"]
