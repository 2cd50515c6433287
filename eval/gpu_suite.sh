#!/usr/bin/env bash
# One GPU session, prepared to run once on the lent device (see README "GPU checks"): the GPU
# tests, the engine and data-path benchmarks on CUDA, the Fashion-MNIST suite (every run's
# metrics.jsonl kept for the accuracy-vs-time figure) and the probe benchmark. Results land in $OUT.
# Carried: .whl (faiss-cpu wheel for the device's Python; for the "lightly" stage also lightly's and
# lightning_utilities' wheels: `pip download --no-deps -d .whl lightly==1.6.0 lightning-utilities`, all the
# benchmark imports) and .gpu_data/fashion-mnist (the IDX files).
# PARTS picks stages (default all): tests overhead data extract decode kmeans suite probe; "profile" (eval/profile_step.py)
# "aecpc" (CPC v2 and the autoencoder on all of Fashion-MNIST, epochs to fit AECPC_BUDGET=200 s each, their table)
# "methods" (BYOL, MoCo v2/v3, SimSiam, Barlow Twins, VICReg, DINO beside SimCLR, the autoencoder and CPC: one table)
# "n2d" (N2D's own MLP autoencoder, eval/n2d_reference.py, 1,000 epochs on all 70,000 images; its encoder comes back
# for scoring on the CPU machine, which has umap-learn)
# "lightly" (SimCLR's full loop against lightly's on the GPU, eval/bench_vs_lightly.py)
# and "wide" (SimCLR ResNet-18 on Fashion-MNIST, epochs to fit WIDE_BUDGET=280 s, or WIDE_EPOCHS) are opt-in; each takes
# a device call of its own (on an H200, 2026-11-27, e02061d: timing 34 s, 84 epochs in 301 s; the SimCLR and
# random-init rows were evaluated in the 179 s left before the then timeout, budget + 200 s, stopped the raw-pixel row). Stage times on an H200 (2026-11-26, commit f3c15c7): start 13 s, tests 60, overhead 81 (STEPS=80 WARMUP=20
# REPEATS=3), data 27, extract 14, decode 25, suite 207 (SimCLR 15 epochs is 54 s of it), probe 23: 450 s in all, so
# one 10-minute device call holds every stage (profile adds about 60 s). Probe reads the suite's SimCLR checkpoint:
# run them in one call, or set PROBE_CKPT to a carried encoder.pt to run probe alone.
set -u
want() { [[ " ${PARTS:-all} " == *" all "* || " ${PARTS:-all} " == *" $1 "* ]]; }
asked() { [[ " ${PARTS:-} " == *" $1 "* ]]; }   # opt-in stages, not part of "all"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
OUT=${OUT:-eval/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  [ -d /tmp/site/faiss ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
FM=${FM:-$PWD/.gpu_data/fashion-mnist}
T0=$(date +%s); stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, faiss, timm, sklearn; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'faiss', faiss.__version__, 'gpus', faiss.get_num_gpus(), 'timm', timm.__version__, 'sklearn', sklearn.__version__)"
} > "$OUT/gpu.txt" 2>&1
if want tests; then
  stamp "gpu tests"; timeout 240 python3 -m pytest -q -p no:cacheprovider -m "gpu or slow" tests/test_resident.py \
    tests/test_device_decode.py tests/test_train.py::test_torch_compile_trains_like_eager 2>&1 | tail -8 \
    | tee "$OUT/pytest_gpu.log"
fi
if want overhead; then
  stamp "step overhead"; timeout 240 python -m eval.bench_step_overhead --data fashion-mnist --root "$FM" --device cuda \
    --steps ${STEPS:-80} --warmup ${WARMUP:-20} --repeats ${REPEATS:-3} --json "$OUT/step_overhead.json" \
    --no-results-md 2>&1 | grep "^{" | tail -4
fi
if want data; then
  stamp "data path"; timeout 60 python -m eval.bench_data_path --data fashion-mnist --root "$FM" --device cuda --workers 8 \
    --max-batches ${DATA_BATCHES:-120} --json "$OUT/data_path.json" --no-results-md 2>&1 | tail -2
fi
if want extract; then
  stamp "extraction"; timeout 90 python -m eval.bench_extract --data fashion-mnist --root "$FM" --split train \
    --device cuda --workers 8 --repeats 5 --json "$OUT/extract.json" --no-results-md 2>&1 | tail -2
fi
if want decode; then
  stamp "jpeg decoding"; timeout 120 python -m eval.bench_decode --device cuda --workers 8 --n ${DECODE_N:-256} --batch-size 128 \
    --json "$OUT/decode.json" --no-results-md 2>&1 | grep "^{" | tail -2
fi
if want kmeans; then
  # ssl_rep vs scikit-learn on the host; on the GPU through faiss where it sees one (gpu.txt), else torch
  stamp "k-means"; timeout 240 python -m eval.bench_kmeans --rounds 2 --json "$OUT/kmeans.json" --no-results-md 2>&1 | tail -3
fi
if asked lightly; then
  stamp "ssl_rep vs lightly"; timeout 400 python -m eval.bench_vs_lightly --root "$FM" --device cuda --workers 8 \
    --rounds 2 --steps 40 --warmup 10 --json "$OUT/vs_lightly.json" --no-results-md 2>&1 | grep -v "^step" | tail -5
fi
if want suite; then
  stamp "fashion-mnist suite"; timeout ${SUITE_TIMEOUT:-270} python -m eval.reproduce fashion-mnist-suite --device cuda \
    --root "$FM" --methods ${METHODS:-simclr,supervised,autoencoder,cpc} --cluster-methods kmeans,gmm \
    --override data.num_workers=8 --override simclr:trainer.epochs=${SIMCLR_EPOCHS:-15} \
    --override autoencoder:trainer.epochs=5 --override supervised:trainer.epochs=5 --override cpc:trainer.epochs=1 \
    ${EXTRA:-} --json "$OUT/fashion_mnist_suite.json" 2>&1 | grep -v "^step\|Warning\|warn" | tail -12
  for m in simclr supervised autoencoder cpc; do
    cp runs/fashion-mnist-suite/$m/metrics.jsonl "$OUT/fm_${m}_metrics.jsonl" 2>/dev/null
  done
fi
if want probe; then
  # PROBE_CKPT: another encoder, e.g. a carried runs/fashion-mnist-cpu-subset/simclr/encoder.pt (the CPU table's)
  stamp "probe benchmark"; timeout 50 python -m eval.bench_probe \
    --checkpoint ${PROBE_CKPT:-runs/fashion-mnist-suite/simclr/checkpoints/last.pt} \
    --data fashion-mnist --root "$FM" --json "$OUT/bench_probe.json" --no-results-md 2>&1 | tail -3
fi
if asked wide; then
  # opt-in: SimCLR with ResNet-18 (cifar stem) on Fashion-MNIST, the wider encoder for the >= 91% probe goal.
  # Without WIDE_EPOCHS, a timing run of WIDE_TIMING_STEPS steps sets the epochs that fit WIDE_BUDGET seconds of
  # training (eval/epochs_for_budget.py), so the stage ends inside its timeout with a result.
  # WIDE_OVERRIDES: key=value overrides for both the timing run and the training; by default channels_last, as in
  # the measured run (set WIDE_OVERRIDES="" for none)
  WIDE_OVERRIDES=${WIDE_OVERRIDES-trainer.channels_last=true}
  EPOCHS=${WIDE_EPOCHS:-}
  if [ -z "$EPOCHS" ]; then
    stamp "resnet18 timing"; rm -rf /tmp/wide_timing
    timeout 150 python3 -m ssl_rep.cli.pretrain --overwrite simclr_fashion_mnist encoder.name=resnet18 encoder.stem=cifar \
      trainer.device=cuda data.root="$FM" data.num_workers=8 data.eval_split=null out_dir=/tmp/wide_timing \
      trainer.max_steps=${WIDE_TIMING_STEPS:-100} trainer.log_every=5 ${WIDE_OVERRIDES:-} > "$OUT/wide_timing.log" 2>&1
    EPOCHS=$(python -m eval.epochs_for_budget /tmp/wide_timing/metrics.jsonl --budget ${WIDE_BUDGET:-280} \
      --images 60000 --batch-size 256 2>>"$OUT/wide_timing.log" || echo 15)
    tail -1 "$OUT/wide_timing.log"
  fi
  stamp "fashion-mnist resnet18, $EPOCHS epochs"; timeout ${WIDE_TIMEOUT:-$(( ${WIDE_BUDGET:-280} + 260 ))} \
    python -m eval.reproduce fashion-mnist-resnet18 \
    --device cuda --root "$FM" --methods simclr --cluster-methods kmeans,gmm --override data.num_workers=8 \
    --override simclr:trainer.epochs=$EPOCHS $(for o in ${WIDE_OVERRIDES:-}; do echo "--override simclr:$o"; done) \
    ${WIDE_EXTRA:-} --json "$OUT/fashion_mnist_resnet18.json" 2>&1 \
    | grep -v "^step\|Warning\|warn" | tail -6
  cp runs/fashion-mnist-resnet18/simclr/metrics.jsonl "$OUT/fm_r18_simclr_metrics.jsonl" 2>/dev/null
  # the encoder in fp16 (22 MB), in parts under the device tool's 16 MB per file, for studies on the CPU machine
  # (eval/cluster_spaces.py reads it): cat fm_r18_encoder_fp16.pt.part* > encoder.pt
  python3 -c "import torch; o = torch.load('runs/fashion-mnist-resnet18/simclr/encoder.pt', weights_only=True)
o['state_dict'] = {k: v.half() if v.is_floating_point() else v for k, v in o['state_dict'].items()}
torch.save(o, '/tmp/fm_r18_encoder_fp16.pt')" && split -b 15M -d /tmp/fm_r18_encoder_fp16.pt "$OUT/fm_r18_encoder_fp16.pt.part"
fi
if asked aecpc; then
  # opt-in: CPC v2 and the autoencoder at their recipes on all of Fashion-MNIST, each trained for the epochs that
  # fit AECPC_BUDGET seconds (default 200 each; a 60-step timing run sets them), then eval/reproduce.py's
  # fashion-mnist-ae-cpc table (each beside its own untrained encoder, N2D's UMAP + GMM column). A call of its own.
  # AE_CODE_DIM=10 adds the autoencoder with a 10-value code layer (N2D's embedding size). CPC_WIDTH=64 trains CPC's
  # patch encoder at that width instead of the recipe's 32 (on the CPU, each doubling added 3-4 pt of probe at
  # 1,000 steps: RESULTS, "CPC v2: patch-encoder width at equal steps"). CPC_OUT=N sets its patch vectors' size
  # (encoder.out_features; the recipe's is 512, and 1,024 bought 0.2 pt at 1,000 steps on the CPU).
  for m in autoencoder cpc; do
    recipe=$([ $m = cpc ] && echo cpc_fashion_mnist || echo ae_fashion_mnist)
    extra=()
    [ $m = cpc ] && [ -n "${CPC_WIDTH:-}" ] && extra+=(encoder.width=$CPC_WIDTH)
    [ $m = cpc ] && [ -n "${CPC_OUT:-}" ] && extra+=(encoder.out_features=$CPC_OUT)
    batch=$(python3 -c "from ssl_rep.train import load_config; print(load_config('$recipe').data.batch_size)")
    rm -rf /tmp/timing_$m; stamp "$m timing"
    timeout 150 python3 -m ssl_rep.cli.pretrain --overwrite $recipe trainer.device=cuda data.root="$FM" data.num_workers=8 \
      data.eval_split=null out_dir=/tmp/timing_$m trainer.max_steps=60 trainer.log_every=5 "${extra[@]}" \
      > "$OUT/timing_$m.log" 2>&1
    declare "EPOCHS_$m=$(python -m eval.epochs_for_budget /tmp/timing_$m/metrics.jsonl --budget ${AECPC_BUDGET:-200} \
      --images 60000 --batch-size $batch 2>>"$OUT/timing_$m.log" || echo 5)"
  done
  stamp "fashion-mnist ae+cpc: autoencoder $EPOCHS_autoencoder epochs, cpc $EPOCHS_cpc epochs"
  timeout $(( 2 * ${AECPC_BUDGET:-200} + 240 )) python -m eval.reproduce fashion-mnist-ae-cpc --device cuda \
    --root "$FM" --methods autoencoder,cpc --cluster-methods kmeans,gmm --override data.num_workers=8 \
    --override autoencoder:trainer.epochs=$EPOCHS_autoencoder --override cpc:trainer.epochs=$EPOCHS_cpc \
    ${CPC_WIDTH:+--override cpc:encoder.width=$CPC_WIDTH} ${CPC_OUT:+--override cpc:encoder.out_features=$CPC_OUT} \
    --json "$OUT/fashion_mnist_ae_cpc.json" 2>&1 | grep -v "^step\|Warning\|warn" | tail -8
  for m in autoencoder cpc; do cp runs/fashion-mnist-ae-cpc/$m/metrics.jsonl "$OUT/fm_aecpc_${m}_metrics.jsonl"; done
  if [ -n "${AE_CODE_DIM:-}" ]; then
    # N2D's lever: the same autoencoder with a linear code of AE_CODE_DIM values (e.g. 10) that the decoder and the
    # probe read, same epochs; its UMAP + GMM column is the N2D comparison
    stamp "autoencoder with a ${AE_CODE_DIM}-value code"
    timeout $(( ${AECPC_BUDGET:-200} + 240 )) python -m eval.reproduce fashion-mnist-ae-cpc --device cuda \
      --root "$FM" --methods autoencoder --cluster-methods kmeans,gmm --no-baselines --override data.num_workers=8 \
      --override autoencoder:trainer.epochs=$EPOCHS_autoencoder --override autoencoder:method.code_dim=$AE_CODE_DIM \
      --json "$OUT/fashion_mnist_ae_code${AE_CODE_DIM}.json" 2>&1 | grep -v "^step\|Warning\|warn" | tail -4
  fi
fi
if asked n2d; then
  N2D_SEEDS=${N2D_SEEDS:-0}
  # opt-in: N2D's autoencoder as the paper trains it (1,000 epochs, batch 256, Adam, all 70,000 Fashion-MNIST
  # images: --fit all), then the same on the training split alone (the fashion-mnist-ae-cpc table's protocol). No
  # scoring here (the device image may lack umap-learn): each encoder (7 MB) comes back in $OUT, scored on the CPU
  # machine with `python -m eval.n2d_reference --root $FM --fit all --load OUT/n2d_encoder_all_seed0.pt --json ...`
  # (N2D fits its GMM once; add --gmm-starts 10 for the most likely of ten fits, as ssl-cluster --n-init 10).
  # N2D_SEEDS (comma-separated, default 0): the autoencoder's training seeds. On the CPU two training seeds of the
  # same recipe clustered 8.5 pt of ACC apart (eval/RESULTS.md), so e.g. N2D_SEEDS=0,1,2,3 N2D_EPOCHS=250 measures
  # that spread; each run has its own N2D_TIMEOUT.
  for seed in ${N2D_SEEDS//,/ }; do
    for fit in all train; do
      stamp "n2d reference, fit $fit, ${N2D_EPOCHS:-1000} epochs, seed $seed"
      timeout ${N2D_TIMEOUT:-270} python -m eval.n2d_reference --root "$FM" --device cuda --fit $fit --seed $seed \
        --epochs ${N2D_EPOCHS:-1000} --cluster-seeds "" --save "$OUT/n2d_encoder_${fit}_seed$seed.pt" \
        --json "$OUT/n2d_reference_${fit}_seed$seed.json" 2>&1 | grep -v -i warn | tail -3
    done
  done
fi
if asked methods; then
  # opt-in: every method at one budget (eval/reproduce.py's fashion-mnist-methods table, the CPU subset's
  # equal-epochs protocol) on all 60,000 images, for METHODS_EPOCHS epochs each (default 10). A call of its own.
  stamp "fashion-mnist methods: ${METHODS_EPOCHS:-10} epochs each"
  timeout ${METHODS_TIMEOUT:-560} python -m eval.reproduce fashion-mnist-methods --device cuda --root "$FM" \
    --methods simclr,byol,moco,mocov3,simsiam,barlow_twins,vicreg,dino,autoencoder,cpc --cluster-methods kmeans,gmm \
    --override data.subset=60000 --override data.num_workers=8 --override trainer.epochs=${METHODS_EPOCHS:-10} \
    --override data.batch_size=256 --override autoencoder:data.batch_size=256 --override cpc:data.batch_size=64 \
    --json "$OUT/fashion_mnist_methods.json" 2>&1 | grep -v "^step\|Warning\|warn" | tail -12
fi
if asked profile; then
  # where the loop's extra time per step goes (eval/profile_step.py); opt-in: PARTS="... profile"
  for m in ${PROFILE_METHODS:-autoencoder}; do
    stamp "profile $m"; timeout 90 python -m eval.profile_step --method $m --data fashion-mnist --root "$FM" \
      --device cuda --steps 40 --warmup 20 --out "$OUT" 2>&1 | grep "^=="
  done
fi
stamp "done"; ls -la "$OUT"
