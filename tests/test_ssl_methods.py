"""BYOL, MoCo v2/v3, SimSiam, Barlow Twins, VICReg and DINO: each loss against a naive float64 reference written
here from the paper (values and gradients), the momentum teacher, and each method training through the trainer."""
import math

import pytest
import torch

import ssl_rep
from ssl_rep.methods import create_method
from ssl_rep.methods.losses import barlow_twins_loss, byol_loss, dino_loss, moco_loss, vicreg_loss
from ssl_rep.methods.momentum import cosine_momentum, ema_update, momentum_copy
from ssl_rep.train import load_checkpoint, load_config, train
from ssl_rep.train.config import ConfigError
from ssl_rep.train.data import build_train_dataset
from ssl_rep.train.loaders import use_resident

NEW = ["byol", "moco", "mocov3", "simsiam", "barlow_twins", "vicreg", "dino"]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64, requires_grad=True)


def close_with_grads(ours, ref, inputs):
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)
    for a, b in zip(torch.autograd.grad(ours, inputs, allow_unused=True),
                    torch.autograd.grad(ref, inputs, allow_unused=True)):
        if b is None:
            assert a is None or torch.all(a == 0)
        else:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------ references, one number at a time

def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def byol_reference(p, z):
    z = z.detach()
    return sum(2 - 2 * torch.dot(p[i], z[i]) / (p[i].norm() * z[i].norm()) for i in range(len(p))) / len(p)


def standardised_column(z, j, eps=1e-5):
    col = z[:, j]
    mean = sum(col) / len(col)
    var = sum((v - mean) ** 2 for v in col) / len(col)
    return [(v - mean) / torch.sqrt(var + eps) for v in col]


def barlow_reference(z1, z2, lam):
    n, d = z1.shape
    a = [standardised_column(z1, j) for j in range(d)]
    b = [standardised_column(z2, j) for j in range(d)]
    loss = 0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss = loss + ((1 - c) ** 2 if i == j else lam * c ** 2)
    return loss


def vicreg_reference(z1, z2, lam=25.0, mu=25.0, nu=1.0, eps=1e-4):
    n, d = z1.shape
    sim = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def v(z):
        total = 0
        for j in range(d):
            mean = sum(z[:, j]) / n
            var = sum((z[k, j] - mean) ** 2 for k in range(n)) / (n - 1)
            total = total + torch.clamp(1 - torch.sqrt(var + eps), min=0)
        return total / d

    def c(z):
        means = [sum(z[:, j]) / n for j in range(d)]
        total = 0
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov = sum((z[k, i] - means[i]) * (z[k, j] - means[j]) for k in range(n)) / (n - 1)
                    total = total + cov ** 2
        return total / d

    return lam * sim + mu * (v(z1) + v(z2)) / 2 + nu * (c(z1) + c(z2))


def dino_reference(student, teacher, center, ts, tt):
    total, pairs = 0, 0
    for t in range(teacher.shape[0]):
        for s in range(student.shape[0]):
            if s == t:
                continue
            for i in range(student.shape[1]):
                q = torch.softmax((teacher[t, i].detach() - center) / tt, dim=0)
                logp = torch.log_softmax(student[s, i] / ts, dim=0)
                total = total - sum(q[k] * logp[k] for k in range(len(q))) / student.shape[1]
            pairs += 1
    return total / pairs


def moco_reference(q, k, queue, temperature):
    k = k.detach()
    losses = []
    for i in range(len(q)):
        qi = q[i] / q[i].norm()
        pos = torch.dot(qi, k[i] / k[i].norm()) / temperature
        if queue is not None:
            negs = [torch.dot(qi, m / m.norm()) / temperature for m in queue.detach()]   # the queue is constant
        else:
            negs = [torch.dot(qi, k[j] / k[j].norm()) / temperature for j in range(len(k)) if j != i]
        losses.append(-pos + torch.logsumexp(torch.stack([pos, *negs]), dim=0))
    return torch.stack(losses).mean()


def test_byol_loss_matches_reference_and_stops_the_target_gradient():
    p, z = rand(5, 4, seed=1), rand(5, 4, seed=2)
    close_with_grads(byol_loss(p, z), byol_reference(p, z), (p, z))
    assert torch.autograd.grad(byol_loss(p, z), z, allow_unused=True)[0] is None
    assert byol_loss(p, p).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("lam", [5e-3, 0.5])
def test_barlow_twins_loss_matches_reference(lam):
    z1, z2 = rand(6, 3, seed=3), rand(6, 3, seed=4)
    close_with_grads(barlow_twins_loss(z1, z2, lam, gather_distributed=False), barlow_reference(z1, z2, lam), (z1, z2))


def test_vicreg_loss_matches_reference():
    z1, z2 = rand(7, 3, seed=5), 0.1 * rand(7, 3, seed=6)   # small z2: its variance term is active
    close_with_grads(vicreg_loss(z1, z2, gather_distributed=False), vicreg_reference(z1, z2), (z1, z2))
    w = dict(sim_weight=1.0, var_weight=2.0, cov_weight=3.0)
    close_with_grads(vicreg_loss(z1, z2, **w, gather_distributed=False), vicreg_reference(z1, z2, 1.0, 2.0, 3.0),
                     (z1, z2))


@pytest.mark.parametrize("views", [2, 3])
def test_dino_loss_matches_reference(views):
    student, teacher = rand(views, 4, 5, seed=7), rand(2, 4, 5, seed=8)
    center = torch.linspace(-0.2, 0.3, 5, dtype=torch.float64)
    close_with_grads(dino_loss(student, teacher, center, 0.1, 0.04),
                     dino_reference(student, teacher, center, 0.1, 0.04), (student, teacher))


def test_moco_loss_matches_reference_with_a_queue_and_in_batch():
    q, k, queue = rand(4, 3, seed=9), rand(4, 3, seed=10), rand(6, 3, seed=11)
    close_with_grads(moco_loss(q, k, queue, 0.2), moco_reference(q, k, queue, 0.2), (q, k, queue))
    close_with_grads(moco_loss(q, k, None, 0.5, gather_distributed=False), moco_reference(q, k, None, 0.5), (q, k))


# ------------------------------------------------------------------ the momentum teacher

def test_cosine_momentum_runs_from_base_to_one():
    values = [cosine_momentum(s, 100, 0.996) for s in range(101)]
    assert values[0] == pytest.approx(0.996) and values[-1] == pytest.approx(1.0)
    assert values[50] == pytest.approx(0.998) and all(a <= b for a, b in zip(values, values[1:]))


def test_ema_update_is_the_moving_average_of_every_parameter():
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    teacher = momentum_copy(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, 0.9)
    for old, new, s in zip(before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * s)


# ------------------------------------------------------------------ the methods through the trainer

def small(recipe: str, out, steps=4, extra=()):
    return load_config(f"{recipe}_digits", [f"out_dir={out}", "data.batch_size=16", "data.num_workers=0",
                                           f"trainer.max_steps={steps}", "trainer.log_every=1", "trainer.device=cpu",
                                           "trainer.memory_check=false", *extra])


@pytest.mark.parametrize("recipe", NEW)
def test_each_method_trains_and_its_teacher_follows(tmp_path, recipe):
    """A few real steps from the recipe: finite losses, the online probe fed, the encoder moved, and a
    momentum teacher (where there is one) strictly between where it started and the student."""
    cfg = small(recipe, tmp_path)
    torch.manual_seed(cfg.seed)
    start = {k: v.clone() for k, v in create_method(cfg.method.name, ssl_rep.create_encoder("resnet20"),
                                                    **cfg.method.options).state_dict().items()}
    result = train(cfg, progress=False)
    assert result.steps == 4 and math.isfinite(result.final_loss)
    end = load_checkpoint(result.checkpoint)["model"]
    assert not torch.equal(start["encoder.conv1.weight"], end["encoder.conv1.weight"])   # the encoder trained
    teachers = [k for k in end if k.split(".")[0] in ("target", "key_encoder", "teacher")
                and k.endswith("encoder.conv1.weight")]
    if recipe == "moco":
        assert float(end["momentum"]) == pytest.approx(0.99)   # v2: fixed
    elif recipe in ("byol", "mocov3", "dino"):
        # after_step ran with the run's step count: the cosine schedule has reached 1 at the last step
        assert float(end["tau" if recipe == "byol" else "momentum"]) == pytest.approx(1.0)
    if recipe in ("byol", "moco", "mocov3", "dino"):
        (key,) = teachers
        # the teacher started as the student's copy (the same seeded init) and lags it: it moved, not all the way
        assert not torch.equal(end[key], start[key]) and not torch.equal(end[key], end["encoder.conv1.weight"])
    else:
        assert not teachers


def test_moco_v2_queue_holds_the_newest_keys_and_wraps(tmp_path):
    enc = ssl_rep.create_encoder("resnet20")
    m = create_method("moco", enc, hidden_dim=32, out_dim=8, queue_size=10)
    views = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]
    for _ in range(3):   # 12 keys into 10 slots
        m((views, torch.zeros(4, dtype=torch.long)))
    assert int(m.queue_ptr) == 2
    with torch.no_grad():
        keys = m.key_encoder["projector"](m.key_encoder["encoder"](torch.cat(views)))   # BatchNorm over both views
        k = torch.nn.functional.normalize(keys[4:], dim=1)
    torch.testing.assert_close(m.queue[[8, 9, 0, 1]], k)   # the last batch's keys, wrapping round
    m.eval()
    m((views, torch.zeros(4, dtype=torch.long)))
    assert int(m.queue_ptr) == 2   # evaluation never enqueues


def test_moco_v2_queue_takes_bf16_keys_and_batches_larger_than_itself():
    """Under bf16 autocast (the default on GPUs and bf16 CPUs) the keys arrive as bf16 and are stored as the
    queue's float32; a batch of more keys than the queue holds keeps the newest ``queue_size`` of them."""
    m = create_method("moco", ssl_rep.create_encoder("resnet20"), hidden_dim=32, out_dim=8, queue_size=6)
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m((views, torch.zeros(8, dtype=torch.long)))
    assert m.queue.dtype == torch.float32 and int(m.queue_ptr) == 0   # 8 keys into 6 slots: the last 6, from 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        keys = m.key_encoder["projector"](m.key_encoder["encoder"](torch.cat(views)))
    k = torch.nn.functional.normalize(keys[8:], dim=1)[-6:].float()
    torch.testing.assert_close(m.queue, k, atol=1e-2, rtol=0)


def test_dino_centre_follows_the_teachers_mean():
    torch.manual_seed(0)
    m = create_method("dino", ssl_rep.create_encoder("resnet20"), hidden_dim=32, bottleneck_dim=8, out_dim=16,
                      center_momentum=0.5)
    x = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]
    with torch.no_grad():
        t = m.teacher["head"](m.teacher["encoder"](torch.cat(x)))
    m((x, torch.zeros(4, dtype=torch.long)))
    torch.testing.assert_close(m.center, 0.5 * t.mean(0), rtol=1e-4, atol=1e-6)


def test_dino_multi_crop_gives_the_student_small_views_and_the_teacher_none(tmp_path):
    """method.local_crops=2: the dataset yields 2 global views at the image size, cropped from 0.4-1 of the area,
    then 2 local ones at 96/224 of it from 0.05-0.4; the teacher's encoder sees only the global views, the
    student's every view; data.resident=on is refused (batched augmentation draws one size); it trains."""
    cfg = small("dino", tmp_path, extra=["method.local_crops=2", "method.hidden_dim=32", "method.bottleneck_dim=8",
                                         "method.out_dim=16", "trainer.memory_check=true"])
    ds, size, _, _ = build_train_dataset(cfg)
    views, _ = ds[0]
    assert size == 32 and [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 14, 14)] * 2
    crops = [next(op for op in t.transforms if type(op).__name__ == "RandomResizedCrop")
             for t in (ds.transform.global_transform, ds.transform.local_transform)]
    assert [c.scale for c in crops] == [(0.4, 1.0), (0.05, 0.4)]
    assert not use_resident(cfg, ds, "simclr")
    with pytest.raises(ConfigError, match="multi-crop"):
        use_resident(load_config("dino_digits", ["method.local_crops=2", "data.resident=on"]), ds, "simclr")

    m = create_method("dino", ssl_rep.create_encoder("resnet20"), hidden_dim=32, bottleneck_dim=8, out_dim=16,
                      local_crops=2)
    seen = {"student": [], "teacher": []}
    m.encoder.register_forward_hook(lambda mod, inp, out: seen["student"].append(inp[0].shape[-1]))
    m.teacher["encoder"].register_forward_hook(lambda mod, inp, out: seen["teacher"].append(inp[0].shape[-1]))
    batch = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.randn(4, 3, 14, 14), torch.randn(4, 3, 14, 14)]
    loss, _ = m((batch, torch.zeros(4, dtype=torch.long)))
    assert seen == {"student": [32, 14], "teacher": [32]} and torch.isfinite(loss)
    with pytest.raises(ValueError, match="needs 4 views"):
        m((batch[:2], torch.zeros(4, dtype=torch.long)))

    result = train(cfg, progress=False)
    assert result.steps == 4 and math.isfinite(result.final_loss)


def test_dino_teacher_temperature_warms_up_linearly_and_is_saved():
    m = create_method("dino", ssl_rep.create_encoder("resnet20"), hidden_dim=32, bottleneck_dim=8, out_dim=16,
                      teacher_temp=0.07, warmup_teacher_temp=0.04, teacher_temp_warmup=0.5)
    assert float(m.teacher_temp) == pytest.approx(0.04)
    temps = []
    for step in range(1, 11):
        m.after_step(step, 10)
        temps.append(float(m.teacher_temp))
    assert temps == pytest.approx([0.046, 0.052, 0.058, 0.064, 0.07, 0.07, 0.07, 0.07, 0.07, 0.07])
    assert "teacher_temp" in m.state_dict()   # a resumed run carries on from the saved temperature
    fixed = create_method("dino", ssl_rep.create_encoder("resnet20"), hidden_dim=32, bottleneck_dim=8, out_dim=16)
    fixed.after_step(1, 10)
    assert float(fixed.teacher_temp) == pytest.approx(0.04)
