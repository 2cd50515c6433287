"""The YAML recipes (one per method and dataset). This folder is the package ``ssl_rep.configs`` in
an installed wheel (pyproject's ``package-dir``), so ``ssl-pretrain NAME`` finds them after any
install; ``ssl_rep.train.config.CONFIG_DIR`` is where they are."""
