"""The shape the design promises (shared STYLE.md): methods declare and the trainer asks, imports point one
way, files and the loop stay short, and a method written outside the library trains with no edit to it."""
import ast
import inspect
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ssl_rep
from ssl_rep.methods import METHODS, Method, MethodOutput, create_method, register_method
from ssl_rep.train import load_config, train
from ssl_rep.train.loop import train as train_fn

PACKAGE = Path(ssl_rep.__file__).parent
# what each subpackage may import besides itself (STYLE.md: cli -> eval, train; train -> methods, data;
# methods -> encoders; eval -> encoders, data); the top-level modules (the public API, quantize, demo) sit above
# them all, so only cli may import those
ALLOWED = {"cli": {"eval", "train", "data", "encoders", "methods"}, "train": {"methods", "data", "encoders"},
           "methods": {"encoders"}, "eval": {"encoders", "data"}, "encoders": set(), "data": set()}


def imports_of(path: Path) -> set[str]:
    """Every ssl_rep module ``path`` imports, function-level imports included, as dotted names."""
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = here[:-1] if here[-1] != "__init__" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join(base + ((node.module,) if node.module else ()))
            else:
                name = node.module or ""
            if name.startswith("ssl_rep"):
                found.add(name)
                found.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ssl_rep"))
    return found


def test_imports_point_one_way():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) < 2:
            continue
        own = rel.parts[0]
        for target in imports_of(path):
            parts = target.split(".")
            if len(parts) == 1 or not (PACKAGE / parts[1]).exists() and not (PACKAGE / f"{parts[1]}.py").exists():
                continue   # "from .. import x" names the root: its members are checked as ssl_rep.x
            other = parts[1]
            if other == own:
                continue
            if (PACKAGE / other).is_dir() and other not in ALLOWED[own]:
                wrong.append(f"{rel} imports {target}")
            if (PACKAGE / f"{other}.py").is_file() and own != "cli":
                wrong.append(f"{rel} imports the top-level {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    """Module-level graph over ssl_rep, function-level imports included: no cycle."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts)
        modules[name] = path
    graph = {name: {t for t in imports_of(path) if t in modules and t != name and not name.startswith(t + ".")}
             for name, path in modules.items()}
    # a package's __init__ re-exporting its modules is not a cycle with them
    graph = {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in graph.items()}
    state, cycle = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open" and not cycle:
                cycle.extend(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    packages_only = all(modules[c].name == "__init__.py" for c in cycle[:-1])
    assert not cycle or packages_only, " -> ".join(cycle)


def test_the_trainer_names_no_method():
    """No comparison against a method's name under ssl_rep/train (transform names such as "simclr" may be
    compared: they name an augmentation, which a method asks for by declaring ``transform``)."""
    names = "|".join(METHODS)
    pattern = re.compile(rf"""method\.name\s*(==|!=|in\b)|(==|!=|\bin)\s*\(?["'](?:{names})["']|["'](?:{names})["']\s*(==|!=)""")
    hits = [f"{p.name}:{i + 1}: {line.strip()}" for p in (PACKAGE / "train").glob("*.py")
            for i, line in enumerate(p.read_text().splitlines()) if pattern.search(line) and "transform" not in line]
    assert not hits, "\n".join(hits)
    bad = 'find_unused_parameters=cfg.method.name == "cpc"\nif method == "simclr":\n'
    assert len([line for line in bad.splitlines() if pattern.search(line)]) == 2   # the pattern has teeth


def test_files_and_the_loop_stay_short():
    long_files = [f"{p.relative_to(PACKAGE)}: {n}" for p in PACKAGE.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > 400]
    assert not long_files
    assert len(inspect.getsource(train_fn).splitlines()) <= 80


class MeanTeacher(Method):
    """A toy method written outside the library: predict a momentum teacher's embedding of the other
    view (BYOL-like, no negatives). It exercises everything a method can declare: two views, a
    per-step hook, a buffer that must survive a checkpoint."""

    name = "test_mean_teacher"
    n_views = 2
    transform = "simclr"

    def __init__(self, encoder, dim: int = 16, tau: float = 0.9):
        super().__init__(encoder)
        self.head = torch.nn.Linear(encoder.num_features, dim)
        self.teacher = torch.nn.Linear(encoder.num_features, dim)
        self.teacher.load_state_dict(self.head.state_dict())
        self.teacher.requires_grad_(False)
        self.tau = tau
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, batch):
        v0, v1 = self.images_of(batch)
        h = self.encoder(torch.cat([v0, v1]))
        p = F.normalize(self.head(h), dim=1)
        with torch.no_grad():
            t = F.normalize(self.teacher(h.detach()), dim=1)
        n = len(v0)
        loss = (2 - 2 * (p[:n] * t[n:]).sum(1)).mean() + (2 - 2 * (p[n:] * t[:n]).sum(1)).mean()
        return MethodOutput(loss, {"loss": loss.detach()}, h[:n].detach())

    @torch.no_grad()
    def after_step(self, step, total_steps):
        for t, s in zip(self.teacher.parameters(), self.head.parameters()):
            t.mul_(self.tau).add_(s, alpha=1 - self.tau)
        self.updates += 1


@pytest.fixture
def registered():
    register_method(MeanTeacher)
    yield MeanTeacher
    METHODS.pop(MeanTeacher.name)


def test_a_method_registered_outside_the_library_trains(tmp_path, registered):
    """Registered from this file: the recipe names it, the trainer gives it two SimCLR views (its
    declaration), calls its hook after every step, and checkpoints its state."""
    assert create_method("test_mean_teacher", ssl_rep.create_encoder("resnet20")).n_views == 2
    result = train(load_config(None, [f"out_dir={tmp_path}", "method.name=test_mean_teacher", "method.dim=8",
                                      "data.batch_size=16", "data.num_workers=0", "trainer.max_steps=3",
                                      "trainer.log_every=1", "trainer.device=cpu", "optim.name=adamw",
                                      "optim.lr=0.001"]), progress=False)
    assert result.steps == 3
    state = torch.load(result.checkpoint, weights_only=True)["model"]
    assert int(state["updates"]) == 3   # after_step ran once per optimiser step, and its buffer was saved
    teacher, head = state["teacher.weight"], state["head.weight"]
    assert not torch.equal(teacher, head)   # the teacher lags the head
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3] and all("online_probe_train_acc" not in r or r["step"] == 3
                                                           for r in lines)


def test_an_unregistered_or_nameless_method_is_refused():
    with pytest.raises(TypeError, match="Method subclass with a name"):
        register_method(type("Nameless", (Method,), {}))
    with pytest.raises(ValueError, match="unknown method 'nope'; valid: .*simclr"):
        create_method("nope", ssl_rep.create_encoder("resnet20"))


def test_the_readmes_own_loop_runs_with_a_momentum_method(tmp_path, monkeypatch):
    """The README's own-loop example, as printed there, for one epoch with BYOL swapped in: it trains, calls
    ``after_step`` (the teacher moves) and saves the encoder's weights."""
    readme = (PACKAGE.parent / "README.md").read_text()
    block = next(b for b in readme.split("```python")[1:] if "for batch in loader" in b).split("```")[0]
    assert "epochs, step = 10, 0" in block and 'create_method("simclr"' in block and "DataLoader(data," in block
    code = block.replace("epochs, step = 10, 0", "epochs, step = 1, 0").replace(
        "DataLoader(data,", "DataLoader(torch.utils.data.Subset(data, range(384)),").replace(
        'create_method("simclr", ssl_rep.create_encoder("resnet20"), temperature=0.5)',
        'create_method("byol", ssl_rep.create_encoder("resnet20"), hidden_dim=64, out_dim=32)')
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    method = scope["method"]
    assert scope["step"] == len(scope["loader"]) and float(method.tau) == pytest.approx(1.0)
    assert (tmp_path / "encoder_weights.pt").stat().st_size > 100_000
