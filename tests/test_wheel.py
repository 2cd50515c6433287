"""A plain (non-editable) install carries the recipes: built as a wheel, unpacked outside the checkout,
``ssl-pretrain NAME`` finds its recipe and trains."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

# its module-scoped fixture is costly: under pytest-xdist, every test here runs on one worker, which builds it once
pytestmark = pytest.mark.xdist_group("wheel")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"   # a copy: setuptools builds in the source folder (build/), not in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("ssl_rep", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, cwd=out)
    (wheel,) = out.glob("ssl_rep-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(out / "site")
    return out / "site", names


def test_the_wheel_holds_every_recipe_and_every_module(unpacked_wheel):
    _, names = unpacked_wheel
    recipes = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert recipes and sorted(n.split("/")[-1] for n in names if n.startswith("ssl_rep/configs/")
                              and n.endswith(".yaml")) == recipes
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "ssl_rep").rglob("*.py"))
    assert sorted(n for n in names if n.startswith("ssl_rep/") and n.endswith(".py")
                  and not n.startswith("ssl_rep/configs/")) == modules   # a new subpackage missing from pyproject fails


def test_a_recipe_trains_from_the_unpacked_wheel_in_an_empty_folder(unpacked_wheel, tmp_path):
    site, _ = unpacked_wheel
    env = {**os.environ, "PYTHONPATH": str(site), "TQDM_DISABLE": "1"}
    code = ("import sys, ssl_rep; from ssl_rep.train.config import CONFIG_DIR; "
            "print(ssl_rep.__file__); print(CONFIG_DIR); "
            "from ssl_rep.cli.pretrain import main; main(sys.argv[1:])")
    args = ["simclr_digits", "out_dir=run", "trainer.max_steps=2", "trainer.device=cpu", "data.num_workers=0",
            "data.batch_size=32", "trainer.online_probe=false"]
    run = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    module_file, config_dir = run.stdout.splitlines()[:2]
    assert Path(module_file).is_relative_to(site) and Path(config_dir).is_relative_to(site)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(line["step"] for line in lines) == 2 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
