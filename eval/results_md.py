"""Keep eval/RESULTS.md as sections that each benchmark rewrites in place (between markers)."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# ssl_rep results\n\nEvery number here was written by the command shown with it. Ratios are measured side by side in one run.\n"


KERNEL_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")   # cap torch's / oneDNN's CPU kernels


def kernel_caps() -> dict:
    """The kernel caps set in the environment: how a run on this CPU times the kernels an older one runs."""
    return {k: os.environ[k] for k in KERNEL_CAPS if k in os.environ}


def caps_note(caps: dict) -> str:
    return (" Kernels capped to emulate an older CPU: " + ", ".join(f"`{k}={v}`" for k, v in caps.items())
            + " (torch's and oneDNN's kernels as such a CPU runs them, on this machine's caches and memory; bf16 "
            "is then emulated).") if caps else ""


def cpu_kind(capability: str, caps: dict) -> tuple[str, str]:
    """A CPU measurement's section-key suffix and the words its title adds: AVX-512 CPUs own the plain section,
    kernels capped to an older CPU's (``caps``) one of their own, and a CPU that is itself older (AVX2 only, say)
    another, so that no kind overwrites another's numbers."""
    if caps:
        return f"-{capability.lower()}", f"{capability} kernels"
    if capability.upper().startswith("AVX512"):
        return "", ""
    return f"-{capability.lower()}-cpu", f"{capability}-only CPU"


def command_line() -> str:
    """How this run was started, as a reader would type it: ``[CAPS] python -m eval.NAME ARGS``."""
    import shlex
    import sys
    script = Path(sys.argv[0])
    head = f"python -m eval.{script.stem}" if script.parent.name == "eval" else f"python {sys.argv[0]}"
    caps = [f"{k}={v}" for k, v in kernel_caps().items()]
    return " ".join([*caps, head, shlex.join(sys.argv[1:])]).strip()


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cores = len(__import__("os").sched_getaffinity(0))
    return f"CPU only ({cores} cores, {cpu_name()}), torch {torch.__version__}"


def cpu_name() -> str:
    """The CPU's model name and the vector extensions int8 and bf16 kernels depend on."""
    from ssl_rep.quantize import cpu_has_vnni
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if kernel_caps():
        return f"{name}, kernels capped to {torch.backends.cpu.get_cpu_capability()}"
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}, {'VNNI' if cpu_has_vnni() else 'no VNNI'}"


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=RESULTS.parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# RESULTS.md's topics, in order, each with the section keys (prefixes) it holds; a section goes to the topic of
# its longest matching prefix, else the last
TOPICS = [
    ("Representation quality on Fashion-MNIST", ("suite-fashion-mnist", "ablation-simclr", "simclr-fm",
                                                 "probe-grid", "figures")),
    ("Representation quality on digits", ("suite-digits",)),
    ("Clustering", ("cluster-", "bench-kmeans", "bench-cluster")),
    ("Linear probe and kNN speed", ("bench-probe",)),
    ("Training speed and the data path", ("step-overhead", "cpu-precision", "bench-vs-lightly", "bench-ddp",
                                          "bench-data-path", "bench-decode", "bench-extract")),
    ("Int8", ("bench-int8",)),
    ("Memory and long runs", ("bench-memory", "soak")),
    ("GPU checks and the test suite", ("gpu-checks", "suite-time")),
]
_SECTION = re.compile(r"<!-- (?P<key>[\w.-]+):start -->.*?<!-- (?P=key):end -->[^<]*", re.S)


def topic_of(key: str) -> str:
    best = max(((len(prefix), title) for title, prefixes in TOPICS for prefix in prefixes if key.startswith(prefix)),
               default=(0, TOPICS[-1][0]))
    return best[1]


def organise(text: str) -> str:
    """RESULTS.md with its sections grouped under their topics (in ``TOPICS`` order), each topic's sections in
    the order they had; text between a section's end marker and the next section stays with it."""
    headers = {f"# {title}" for title, _ in TOPICS}
    sections = [(m.group("key"), "\n".join(line for line in m.group(0).strip().splitlines()
                                            if line not in headers).strip()) for m in _SECTION.finditer(text)]
    out = [HEADER.rstrip()]
    for title, _ in TOPICS:
        mine = [body for key, body in sections if topic_of(key) == title]
        if mine:
            out += [f"# {title}", *mine]
    return "\n\n".join(out) + "\n"


# the commit a saved run was measured at, while ``parse_or_render`` re-renders it (``--commit``)
MEASURED_AT: str | None = None


def update_section(key: str, title: str, command: str, body: str, path: Path = RESULTS,
                   machine_name: str | None = None, date: str | None = None, commit: str | None = None) -> None:
    """Replace (or add, under its topic) the section ``key`` of RESULTS.md with a header, the command and
    ``body``. ``machine_name``/``date``/``commit`` describe where and at which commit the numbers were measured
    when that was not here and now."""
    text = path.read_text() if path.exists() else HEADER
    stamp = (f"{date or datetime.date.today().isoformat()}, {machine_name or machine()}, "
             f"commit {commit or MEASURED_AT or git_rev()}")
    section = (f"<!-- {key}:start -->\n## {title}\n\n`{command}`  \n{stamp}\n\n{body.strip()}\n<!-- {key}:end -->")
    pattern = re.compile(rf"<!-- {re.escape(key)}:start -->.*?<!-- {re.escape(key)}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.write_text(organise(text))


def table_section(key: str, title: str, default_command: str, header: list[str], lines: list[str],
                  command: str | None, machine_name: str | None, note: str = "") -> None:
    """A RESULTS.md section holding one markdown table (``header`` cells, then ``lines``) and a note."""
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *lines]
    update_section(key, title, command or default_command, "\n".join(table) + ("\n\n" + note if note else ""),
                   machine_name=machine_name)


def device_table_section(rows: list[dict], key: str, title: str, default_command: str, header: list[str], line,
                         command: str | None, machine_name: str | None, note: str = "") -> None:
    """``table_section`` for rows measured on one device: the key and title name it, ``line(row)`` is a table row."""
    device = rows[0]["device"]
    table_section(f"{key}-{device}", f"{title} ({device})", default_command, header, [line(r) for r in rows], command,
                  machine_name, note)


def add_encoder_args(parser, checkpoint_help: str, C_help: str) -> None:
    """The options of the benchmarks that evaluate one encoder: ``--checkpoint``, ``--data``, ``--root``, and the
    fixed probe ``--C`` every row shares."""
    parser.add_argument("--checkpoint", help=f"{checkpoint_help} (required unless --render)")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--root", default=None)
    parser.add_argument("--C", type=float, default=0.1, help=C_help)


def parse_or_render(parser, render, required: tuple[str, ...] = ()):
    """Parse a benchmark's arguments, with the output options every benchmark shares. With ``--render``, rewrite its
    RESULTS.md section from the saved JSON instead and return None. ``required``: options a run (not a render)
    must have."""
    import json
    add_output_args(parser)
    args = parser.parse_args()
    if args.render:
        global MEASURED_AT
        MEASURED_AT = args.commit
        render(json.loads(Path(args.render).read_text()), args.command, args.machine)
        return None
    missing = [f"--{name.replace('_', '-')}" for name in required if getattr(args, name) is None]
    if missing:
        parser.error(f"{', '.join(missing)} required (unless --render)")
    return args


def emit(result, args, render) -> None:
    """What every benchmark does with its result: ``--json`` copy, then RESULTS.md unless ``--no-results-md``."""
    import json
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if not args.no_results_md:
        render(result, command_line())


def add_output_args(parser) -> None:
    """The output options every benchmark shares: a JSON copy, skipping RESULTS.md, re-rendering a saved run."""
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--no-results-md", action="store_true", help="do not touch eval/RESULTS.md")
    parser.add_argument("--render", default=None, help="write RESULTS.md from a saved --json file and exit")
    parser.add_argument("--machine", default=None, help="with --render: where the saved numbers were measured")
    parser.add_argument("--command", default=None, help="with --render: the command that measured them")
    parser.add_argument("--commit", default=None, help="with --render: the commit that measured them "
                                                       "(default: the checkout's)")
