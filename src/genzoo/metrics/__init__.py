"""Sample-based metrics shared by models (validation) and the evaluation."""

from genzoo.metrics.c2st import c2st
from genzoo.metrics.coverage import class_coverage, modes_hit
from genzoo.metrics.frechet import frechet_distance, kernel_inception_distance, kid_subset_size
from genzoo.metrics.likelihood import dequantize, likelihood_summary, to_discrete
from genzoo.metrics.manifold import prdc
from genzoo.metrics.memorization import Memorization, memorization
from genzoo.metrics.mmd import LOCAL_SCALE, generator_validation, median_bandwidth, mmd2_unbiased

__all__ = ["LOCAL_SCALE", "Memorization", "c2st", "class_coverage", "dequantize", "frechet_distance",
           "generator_validation", "kernel_inception_distance", "kid_subset_size", "likelihood_summary",
           "median_bandwidth", "memorization", "mmd2_unbiased", "modes_hit", "prdc", "to_discrete"]
