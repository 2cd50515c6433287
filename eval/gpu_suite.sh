#!/usr/bin/env bash
# One GPU session, prepared to run once on the lent device (see README "GPU checks"): the GPU
# tests, the training-loop overhead benchmark on CUDA, the Fashion-MNIST suite and the probe
# benchmark. Results land in $OUT (at most 8 files). Carried: .whl (faiss-cpu wheel for the
# device's Python) and .gpu_data/fashion-mnist (the four IDX files).
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
FM=${FM:-$PWD/.gpu_data/fashion-mnist}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, faiss, timm, sklearn; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'faiss', faiss.__version__, 'gpus', faiss.get_num_gpus(), 'timm', timm.__version__, 'sklearn', sklearn.__version__)"
} > "$OUT/gpu.txt" 2>&1
echo "== gpu tests"; timeout 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_data.py 2>&1 | tail -5 | tee "$OUT/pytest_gpu.log"
echo "== step overhead"; timeout 100 python3 eval/bench_step_overhead.py --data fashion-mnist --root "$FM" --device ${DEVICE:-cuda} \
  --steps ${STEPS:-60} --warmup ${WARMUP:-10} --json "$OUT/step_overhead.json" --no-results-md 2>&1 | grep -v Warning | tail -6
echo "== fashion-mnist suite"; timeout ${SUITE_TIMEOUT:-300} python3 eval/reproduce.py fashion-mnist-suite --device ${DEVICE:-cuda} --root "$FM" \
  --methods ${METHODS:-simclr,supervised,autoencoder,cpc} --cluster-methods kmeans,gmm,agglomerative \
  --override data.num_workers=8 --override simclr:trainer.epochs=${SIMCLR_EPOCHS:-15} \
  --override autoencoder:trainer.epochs=5 --override supervised:trainer.epochs=5 --override cpc:trainer.epochs=1 \
  ${EXTRA:-} --json "$OUT/fashion_mnist_suite.json" 2>&1 \
  | grep -v "^step\|Warning\|warn" | tail -25
cp runs/fashion-mnist-suite/simclr/metrics.jsonl "$OUT/fm_simclr_metrics.jsonl" 2>/dev/null
echo "== probe benchmark"; timeout 60 python3 eval/bench_probe.py --checkpoint runs/fashion-mnist-suite/simclr/checkpoints/last.pt \
  --data fashion-mnist --root "$FM" --json "$OUT/bench_probe.json" --no-results-md 2>&1 | tail -4
ls -la "$OUT"
