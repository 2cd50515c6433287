import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
# Under pytest-xdist (`make test` runs `-n auto`) the cores are shared by the workers: each worker's torch, and the
# command lines its tests start (they inherit OMP_NUM_THREADS), gets its share, so the machine is not oversubscribed.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
torch.set_num_threads(min(_THREADS, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
