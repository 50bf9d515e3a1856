"""Classifier two-sample test (Lopez-Paz & Oquab, 2017) with scikit-learn.

A classifier learns to tell real from generated examples; its held-out accuracy is 0.5 when it cannot (the sets are
indistinguishable to it) and 1.0 when it always can. The sets are first cut to the same size so that 0.5 is chance,
and accuracy and AUROC are averaged over stratified k folds. The classifier is a one-hidden-layer MLP (64 units,
early stopping) on standardised features: non-linear (a linear classifier misses differences in spread, and
k-nearest-neighbours misses scattered outliers because their neighbours are all real points), seeded, and fast
enough to run on every evaluation.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from genzoo.metrics.checks import check_pair, equal_size


def c2st(real: Tensor, fake: Tensor, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Held-out accuracy and AUROC of a real-vs-fake classifier, averaged over ``folds`` folds."""
    # imported here: scikit-learn is slow to import and models import genzoo.metrics for validation
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a, b = equal_size(*check_pair(real, fake, "c2st", min_n=2 * folds), seed)
    m = len(a)
    x = torch.cat([a, b]).numpy()
    y = np.r_[np.ones(m), np.zeros(m)]
    accuracy, auroc = [], []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        mlp = MLPClassifier((64,), max_iter=300, early_stopping=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = make_pipeline(StandardScaler(), mlp).fit(x[train], y[train])
        prob = clf.predict_proba(x[test])[:, 1]
        accuracy.append(np.mean((prob > 0.5) == y[test]))
        auroc.append(roc_auc_score(y[test], prob))
    return {"c2st_accuracy": float(np.mean(accuracy)), "c2st_auroc": float(np.mean(auroc))}
