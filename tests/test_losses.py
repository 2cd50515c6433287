import math

import pytest
import torch
import torch.nn.functional as F

from ssl_rep.methods.losses import info_nce, info_nce_logits, nt_xent


def nt_xent_reference(z0, z1, temperature):
    """Loop over the 2N anchors exactly as SimCLR's eq. 1 and Algorithm 1 write it."""
    z = torch.cat([z0, z1])
    n2 = len(z)
    losses = []
    for i in range(n2):
        j = (i + len(z0)) % n2
        sim = lambda a, b: torch.dot(z[a], z[b]) / (z[a].norm() * z[b].norm())
        numerator = torch.exp(sim(i, j) / temperature)
        denominator = sum(torch.exp(sim(i, k) / temperature) for k in range(n2) if k != i)
        losses.append(-torch.log(numerator / denominator))
    return torch.stack(losses).mean()


def info_nce_reference(pred, targets, temperature):
    losses = []
    for i in range(len(pred)):
        scores = torch.stack([torch.dot(pred[i], targets[m]) / temperature for m in range(len(targets))])
        losses.append(-(scores[i] - torch.logsumexp(scores, dim=0)))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_loop_reference_value_and_gradient(temperature):
    torch.manual_seed(0)
    z0 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    z1 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    ours = nt_xent(z0, z1, temperature)
    g_ours = torch.autograd.grad(ours, (z0, z1))
    ref = nt_xent_reference(z0, z1, temperature)
    g_ref = torch.autograd.grad(ref, (z0, z1))
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_info_nce_matches_loop_reference_value_and_gradient(temperature):
    torch.manual_seed(1)
    pred = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    ours = info_nce(pred, targets, temperature)
    ref = info_nce_reference(pred, targets, temperature)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    for a, b in zip(torch.autograd.grad(ours, (pred, targets)), torch.autograd.grad(ref, (pred, targets))):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_info_nce_logits_are_the_scores_info_nce_classifies():
    torch.manual_seed(0)
    pred, targets = torch.randn(12, 5), torch.randn(12, 5)
    logits, positive = info_nce_logits(pred, targets, 0.5)
    assert torch.allclose(logits, pred @ targets.T / 0.5) and positive.tolist() == list(range(12))
    assert F.cross_entropy(logits, positive).item() == pytest.approx(info_nce(pred, targets, 0.5).item())


def test_info_nce_scores_stay_float32_under_bf16_autocast():
    """CPC's scores are unnormalised dot products in the tens to hundreds; rounded to bf16 (8-bit mantissa) their
    differences are lost and training diverged. Under autocast the loss and its gradients still match float64."""
    torch.manual_seed(2)
    pred = (3 * torch.randn(48, 64)).requires_grad_()
    targets = (3 * torch.randn(48, 64)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = info_nce(pred, targets)
    p64, t64 = pred.detach().double().requires_grad_(), targets.detach().double().requires_grad_()
    ref = info_nce_reference(p64, t64, 1.0)
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(ref.item(), rel=1e-4)
    for a, b in zip(torch.autograd.grad(ours, (pred, targets)), torch.autograd.grad(ref, (p64, t64))):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-3)


def test_losses_at_initialisation_are_log_of_candidates():
    torch.manual_seed(0)
    m = 512
    small = lambda: 0.01 * torch.randn(m, 64)  # uninformative scores, as at random initialisation
    assert info_nce(small(), small()).item() == pytest.approx(math.log(m), rel=0.01)
    assert nt_xent(torch.randn(m, 64), torch.randn(m, 64), temperature=10.0).item() == pytest.approx(
        math.log(2 * m - 1), rel=0.01)


def test_perfect_predictions_give_near_zero_loss():
    eye = torch.eye(8) * 50
    assert info_nce(eye, eye).item() < 1e-6
    z = torch.eye(8)
    assert nt_xent(z, z, temperature=0.01).item() < 1e-6


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"must both be \(M, D\)"):
        info_nce(torch.randn(3, 4), torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"must both be \(N, D\)"):
        nt_xent(torch.randn(3, 4), torch.randn(3, 5))
