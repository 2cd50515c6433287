"""Evaluation of frozen features: extraction, linear probe, kNN, clustering, scores, report."""
from .api import cluster_encoder, cluster_features, probe_encoder, probe_features
from .cluster import METHODS as CLUSTER_METHODS
from .cluster import ClusteringTooLargeError, cluster, preprocess
from .embeddings import embed
from .features import extract_features
from .knn import KNNClassifier
from .metrics import clustering_scores, hungarian_accuracy, purity
from .probe import LinearProbe

__all__ = ["CLUSTER_METHODS", "ClusteringTooLargeError", "KNNClassifier", "LinearProbe", "cluster", "cluster_encoder",
           "embed", "cluster_features", "clustering_scores", "extract_features", "hungarian_accuracy", "preprocess",
           "probe_encoder", "probe_features", "purity"]
