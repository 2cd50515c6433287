"""Training on the CPU: time per step of the real loop in fp32, with channels_last, and in bf16 autocast.

Each method's recipe runs ``--repeats`` rounds; a round runs every variant once, back to back, so a drift of the
host's speed hits all of them alike. The speed-up of a variant is the fp32 median time per step over its median;
the range is over the per-round ratios. This is what ``trainer.precision=auto`` and ``trainer.channels_last`` (unset)
choose from (``ssl_rep.train.setup.fast_formats``). Run under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``
it times the kernels an AVX2-only CPU runs, in a section of its own (the caps are recorded). A variant named with
", malloc as-is" runs with ``trainer.reuse_memory=false``, one named with ", compiled" with ``trainer.compile=true``
(compiling falls in the warmup steps); every loop runs in a fresh process. Usage:
    python -m eval.bench_cpu_precision [--data fashion-mnist] [--methods simclr,supervised] [--steps 20] [--repeats 3]
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile

import torch

from eval.bench_step_overhead import isolated, loop_step_time, overhead_config
from eval.results_md import caps_note, cpu_kind, emit, kernel_caps, parse_or_render, table_section
from ssl_rep.train.setup import native_bf16

VARIANTS = {"fp32": ["trainer.precision=fp32", "trainer.channels_last=false"],
            "fp32 + channels_last": ["trainer.precision=fp32", "trainer.channels_last=true"],
            "bf16": ["trainer.precision=bf16", "trainer.channels_last=false"],
            "bf16 + channels_last": ["trainer.precision=bf16", "trainer.channels_last=true"]}
AS_IS = ", malloc as-is"   # a variant's suffix: trainer.reuse_memory=false
COMPILED = ", compiled"     # a variant's suffix: trainer.compile=true
SUFFIXES = {AS_IS: ["trainer.reuse_memory=false"], COMPILED: ["trainer.compile=true"]}
# a comparison with suffixed variants is a RESULTS.md section of its own: its key's ending and its subject
SECTIONS = {AS_IS: ("-malloc", "malloc as-is against freed memory kept (trainer.reuse_memory)"),
            COMPILED: ("-compile", "eager against torch.compile (trainer.compile)")}


def variant_overrides(name: str) -> list[str] | None:
    """The overrides of a variant name (``VARIANTS``' names, each optionally with one of ``SUFFIXES``); None if
    unknown."""
    suffix = next((s for s in SUFFIXES if name.endswith(s)), None)
    base = name.removesuffix(suffix) if suffix else name
    if base not in VARIANTS:
        return None
    return VARIANTS[base] + SUFFIXES.get(suffix, [])


def step_time(method, data, root, warmup: int, steps: int, overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = overhead_config(method, data, torch.device("cpu"), tmp, warmup, steps, root, extra=overrides)
        return loop_step_time(cfg, steps, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--root", default=None, help="dataset root (e.g. the Fashion-MNIST folder)")
    parser.add_argument("--methods", default="simclr,supervised")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, the first is the baseline: "
                        f"{', '.join(VARIANTS)}, each optionally followed by '{AS_IS}' (trainer.reuse_memory=false) or "
                        f"'{COMPILED}' (trainer.compile=true)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_or_render(parser, render)
    if args is None:
        return
    suffixes = "|".join(re.escape(s[1:]) for s in SUFFIXES)
    names = [n.strip() for n in re.split(rf",(?!{suffixes})", args.variants)]   # the suffixes hold a comma
    unknown = [n for n in names if variant_overrides(n) is None]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}, each optionally + one of "
                         f"{list(SUFFIXES)}")
    rows = []
    for method in args.methods.split(","):
        times = {n: [] for n in names}
        for _ in range(args.repeats):
            for name in names:   # each loop in a fresh process: the malloc settings are process-wide
                times[name].append(isolated(step_time, method, args.data, args.root, args.warmup, args.steps,
                                            variant_overrides(name)))
        base = times[names[0]]
        batch_size = overhead_config(method, args.data, torch.device("cpu"), tempfile.gettempdir(), args.warmup,
                                     args.steps, args.root).data.batch_size
        for name in names:
            per_round = [b / t for b, t in zip(base, times[name])]
            rows.append({"method": method, "variant": name, "batch_size": batch_size,
                         "ms": statistics.median(times[name]) * 1e3,
                         "speedup": statistics.median(base) / statistics.median(times[name]),
                         "speedup_min": min(per_round), "speedup_max": max(per_round)})
            print(rows[-1], flush=True)
    result = {"data": args.data, "steps": args.steps, "repeats": args.repeats, "threads": torch.get_num_threads(),
              "native_bf16": native_bf16(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": rows,
              "caps": kernel_caps()}
    emit(result, args, render)


def render(result: dict, command: str | None, machine_name: str | None = None) -> None:
    base = result["rows"][0]["variant"]
    lines = [f"| {r['method']} | {r['batch_size']} | {r['variant']} | {r['ms']:.0f} | {r['speedup']:.2f}x | "
             f"{r['speedup_min']:.2f}-{r['speedup_max']:.2f} |" for r in result["rows"]]
    note = (f"The real training loop (`train`, the method's {result['data']} recipe, ResNet-20), {result['steps']} "
            f"timed steps after the warmup, medians of {result['repeats']} rounds; {result['threads']} threads. "
            f"Speed-up against {base} in the same round. This CPU: native bf16 "
            f"{'yes' if result['native_bf16'] else 'no'} (torch's CPU capability: {result['cpu_capability']}).")
    note += caps_note(result.get("caps") or {})
    suffix, words = cpu_kind(result["cpu_capability"], result.get("caps") or {})
    key = f"cpu-precision-{result['data']}{suffix}"
    title = f"({result['data']}, {words})" if words else f"({result['data']})"
    suffix = next((s for s in SECTIONS if any(r["variant"].endswith(s) for r in result["rows"])), None)
    ending, subject = SECTIONS.get(suffix, ("", "fp32, channels_last, bf16"))
    key += ending
    table_section(key, f"Training on the CPU: {subject} {title}",
                  "python -m eval.bench_cpu_precision", ["method", "batch", "variant", "ms/step", "speed-up",
                                                         "per-round"], lines, command, machine_name, note)


if __name__ == "__main__":
    main()
