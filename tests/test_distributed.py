"""torch.distributed on the CPU (gloo): a 2-process run with batch B per process equals a 1-process run
with batch 2B (loss and gradients), with negatives gathered across processes; torchrun drives the CLI."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ssl_rep
from ssl_rep.methods import create_method

# its module-scoped fixture is costly: under pytest-xdist, every test here runs on one worker, which builds it once
pytestmark = pytest.mark.xdist_group("distributed")

B = 6


def build(name: str, global_negatives: bool = True):
    """In float64, so that summation order leaves ~1e-12 of difference and anything larger is a bug."""
    torch.manual_seed(0)
    if name == "simclr":   # GroupNorm encoder, no BatchNorm in the head: nothing couples the samples but the loss
        enc = ssl_rep.create_encoder("resnet20", norm="group")
        return create_method("simclr", enc, head_batchnorm=False, global_negatives=global_negatives).double()
    # LayerNorm patch encoder (CPC v2); per-patch jitter and flips off: the comparison needs the same patches in
    # one process and two, whose random streams differ by design
    return create_method("cpc", ssl_rep.create_encoder("resnet20"), global_negatives=global_negatives,
                         prediction_steps=3, patch_jitter=0, patch_flip=0.0).double()


def global_batch(name: str, n: int):
    g = torch.Generator().manual_seed(1)
    x = lambda size: torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)  # noqa: E731
    return ([x(32), x(32)] if name == "simclr" else x(24)), torch.zeros(n).long()   # CPC: a 5 x 5 patch grid


def local_part(batch, rank: int):
    images, labels = batch
    cut = slice(rank * B, (rank + 1) * B)
    images = [v[cut] for v in images] if isinstance(images, list) else images[cut]
    return images, labels[cut]


def method_step(name: str, global_negatives: bool, rank: int, world: int) -> dict:
    method = build(name, global_negatives)
    ddp = torch.nn.parallel.DistributedDataParallel(method, find_unused_parameters=name == "cpc")
    loss, _ = ddp(local_part(global_batch(name, world * B), rank))
    loss.backward()
    return {"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in method.named_parameters()
                                             if p.grad is not None}}


def loss_step(name: str, rank: int) -> dict:
    z1, z2 = (z[rank * B:(rank + 1) * B].clone().requires_grad_() for z in embeddings(2 * B))
    loss = loss_on(name, z1, z2)
    loss.backward()
    return {"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad}


def state_step(rank: int) -> dict:
    from ssl_rep.methods.losses import dino_center
    torch.manual_seed(0)
    moco = create_method("moco", ssl_rep.create_encoder("resnet20"), hidden_dim=16, out_dim=4, queue_size=8)
    moco._enqueue(torch.full((3, 4), float(rank + 1)))
    teacher = torch.arange(2 * 3 * 5, dtype=torch.float64).view(2, 3, 5) * (rank + 1)
    return {"queue": moco.queue.clone(), "ptr": int(moco.queue_ptr),
            "center": dino_center(torch.zeros(5, dtype=torch.float64), teacher, 0.5)}


def _worker(rank: int, world: int, init_file: str, out: str):
    """Everything the tests below compare, in one pair of processes (starting one costs seconds of imports)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {f"{name}_{g}": method_step(name, g, rank, world) for name, g in
                   (("simclr", True), ("cpc", True), ("simclr", False))}
        results.update({name: loss_step(name, rank) for name in LOSSES})
        results["state"] = state_step(rank)
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_processes")
    mp.spawn(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def reference(name: str):
    method = build(name)
    loss, _ = method(global_batch(name, 2 * B))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in method.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["simclr", "cpc"])
def test_two_processes_equal_one_process_with_the_global_batch(ranks, name):
    ranks = [r[f"{name}_True"] for r in ranks]
    ref_loss, ref_grads = reference(name)
    # the global loss is the mean of the processes' losses; DDP's averaged gradient is its gradient
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, ref_loss, rtol=1e-10, atol=1e-12)
    assert ranks[0]["grads"].keys() == ref_grads.keys()
    for key, ref in ref_grads.items():   # equal up to summation order: relative error of each tensor
        err = (ranks[0]["grads"][key] - ref).norm() / ref.norm().clamp_min(1e-30)
        assert err < 1e-8, (key, float(err))
        torch.testing.assert_close(ranks[1]["grads"][key], ranks[0]["grads"][key])


def test_local_negatives_switch_really_changes_the_loss(ranks):
    ranks = [r["simclr_False"] for r in ranks]
    ref_loss, _ = reference("simclr")
    assert abs(float((ranks[0]["loss"] + ranks[1]["loss"]) / 2) - float(ref_loss)) > 1e-3   # fewer negatives


# ------------------------------------------------------------------ batch statistics over every process
LOSSES = ("barlow_twins", "vicreg", "moco_v3")


def loss_on(name: str, z1, z2, gather: bool = True):
    from ssl_rep.methods.losses import barlow_twins_loss, moco_loss, vicreg_loss
    if name == "barlow_twins":
        return barlow_twins_loss(z1, z2, 5e-3, gather_distributed=gather)
    if name == "vicreg":
        return vicreg_loss(z1, z2, gather_distributed=gather)
    return moco_loss(z1, z2, None, 0.2, gather_distributed=gather)   # MoCo v3: in-batch keys from every process


def embeddings(n: int):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(n, 5, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", LOSSES)
def test_batch_statistics_and_keys_come_from_every_process(ranks, name):
    """Each process's loss, averaged (as DDP averages gradients), equals the loss of the global batch in one
    process, and so do the gradients (each process's share is scaled by the number of processes, which DDP's
    average undoes); with local statistics only, the loss differs."""
    ranks = [r[name] for r in ranks]
    z1, z2 = (z.clone().requires_grad_() for z in embeddings(2 * B))
    ref = loss_on(name, z1, z2)
    ref.backward()
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, ref.detach(), rtol=1e-10, atol=1e-12)
    for r in (0, 1):
        cut = slice(r * B, (r + 1) * B)
        torch.testing.assert_close(ranks[r]["g1"] / 2, z1.grad[cut], rtol=1e-9, atol=1e-12)
        if z2.grad is None:   # MoCo's keys come from the momentum encoder: no gradient
            assert ranks[r]["g2"] is None
        else:
            torch.testing.assert_close(ranks[r]["g2"] / 2, z2.grad[cut], rtol=1e-9, atol=1e-12)
    local = (loss_on(name, *(z[:B] for z in embeddings(2 * B)), gather=False)
             + loss_on(name, *(z[B:] for z in embeddings(2 * B)), gather=False)) / 2
    assert abs(local.item() - ref.item()) > 1e-3


def test_moco_queue_and_dino_centre_take_every_process(ranks):
    """Each process enqueues every process's keys (rank order, so the queues stay equal), and DINO's centre moves
    toward the teacher's mean over the global batch."""
    ranks = [r["state"] for r in ranks]
    for r in ranks:
        assert r["ptr"] == 6
        torch.testing.assert_close(r["queue"][:6], torch.tensor([1.0] * 3 + [2.0] * 3)[:, None].expand(6, 4))
    torch.testing.assert_close(ranks[0]["queue"], ranks[1]["queue"])
    base = torch.arange(2 * 3 * 5, dtype=torch.float64).view(2, 3, 5)
    expected = 0.5 * torch.cat([base, 2 * base], dim=1).mean(dim=(0, 1))
    for r in ranks:
        torch.testing.assert_close(r["center"], expected)


# ------------------------------------------------------------------ torchrun + the CLI
COMMON = ["simclr_digits", "trainer.device=cpu", "data.batch_size=16", "encoder.norm=group", "trainer.log_every=1",
          "trainer.checkpoint_every=4", "trainer.deterministic=true", "data.num_workers=0", "optim.name=adamw",
          "optim.lr=0.002", "method.head_batchnorm=false"]


def torchrun(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "ssl_rep.cli.pretrain", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, **kw)


def _logged_step(path) -> int:
    try:
        return max((json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip()), default=0)
    except (OSError, ValueError):
        return 0


def _worker_pids(pid: int) -> list[int]:
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            children += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        except OSError:
            pass
    return children


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")
def test_torchrun_kill_one_rank_then_resume_both_matches_an_uninterrupted_run(tmp_path):
    straight = torchrun([*COMMON, "trainer.max_steps=16", f"out_dir={tmp_path / 'straight'}"])
    out = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0, out[-3000:]
    assert "finished 16 steps" in out and out.count("finished") == 1   # the summary from rank 0 only
    lines = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 16 and lines[0]["epoch"] == 0   # 1437 // (16 x 2) = 44 global steps per epoch

    killed = tmp_path / "killed"
    proc = torchrun([*COMMON, "trainer.max_steps=16", f"out_dir={killed}"])
    deadline = time.time() + 240
    while _logged_step(killed / "metrics.jsonl") < 9:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    workers = _worker_pids(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)   # one rank dies; torchrun stops the other
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["step"] == 8
    resumed = torchrun([*COMMON, "trainer.max_steps=16", f"out_dir={killed}", "--resume"])
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]
    a = torch.load(tmp_path / "straight" / "encoder.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "encoder.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
