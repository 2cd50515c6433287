"""Command lines: thin wrappers over the library (ssl-pretrain, ssl-probe, ssl-cluster)."""
