"""ssl-pretrain CONFIG [key=value ...] [--resume | --overwrite]"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from ..train import (CheckpointError, ConfigError, DeviceMemoryError, NonFiniteLossError, OutputError,
                     StepMemoryError, load_config, train)
from ..train.config import CONFIG_DIR
from .common import friendly_errors, setup_logging


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="ssl-pretrain", description="Pretrain an encoder with a pretext task.",
        epilog=f"CONFIG is a YAML file or a name in {CONFIG_DIR} (e.g. simclr_digits). Overrides: "
               "key=value, e.g. optim.lr=0.3 trainer.epochs=5 out_dir=runs/x method.temperature=0.2")
    parser.add_argument("config", help="YAML path or config name")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in an out_dir that holds a run, removing that run's checkpoints, "
                             "metrics and encoder (without it, such an out_dir is refused)")
    args = parser.parse_args(argv)
    setup_logging()
    with friendly_errors("ssl-pretrain", ConfigError, CheckpointError, NonFiniteLossError, DeviceMemoryError,
                         StepMemoryError, OutputError, FileNotFoundError):
        cfg = load_config(args.config, args.overrides)
        try:
            result = train(cfg, resume=args.resume, overwrite=args.overwrite)
        except KeyboardInterrupt:   # Ctrl-C: say where the run can go on from, without a traceback
            last = Path(cfg.out_dir) / "checkpoints" / "last.pt"
            where = (f"{last} holds the last checkpoint (every trainer.checkpoint_every={cfg.trainer.checkpoint_every} "
                     f"steps); continue with: ssl-pretrain {' '.join(argv_of(args))} --resume" if last.is_file()
                     else "no checkpoint was written yet")
            print(f"\nssl-pretrain: interrupted; {where}", file=sys.stderr)
            raise SystemExit(130) from None
    if torch.distributed.is_available() and torch.distributed.is_initialized():   # started by torchrun
        rank = torch.distributed.get_rank()
        torch.distributed.destroy_process_group()
        if rank != 0:
            return
    probe = f", online probe accuracy {result.online_probe_acc:.4f}" if result.online_probe_acc is not None else ""
    data = cfg.data.dataset
    args = f"--checkpoint {result.checkpoint} --data {data} --out {result.out_dir}"
    steps = [f"ssl-probe {args}", f"ssl-cluster {args}"] if result.labelled else [
        f"ssl-cluster {args}", f"({data} has no labels: ssl-cluster scores the clusters without them; ssl-probe "
                               "needs a labelled dataset)"]
    print(f"\nfinished {result.steps} steps, final loss {result.final_loss:.4f}{probe}\n"
          f"  checkpoint: {result.checkpoint}\n  encoder:    {result.encoder_path}\nnext:\n  " + "\n  ".join(steps))


def argv_of(args) -> list[str]:
    """The config and overrides as typed (quoted for a shell), without --resume / --overwrite."""
    return [shlex.quote(a) for a in (args.config, *args.overrides)]


if __name__ == "__main__":
    main()
