"""Evaluation of frozen features: extraction, linear probe, kNN, clustering, scores, report."""
from .cluster import METHODS as CLUSTER_METHODS
from .cluster import ClusteringTooLargeError, cluster, preprocess
from .features import extract_features
from .knn import KNNClassifier
from .metrics import clustering_scores, hungarian_accuracy, purity
from .probe import LinearProbe

__all__ = ["CLUSTER_METHODS", "ClusteringTooLargeError", "KNNClassifier", "LinearProbe", "cluster",
           "clustering_scores", "extract_features", "hungarian_accuracy", "preprocess", "purity"]
