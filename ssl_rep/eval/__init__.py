"""Evaluation of frozen features: extraction, linear probe, kNN, clustering, scores, report."""
from .api import cluster_encoder, cluster_features, probe_encoder, probe_features
from .cluster import METHODS as CLUSTER_METHODS
from .cluster import ClusteringTooLargeError, cluster, preprocess
from .embeddings import embed
from .features import extract_features
from .inputs import PixelFeatures, eval_dataset, fixed_subset, image_getter, resolve_encoder
from .knn import KNNClassifier
from .metrics import clustering_scores, hungarian_accuracy, purity
from .probe import LinearProbe

__all__ = ["CLUSTER_METHODS", "ClusteringTooLargeError", "KNNClassifier", "LinearProbe", "PixelFeatures", "cluster", "cluster_encoder",
           "embed", "eval_dataset", "fixed_subset", "image_getter", "cluster_features", "clustering_scores", "extract_features", "hungarian_accuracy", "preprocess",
           "probe_encoder", "probe_features", "purity", "resolve_encoder"]
