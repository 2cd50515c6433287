import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

import ssl_rep
from ssl_rep.train import ConfigError, NonFiniteLossError, load_config, lr_at, train
from ssl_rep.train.checkpoint import load_checkpoint
from ssl_rep.train.config import CONFIG_DIR, ScheduleConfig, apply_overrides, config_from_dict
from ssl_rep.train.sampling import EpochSampler, SeededAugment
from ssl_rep.train.metrics import read_metrics
from ssl_rep.train.optim import LARS, SGDW

FAST = ["data.batch_size=32", "data.num_workers=0", "trainer.log_every=2", "optim.lr=0.002", "optim.name=adamw"]


# ------------------------------------------------------------------ schedules and optimisers
def test_lr_at_warmup_cosine_and_step():
    cos = ScheduleConfig(name="cosine", warmup_steps=10, min_lr=0.01)
    assert lr_at(0, 1.0, 110, cos) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 110, cos) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 110, cos) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 110, cos) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_at(110, 1.0, 110, cos) == pytest.approx(0.01)
    step = ScheduleConfig(name="step", milestones=(32000, 48000), gamma=0.1)
    assert [lr_at(s, 0.1, 64000, step) for s in (0, 31999, 32000, 48000)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert lr_at(5, 0.3, 10, ScheduleConfig(name="constant")) == 0.3


def test_sgdw_decay_is_decoupled_and_lars_scales_by_trust_ratio():
    w = torch.nn.Parameter(torch.tensor([2.0, -4.0]))
    w.grad = torch.tensor([1.0, 1.0])
    SGDW([{"params": [w], "weight_decay": 0.1}], lr=0.5).step()
    assert torch.allclose(w.detach(), torch.tensor([2.0, -4.0]) * (1 - 0.05) - 0.5)
    v = torch.nn.Parameter(torch.tensor([3.0, 4.0]))   # |v| = 5
    v.grad = torch.tensor([0.0, 2.0])                  # |g| = 2
    LARS([{"params": [v], "weight_decay": 0.0, "lars_adapt": True}], lr=1.0, momentum=0.0, eta=0.1).step()
    assert torch.allclose(v.detach(), torch.tensor([3.0, 4.0]) - 0.1 * 5 / 2 * torch.tensor([0.0, 2.0]))


# ------------------------------------------------------------------ configs
def test_every_shipped_config_loads():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    for required in ("ae_digits", "cpc_digits", "simclr_digits", "supervised_digits", "ae_fashion_mnist",
                     "cpc_fashion_mnist", "simclr_fashion_mnist", "supervised_fashion_mnist",
                     "supervised_resnet20_cifar10", "simclr_cifar10", "cpc_cifar10", "simclr_stl10",
                     "simclr_imagenet"):
        assert required in names
    for name in names:
        load_config(name)
    paper = load_config("supervised_resnet20_cifar10")
    assert paper.schedule.milestones == (32000, 48000) and paper.trainer.max_steps == 64000
    assert paper.data.batch_size == 128 and paper.method.options["l2_weight_decay"] == 1e-4


def test_overrides_are_typed():
    cfg = load_config("simclr_digits", ["optim.lr=0.3", "trainer.epochs=5", "trainer.deterministic=true",
                                        "method.temperature=0.2", "schedule.milestones=[10, 20]", "out_dir=runs/x"])
    assert cfg.optim.lr == 0.3 and cfg.trainer.epochs == 5 and cfg.trainer.deterministic is True
    assert cfg.method.options["temperature"] == 0.2 and cfg.schedule.milestones == (10, 20)
    assert cfg.out_dir == "runs/x"
    assert load_config("simclr_digits", ["data.resident=on"]).data.resident == "on"  # not YAML's True
    assert load_config("simclr_digits", ["data.resident=off"]).data.resident == "off"
    with pytest.warns(FutureWarning, match="data.gpu_resident is now called data.resident"):
        assert load_config("simclr_digits", ["data.gpu_resident=off"]).data.resident == "off"   # the old name
    with pytest.raises(ConfigError, match="same key"), pytest.warns(FutureWarning):
        load_config("simclr_digits", ["data.gpu_resident=off", "data.resident=on"])


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=0.1", "unknown key 'optim.lrr'; valid keys in optim: optim.name, optim.lr"),
    ("bogus=1", "unknown key 'bogus'; valid keys: out_dir, seed"),
    ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
    ("trainer.epochs=2.5", "trainer.epochs: expected int"),
    ("optim.lr=-1", "optim.lr: must be > 0"),
    ("data.batch_size=0", "data.batch_size: must be > 0"),
    ("data.min_scale=0", "data.min_scale: must be in (0, 1], got 0.0"),
    ("data.min_scale=1.5", "data.min_scale: must be in (0, 1], got 1.5"),
    ("optim.name=adam", "valid: sgd, adamw, lars"),
    ("method.context=lstm", "unknown key 'method.context' for method 'simclr'; valid options: temperature"),
    ("encoder.shortcut=C", "encoder.shortcut: 'C' is not a valid choice; valid: A, B"),
    ("trainer.deterministic=maybe", "trainer.deterministic: expected bool"),
    ("nonsense", "must look like key=value"),
    # these passed as "not given" (0), trained to a NaN blamed on the lr, or crashed inside torch
    ("data.image_size=0", "data.image_size: must be > 0, got 0"),
    ("method.temperature=0", "method.temperature: must be > 0, got 0.0"),
    ("encoder.width=0", "encoder.width: must be > 0, got 0"),
    ("method.hidden_dim=-8", "method.hidden_dim: must be > 0, got -8"),
])
def test_bad_overrides_name_the_key_and_choices(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("simclr_digits", [override])
    assert message in str(err.value)


@pytest.mark.parametrize("recipe,override,message", [
    ("ae_digits", "method.mask_ratio=1.5", "method.mask_ratio: must be in [0, 1], got 1.5"),
    ("ae_digits", "method.noise_std=-1", "method.noise_std: must be >= 0, got -1.0"),
    ("ae_digits", "method.code_dim=0", "method.code_dim: must be > 0, got 0"),   # its default is None
    ("dino_digits", "method.teacher_temp=0", "method.teacher_temp: must be > 0"),
    ("byol_digits", "method.tau_base=1.2", "method.tau_base: must be in [0, 1]"),
])
def test_method_options_out_of_range_are_config_errors(recipe, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(recipe, [override])
    assert message in str(err.value)


def test_a_warmup_longer_than_the_run_is_named(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ssl_rep.train"):
        train(load_config("ae_digits", [f"out_dir={tmp_path}", "trainer.max_steps=3", "schedule.warmup_steps=10",
                                        *FAST]), progress=False)
    assert "schedule.warmup_steps=10 is longer than the run (3 steps)" in caplog.text
    assert "never reaches optim.lr=0.002 (it ends at 0.0006)" in caplog.text


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file.*known names: .*simclr_digits"):
        load_config("no_such_config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: 0.1\n")
    with pytest.raises(ConfigError, match="bad.yaml: YAML syntax error"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="expected a mapping"):
        config_from_dict(apply_overrides({"optim": 3}, []))


def test_missing_dataset_path_fails_before_any_work(tmp_path):
    cfg = load_config("ae_digits", [f"out_dir={tmp_path / 'run'}", f"data.dataset={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="nowhere"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ the loop
def test_pretrain_writes_config_metrics_checkpoint_and_loss_falls(tmp_path):
    out = tmp_path / "run"
    cfg = load_config("ae_digits", [f"out_dir={out}", "trainer.max_steps=30", "trainer.checkpoint_every=10",
                                    "trainer.keep_checkpoints=2", *FAST])
    result = train(cfg, progress=False)
    assert result.steps == 30
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 30 and saved["method"]["mode"] == "denoising"
    lines = read_metrics(out / "metrics.jsonl")
    assert all("step" in r and "loss" in r for r in lines) and lines[-1]["step"] == 30
    assert lines[-1]["loss"] < 0.6 * lines[0]["loss"]
    assert {"lr", "images_per_s", "elapsed", "recon_mse"} <= set(lines[-1])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt", "step_0000020.pt", "step_0000030.pt"]
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 30 and state["config"]["trainer"]["max_steps"] == 30
    assert {"python", "numpy", "torch", "cuda"} <= set(state["rng"]) and state["versions"]["torch"]
    enc = ssl_rep.load_encoder(out / "encoder.pt")
    same = ssl_rep.load_encoder(out / "checkpoints" / "last.pt")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(enc(x), same(x))


def test_online_probe_is_logged_each_epoch_and_never_changes_the_encoder(tmp_path):
    base = ["trainer.epochs=1", *FAST, "data.batch_size=256"]
    on = train(load_config("supervised_digits", [f"out_dir={tmp_path / 'a'}", *base]), progress=False)
    off = train(load_config("supervised_digits", [f"out_dir={tmp_path / 'b'}", "trainer.online_probe=false", *base]),
                progress=False)
    epoch_lines = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "online_probe_acc" in r]
    assert len(epoch_lines) == 1 and 0.0 <= epoch_lines[0]["online_probe_acc"] <= 1.0
    assert on.online_probe_acc is not None and off.online_probe_acc is None
    a = torch.load(tmp_path / "a" / "encoder.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "encoder.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_online_probe_keeps_held_out_pixels_as_uint8_with_the_same_numbers():
    """The eval transform's output is 8-bit pixels, normalised: the held-out set keeps those bytes (a quarter of
    float32's memory) and gives back exactly the floats the transform made; another transform stays float32."""
    from ssl_rep.data import build_dataset, build_transform
    from ssl_rep.data.base import spread_indices
    from ssl_rep.train.online_probe import HeldOut
    ds = build_dataset("digits", split="test", transform=build_transform("eval", stats="digits", size=32, resize=None))
    held = HeldOut(ds, "cpu", limit=300)
    assert held.images.dtype == torch.uint8 and held.images.shape == (300, 3, 32, 32) and len(held) == 300
    pick = spread_indices(len(ds), 300)
    floats = torch.stack([ds[i][0] for i in pick])
    got = torch.cat([x for x, _ in held.batches(256)])
    torch.testing.assert_close(got, floats, rtol=0, atol=1e-6)
    assert torch.equal(torch.cat([y for _, y in held.batches(256)]), torch.as_tensor(ds.labels[pick]))

    class Halved:   # same statistics, not 8-bit pixels any more
        def __init__(self, inner):
            self.inner, self.transform = inner, inner.transform

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            x, y = self.inner[i]
            return x * 0.5, y
    halved = HeldOut(Halved(ds), "cpu", limit=200)
    assert halved.images.dtype == torch.float32
    floats = torch.stack([ds[i][0] for i in spread_indices(len(ds), 200)])
    torch.testing.assert_close(torch.cat([x for x, _ in halved.batches(128)]), floats * 0.5)


def test_online_probe_head_ignores_the_features_scale():
    """Its BatchNorm (no affine parameters) makes the head's output, and so its gradient steps, independent of the
    features' scale, which drifts during pretraining."""
    from ssl_rep.train.online_probe import online_probe_head
    torch.manual_seed(0)
    head = online_probe_head(16, 5)
    assert [n for n, _ in head.named_parameters()] == ["1.weight", "1.bias"]
    x = torch.randn(32, 16) * (0.5 + torch.rand(16)) + 3   # std >= 0.5: BatchNorm's eps (1e-5) stays negligible
    torch.testing.assert_close(head(x), head(1000 * x), atol=1e-4, rtol=1e-4)


def poison_autoencoder_loss(monkeypatch, factor: float, at) -> dict:
    """The autoencoder's loss times ``factor`` on the forward calls where ``at(call)`` holds; counts calls."""
    from ssl_rep.methods.autoencoder import Autoencoder
    real_forward = Autoencoder.forward
    calls = {"n": 0}

    def forward(self, batch):
        loss, logs = real_forward(self, batch)
        calls["n"] += 1
        return (loss * factor, logs) if at(calls["n"]) else (loss, logs)

    monkeypatch.setattr(Autoencoder, "forward", forward)
    return calls


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    poison_autoencoder_loss(monkeypatch, float("nan"), lambda call: call > 5)
    out = tmp_path / "run"
    cfg = load_config("ae_digits", [f"out_dir={out}", "trainer.max_steps=20", "trainer.checkpoint_every=2", *FAST,
                                    "trainer.memory_check=false"])   # its probe forwards would count as calls
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 6.*last good checkpoint"):
        train(cfg, progress=False)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4
    assert not (out / "encoder.pt").exists()


def test_non_finite_loss_between_checkpoints_is_caught_at_the_next_logging_step(tmp_path, monkeypatch):
    """Losses reach the host one logging step late (no wait on the device); the stop still names the step."""
    calls = poison_autoencoder_loss(monkeypatch, float("inf"), lambda call: call == 8)
    out = tmp_path / "run"
    cfg = load_config("ae_digits", [f"out_dir={out}", *FAST, "trainer.max_steps=30", "trainer.checkpoint_every=100",
                                    "trainer.log_every=3", "trainer.memory_check=false"])
    with pytest.raises(NonFiniteLossError, match="loss became inf at step 8 "):
        train(cfg, progress=False)
    # stopped when that window's values reached the host: at once on CPU (its progress line reads them at step 9),
    # at the next logging step (12) at the latest when they are still on their way from a GPU
    assert 9 <= calls["n"] <= 12
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 3, 6]
    assert not (out / "encoder.pt").exists()


def test_epoch_order_and_augmentation_are_reproducible_and_resumable():
    sampler = EpochSampler(10, seed=3, batch_size=4)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, skip_batches=1)
    assert list(sampler) == full[4:]
    assert len(full) == 8 and len(set(full)) == 8 and all(20 <= c < 30 for c in full)   # full batches only
    ranks = [EpochSampler(10, seed=3, batch_size=2, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    halves = [list(r) for r in ranks]   # each process takes its slice of every global batch of 4
    assert [c for b in range(2) for h in halves for c in h[2 * b:2 * b + 2]] == full
    ds = ssl_rep.build_dataset("digits", transform=ssl_rep.data.build_transform("simclr", stats="digits", size=32))
    seeded = SeededAugment(ds, seed=0)
    torch.manual_seed(123)
    a = seeded[5 + 2 * len(ds)][0]
    torch.manual_seed(999)
    b = seeded[5 + 2 * len(ds)][0]
    assert torch.equal(a, b)
    assert not torch.equal(a, seeded[5 + 3 * len(ds)][0])   # another epoch, another augmentation


# ------------------------------------------------------------------ kill and resume
def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "ssl_rep.cli.pretrain", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _logged_step(path) -> int:
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return 0
    return max((r["step"] for r in lines), default=0)


@pytest.mark.parametrize("recipe,options,total,kills", [
    ("ae_digits", ["method.mode=masked"], 20, 2),
    # momentum teachers (and DINO's centre) live in the checkpoint too; DINO's case holds BYOL's (a teacher), so
    # BYOL's runs with the slow tests only
    pytest.param("byol_digits", ["method.hidden_dim=64", "method.out_dim=32"], 12, 1, marks=pytest.mark.slow),
    ("dino_digits", ["method.hidden_dim=64", "method.bottleneck_dim=16", "method.out_dim=64"], 12, 1)])
def test_sigkill_at_several_random_points_then_resume_gives_the_same_weights(tmp_path, recipe, options, total, kills):
    """Killed (SIGKILL, from outside) at random points, resumed each time: the final weights (the whole
    method's: teachers, queues and centres included) equal an uninterrupted run's, last.pt always loads,
    and metrics.jsonl reads as one run."""
    common = [recipe, f"trainer.max_steps={total}", "trainer.checkpoint_every=4", "trainer.deterministic=true",
              *options, "trainer.log_every=1", *FAST, "data.num_workers=1", "data.image_size=16"]   # 16 px: cheap steps
    straight = _run_cli([*common, f"out_dir={tmp_path / 'straight'}"])
    assert straight.wait(timeout=300) == 0, straight.stdout.read()
    killed = tmp_path / "killed"
    rng = np.random.default_rng(int(os.environ.get("KILL_SEED", "0")))
    targets = sorted(rng.choice(np.arange(3, total - 2), size=kills, replace=False))
    for target in targets:
        resume = ["--resume"] if (killed / "checkpoints" / "last.pt").exists() else []
        proc = _run_cli([*common, f"out_dir={killed}", *resume])
        deadline = time.time() + 240
        while _logged_step(killed / "metrics.jsonl") < target:
            assert proc.poll() is None and time.time() < deadline, f"run ended before step {target}"
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))   # anywhere in the step, a checkpoint write included
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if (killed / "checkpoints" / "last.pt").exists():
            assert load_checkpoint(killed / "checkpoints" / "last.pt")["step"] % 4 == 0   # never torn
    resumed = _run_cli([*common, f"out_dir={killed}", "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(killed / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_metrics(killed / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == total  # no duplicated lines after the resumes
    assert not list((killed / "checkpoints").glob(".*.tmp"))   # a temp file a kill left behind is cleared on resume


def test_ctrl_c_says_where_the_run_can_go_on_from_without_a_traceback(tmp_path):
    """SIGINT (Ctrl-C) mid-run: exit status 130 and one line naming the last checkpoint and the --resume command,
    not a KeyboardInterrupt traceback; the run goes on from there."""
    args = ["ae_digits", "trainer.max_steps=400", "trainer.checkpoint_every=2", f"out_dir={tmp_path / 'run'}", *FAST,
            "data.image_size=16"]
    proc = _run_cli(args, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's job
    deadline = time.time() + 120
    while _logged_step(tmp_path / "run" / "metrics.jsonl") < 4:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    for _ in range(3):   # a SIGINT that lands in a finaliser (__del__) is printed and ignored: press again
        proc.send_signal(signal.SIGINT)
        try:
            out = proc.communicate(timeout=20)[0]
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        raise AssertionError(f"three SIGINTs did not stop the run: {proc.communicate()[0][-2000:]}")
    assert proc.returncode == 130, out[-2000:]
    assert "Traceback" not in out or "Exception ignored" in out, out[-2000:]
    assert f"interrupted; {tmp_path / 'run' / 'checkpoints' / 'last.pt'} holds the last checkpoint" in out, out[-2000:]
    line = next(line for line in out.splitlines() if "continue with: " in line)   # whatever else prints at exit
    command = line.split("continue with: ")[1].split()
    assert command[0] == "ssl-pretrain" and command[-1] == "--resume" and command[1:-1] == args, out[-2000:]
    step = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"]
    assert step >= 2
    # the command's run goes on (in process, and shortened: --resume may change trainer.*)
    train(load_config("ae_digits", [*args[1:], f"trainer.max_steps={step + 2}"]), resume=True, progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == step + 2


def test_resume_with_a_different_config_is_refused(tmp_path):
    out = tmp_path / "run"
    train(load_config("ae_digits", [f"out_dir={out}", "trainer.max_steps=2", *FAST]), progress=False)
    with pytest.raises(ConfigError, match="optim.lr"):
        train(load_config("ae_digits", [f"out_dir={out}", "trainer.max_steps=4", *FAST, "optim.lr=0.5"]),
              resume=True, progress=False)


def test_resuming_into_a_longer_run_warns_of_the_learning_rates_restart(tmp_path, caplog):
    opts = [f"out_dir={tmp_path / 'run'}", *FAST, "schedule.warmup_steps=0"]
    train(load_config("ae_digits", [*opts, "trainer.max_steps=4"]), progress=False)   # the cosine ends at 0
    with caplog.at_level(logging.WARNING, logger="ssl_rep.train"):
        train(load_config("ae_digits", [*opts, "trainer.max_steps=4"]), resume=True, progress=False)
    assert "warm restart" not in caplog.text   # the same length: nothing to say
    with caplog.at_level(logging.WARNING, logger="ssl_rep.train"):
        train(load_config("ae_digits", [*opts, "trainer.max_steps=8"]), resume=True, progress=False)
    # step 4 of 8 on a cosine without warmup: half the peak, where the saved run had reached 0
    assert "resuming at step 4 of 8 (the saved run was set to 4 steps): the learning rate goes from 0 to 0.001 " \
           "(0.50 of optim.lr), a warm restart" in caplog.text


def test_a_run_saved_before_a_config_key_existed_still_resumes(tmp_path):
    """A checkpoint whose config lacks a key added since (here data.min_scale) resumes: the key reads as its
    default, which is the behaviour that run had."""
    out = tmp_path / "run"
    train(load_config("ae_digits", [f"out_dir={out}", "trainer.max_steps=2", *FAST]), progress=False)
    last = out / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["config"]["data"]["min_scale"]
    last.unlink()   # last.pt is a hard link to the step's file: write a new file, not through the link
    torch.save(state, last)
    result = train(load_config("ae_digits", [f"out_dir={out}", "trainer.max_steps=4", *FAST]), resume=True,
                   progress=False)
    assert result.steps == 4
    with pytest.raises(ConfigError, match="data.min_scale"):   # a changed value is still refused
        train(load_config("ae_digits", [f"out_dir={out}", "trainer.max_steps=6", *FAST, "data.min_scale=0.5"]),
              resume=True, progress=False)


def test_online_probe_normalises_its_input(tmp_path):
    out = tmp_path / "run"
    train(load_config("ae_digits", [f"out_dir={out}", *FAST, "trainer.max_steps=2"]), progress=False)
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert {"0.running_mean", "0.running_var", "1.weight", "1.bias"} <= set(state["probe"])
    assert "0.weight" not in state["probe"]   # the BatchNorm has no affine parameters: the linear layer is the probe


def test_cli_reports_config_errors_without_traceback(tmp_path):
    proc = _run_cli(["simclr_digits", "optim.lrr=1", f"out_dir={tmp_path}"])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "ssl-pretrain: error: unknown key 'optim.lrr'" in out and "Traceback" not in out


def test_subset_pretrains_on_a_fixed_random_sample():
    from ssl_rep.train.data import build_train_dataset
    a, *_ = build_train_dataset(load_config("ae_digits", ["data.subset=100"]))
    b, *_ = build_train_dataset(load_config("ae_digits", ["data.subset=100"]))
    c, *_ = build_train_dataset(load_config("ae_digits", ["data.subset=100", "seed=1"]))
    assert len(a) == 100 and np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    full = ssl_rep.build_dataset("digits")
    assert any(np.array_equal(a.images[0], img) for img in full.images)


def test_min_scale_reaches_both_data_paths(tmp_path, monkeypatch):
    """``data.min_scale`` sets the crop area of the DataLoader path's RandomResizedCrop and of the resident path."""
    from ssl_rep.data import batched
    from ssl_rep.train.data import choose_transform
    cfg = load_config("simclr_digits", ["data.min_scale=0.4"])
    crop = choose_transform(cfg, 8, "simclr", 2)[0].transform.transforms[0]
    assert crop.scale == (0.4, 1.0)
    assert choose_transform(load_config("simclr_digits"), 8, "simclr", 2)[0].transform.transforms[0].scale == (0.08, 1.0)
    seen, original = [], batched.resized_crop_flip
    monkeypatch.setattr(batched, "resized_crop_flip", lambda x, size, gen, min_scale=0.08:
                        seen.append(min_scale) or original(x, size, gen, min_scale))
    train(load_config("simclr_digits", [*FAST, "data.min_scale=0.4", "data.resident=on", "trainer.max_steps=2",
                                        "data.eval_split=null", f"out_dir={tmp_path}"]), progress=False)
    assert seen and set(seen) == {0.4}


def test_resident_crop_areas_lie_between_min_scale_and_one():
    """The resident path's crops: on a coordinate ramp (x in channel 0, y in channel 1) each view's value range is its
    crop's width and height, so their product is the crop's area, which must lie in [min_scale, 1]."""
    from ssl_rep.data.batched import resized_crop_flip
    side, size = 128, 32
    ramp = (torch.arange(side) + 0.5) / side
    x = torch.stack((ramp.expand(side, side), ramp[:, None].expand(side, side))).expand(2048, 2, side, side)
    gen = torch.Generator().manual_seed(0)
    for min_scale in (0.08, 0.5):
        out = resized_crop_flip(x, size, gen, min_scale).flatten(2)
        extent = (out.amax(2) - out.amin(2)) * size / (size - 1)   # sample points span (size - 1) / size of a crop
        area = extent.prod(dim=1)
        assert area.min() >= min_scale * 0.95 and area.max() <= 1.0
        assert area.quantile(0.02) <= min_scale * 1.3   # the lower bound is reached, not just respected
        assert area.median() < (1 + min_scale) / 2 + 0.1 and area.median() > min_scale


# ------------------------------------------------------------------ logs and compile
def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    train(load_config("supervised_digits", [f"out_dir={out}", "trainer.max_steps=6", *FAST]), progress=False)
    acc = event_accumulator.EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert {"loss", "lr", "images_per_s", "acc"} <= set(acc.Tags()["scalars"])
    logged = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")}
    events = {e.step: e.value for e in acc.Scalars("loss")}
    assert events.keys() == logged.keys() and all(events[s] == pytest.approx(logged[s], rel=1e-5) for s in logged)


def test_metrics_are_logged_without_per_step_device_reads(tmp_path):
    """Method logs are 0-d tensors; the loop reads them only at logging steps, and every value in
    metrics.jsonl is a plain number."""
    out = tmp_path / "run"
    method = ssl_rep.methods.create_method("simclr", ssl_rep.create_encoder("resnet20"))
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    _, logs = method((views, torch.zeros(8, dtype=torch.long)))
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in logs.values())
    train(load_config("simclr_digits", [f"out_dir={out}", "trainer.max_steps=5", "trainer.log_every=2",
                                        *FAST[:2], "data.batch_size=32"]), progress=False)
    lines = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2, 4, 5]
    assert all(isinstance(v, (int, float)) for r in lines for v in r.values())


def test_progress_lines_show_the_loss_of_their_step(tmp_path, capsys):
    """Non-interactive runs print periodic lines; on CPU the deferred loss is already on the host, so every line
    (the first included) shows a number, the same as metrics.jsonl's for that step."""
    out = tmp_path / "run"
    train(load_config("ae_digits", [f"out_dir={out}", "trainer.max_steps=4", "trainer.log_every=1", *FAST[:2]]),
          progress=False)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(printed) == 4 and "nan" not in " ".join(printed)
    logged = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")}
    for line in printed:
        fields = line.split()
        assert float(fields[fields.index("loss") + 1]) == pytest.approx(logged[int(fields[1].split("/")[0])], abs=1e-4)


@pytest.mark.slow
def test_torch_compile_trains_like_eager(tmp_path):
    runs = {}
    for mode in ("false", "true"):
        out = tmp_path / mode
        train(load_config("supervised_digits", [f"out_dir={out}", "trainer.max_steps=8", "trainer.compile=" + mode,
                                                "trainer.precision=fp32", *FAST]), progress=False)
        runs[mode] = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    print("eager", runs["false"], "compiled", runs["true"])
    assert runs["true"] == pytest.approx(runs["false"], rel=1e-2)


REFAULTS = """
import resource, sys, torch
from ssl_rep.data.host_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(12):   # what a step does with an activation above glibc's mmap threshold: allocate, fill, free
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(64, 2**20)   # 256 MiB
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del x
# the steady state: until the heap has grown to hold every place malloc puts the block, a new place faults in
# (seen: the first, second, third and fourth allocations in one process of six; never later than the fourth)
print(applied, max(faults[-6:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_step_memory_is_reused_not_faulted_in_again():
    """trainer.reuse_memory's mallopt: after the first allocation, a 256 MiB block freed and allocated again comes
    back without page faults once the heap has settled; malloc as it is (the control) faults all of its 65,536 pages
    in every time."""
    runs = {mode: subprocess.run([sys.executable, "-c", REFAULTS, mode], capture_output=True, text=True, timeout=120)
            for mode in ("keep", "as-is")}
    assert all(r.returncode == 0 for r in runs.values()), [r.stderr[-2000:] for r in runs.values()]
    (applied, kept), (_, as_is) = (runs[m].stdout.split() for m in ("keep", "as-is"))
    assert applied == "True"
    assert int(as_is) > 60_000 and int(kept) < 1_000, (kept, as_is)


@pytest.mark.parametrize("recipe", ["supervised_digits", pytest.param("simclr_digits", marks=pytest.mark.slow)])
def test_bf16_on_the_cpu_runs_in_bf16_and_trains_like_fp32(tmp_path, recipe, monkeypatch, caplog):
    """trainer.precision=bf16 reaches the CPU, and auto picks it exactly where the CPU runs bf16 in hardware (and
    channels_last exactly where it has AVX2 or AVX-512), saying what it chose: the losses differ from fp32's in the
    low bits but follow them, and the weights stay float32."""
    import ssl_rep.train.setup as setup
    runs = {}
    for precision, native, capability in (("auto", True, "AVX512"), ("auto", False, "AVX2"), ("fp32", True, "AVX512"),
                                          ("bf16", False, "DEFAULT")):
        monkeypatch.setattr(setup, "native_bf16", lambda: native)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        out = tmp_path / f"{precision}-{native}"
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ssl_rep.train"):
            cfg = load_config(recipe, [f"out_dir={out}", "trainer.max_steps=6", "trainer.device=cpu",
                                       f"trainer.precision={precision}", *FAST, "data.image_size=16",
                                       "trainer.memory_check=false", "trainer.online_probe=false"])
            assert setup.fast_formats(cfg, torch.device("cpu")) == (precision == "bf16" or (precision == "auto" and
                                                                                           native),
                                                                     capability != "DEFAULT")
            train(cfg, progress=False)
        if precision == "auto":
            picked = "bf16 + channels_last" if native else "fp32 + channels_last"
            assert f"training in {picked} on this CPU ({capability}" in caplog.text
            assert "keeping freed memory for the next step" in caplog.text
        runs[precision, native] = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
        weights = torch.load(out / "encoder.pt", map_location="cpu", weights_only=False)["state_dict"]
        assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}
    fp32 = runs["auto", False]
    assert runs["bf16", False] != fp32 and runs["auto", True] != fp32
    assert runs["bf16", False] == pytest.approx(fp32, rel=5e-2)
    assert runs["auto", True] == pytest.approx(fp32, rel=5e-2)
    assert runs["fp32", True] == pytest.approx(fp32, rel=1e-3)   # the same fp32 loop; channels_last only reorders sums


# ------------------------------------------------------------------ faults
def test_a_new_run_in_an_out_dir_holding_one_is_refused_unless_overwrite(tmp_path, capsys):
    """Starting again without --resume where a run is saved used to empty its metrics.jsonl at once and overwrite
    its checkpoints at the first save: now it is refused before any work, and nothing of the saved run changes;
    --overwrite replaces that run (its checkpoints, metrics and encoder) with the new one."""
    from ssl_rep.cli import pretrain as pretrain_cli
    from ssl_rep.train import CheckpointError

    out = tmp_path / "run"
    argv = ["ae_digits", f"out_dir={out}", "trainer.max_steps=4", "trainer.checkpoint_every=2", *FAST]
    pretrain_cli.main(argv)
    saved = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    assert out / "checkpoints" / "step_0000002.pt" in saved
    with pytest.raises(SystemExit):
        pretrain_cli.main(argv[:2] + ["trainer.max_steps=3"] + argv[3:])
    assert "already holds a run" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="--resume to continue that run, --overwrite to start again"):
        train(load_config("ae_digits", argv[1:]), progress=False)
    assert {p: p.read_bytes() for p in saved} == saved   # the saved run is untouched
    with pytest.raises(ConfigError, match="pick one"):
        train(load_config("ae_digits", argv[1:]), resume=True, overwrite=True, progress=False)

    pretrain_cli.main(["--overwrite", "ae_digits", f"out_dir={out}", "trainer.max_steps=3", *FAST])
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt", "step_0000003.pt"]   # none old
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("errno_, words", [(28, "No space left on device"), (13, "Permission denied")])
def test_failing_checkpoint_write_stops_clearly_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, errno_,
                                                                                  words):
    import ssl_rep.train.checkpoint as ckpt
    real_save, calls = torch.save, {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:   # the second checkpoint (step 4): the disk fills up halfway through
            f.write(b"partial bytes")
            raise OSError(errno_, words)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    out = tmp_path / "run"
    cfg = load_config("ae_digits", [f"out_dir={out}", "trainer.max_steps=10", "trainer.checkpoint_every=2", *FAST])
    with pytest.raises(ssl_rep.train.CheckpointError, match=f"step_0000004.pt: .*{words}.*previous checkpoint is "
                                                            "intact.*--resume"):
        train(cfg, progress=False)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt", "step_0000002.pt"]  # no temp left
    train(cfg, resume=True, progress=False)   # and the run continues once the disk has room again
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 10


def test_failing_metrics_write_stops_clearly(tmp_path, monkeypatch):
    from ssl_rep.train.metrics import MetricsLog, OutputError
    real_write = MetricsLog.write

    def write(self, record):
        if record["step"] >= 6:
            self.file = open(os.devnull, "r")   # any write now raises an OSError  # noqa: SIM115
        return real_write(self, record)

    monkeypatch.setattr(MetricsLog, "write", write)
    out = tmp_path / "run"
    with pytest.raises(OutputError, match="metrics.jsonl at step 6: .*intact.*--resume"):
        train(load_config("ae_digits", [f"out_dir={out}", "trainer.max_steps=10", "trainer.checkpoint_every=4",
                                        *FAST]), progress=False)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4


def test_out_of_memory_names_the_batch_size_and_a_smaller_one(tmp_path, monkeypatch):
    from ssl_rep.methods.autoencoder import Autoencoder

    def forward(self, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")  # what CUDA raises

    monkeypatch.setattr(Autoencoder, "forward", forward)
    cfg = load_config("ae_digits", [f"out_dir={tmp_path / 'run'}", "trainer.max_steps=4", *FAST,
                                    "trainer.memory_check=false"])   # the OOM must come from a training step
    with pytest.raises(ssl_rep.train.DeviceMemoryError, match="data.batch_size=32 .*Try data.batch_size=16"):
        train(cfg, progress=False)
    proc = subprocess.run([sys.executable, "-c", "import sys, torch; from ssl_rep.methods.autoencoder import "
                           "Autoencoder as A; A.forward = lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("
                           "'CUDA out of memory')); from ssl_rep.cli.pretrain import main; main(sys.argv[1:])",
                           "ae_digits", f"out_dir={tmp_path / 'cli'}", "trainer.max_steps=4", *FAST,
                           "trainer.memory_check=false"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "ssl-pretrain: error: out of memory on cpu at step 1 with data.batch_size=32" in proc.stderr


def test_resuming_on_a_folder_that_changed_size_says_so(tmp_path, caplog):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    opts = [f"out_dir={tmp_path / 'run'}", f"data.dataset={folder}", "data.image_size=16", *FAST,
            "data.batch_size=8", "data.eval_split=null"]
    train(load_config("ae_digits", [*opts, "trainer.max_steps=2"]), progress=False)
    for i in range(40, 48):   # eight more images arrive before the run is resumed
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="ssl_rep.train"):
        train(load_config("ae_digits", [*opts, "trainer.max_steps=3"]), resume=True, progress=False)
    assert f"resuming on {folder} with 48 training images, 40 when the run was saved" in caplog.text
