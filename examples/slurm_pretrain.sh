#!/usr/bin/env bash
# Multi-node pretraining with SLURM + torchrun: one torchrun per node, 8 GPUs each, rendezvous on
# the first node. Submit with: sbatch --nodes=4 examples/slurm_pretrain.sh simclr_imagenet out_dir=runs/simclr_in
#SBATCH --job-name=ssl_rep
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
#SBATCH --requeue
set -euo pipefail
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RESUME=""
# A requeued job (preemption, node failure) continues from the last checkpoint.
for arg in "$@"; do case $arg in out_dir=*) OUT=${arg#out_dir=};; esac; done
if [ -n "${OUT:-}" ] && [ -f "$OUT/checkpoints/last.pt" ]; then RESUME=--resume; fi
srun torchrun --nnodes "$SLURM_NNODES" --nproc_per_node 8 \
  --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$HEAD:29500" \
  -m ssl_rep.cli.pretrain "$@" $RESUME
