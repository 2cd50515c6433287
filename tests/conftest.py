import os

os.environ.setdefault("TQDM_DISABLE", "1")
# Under pytest-xdist (`make test` runs `-n auto`) the cores are shared by the workers: each worker's thread pools, and
# the command lines its tests start (they inherit the variables), get its share, so the machine is not
# oversubscribed. Set before torch is imported: importing it loads numpy's OpenBLAS, which sizes its pool then.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_name] = str(_THREADS)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(_THREADS, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
