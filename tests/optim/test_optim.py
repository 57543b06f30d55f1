"""Every optimizer learns; Muon orthogonalises hidden matrices only; save -> load -> step is bit-identical."""

from __future__ import annotations

import io

import pytest
import torch
from hydra.utils import instantiate

from src.envs.market_env import Obs
from src.models import mlp_actor_critic, transformer_actor_critic
from src.optim.clip import clip_grad_norm_, clipped
from src.optim.muon import MuonAdamW, hidden_matrices
from tests.conftest import CONF, compose_cfg

OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))


def _model():
    torch.manual_seed(0)
    return transformer_actor_critic(num_features=10, window=12, d_model=16, n_heads=2, n_layers=2, d_ff=32)


def _batch():
    g = torch.Generator().manual_seed(1)
    x = Obs(torch.randn(64, 12, 10, generator=g), torch.zeros(64, 1))
    return x, torch.randn(64, generator=g)


def _opt(name: str, model, tmp_path):
    cfg = compose_cfg([f"optimizer={name}"], tmp_path)
    opt = instantiate(cfg.optimizer)(model)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.01 * s))


def _steps(model, opt, sched, n: int) -> list[float]:
    x, y = _batch()
    out = []
    for _ in range(n):
        loss = (model.value(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        out.append(float(loss.detach()))
    return out


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_lowers_a_fixed_regression_loss(name, tmp_path):
    model = _model()
    losses = _steps(model, *_opt(name, model, tmp_path), 100)
    assert losses[-1] < 0.6 * losses[0], losses[::10]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_save_load_next_step_is_bit_identical(name, tmp_path):
    model = _model()
    opt, sched = _opt(name, model, tmp_path)
    _steps(model, opt, sched, 30)  # past Shampoo's start_preconditioning_step
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    _steps(model, opt, sched, 5)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    resumed = _model()
    resumed.load_state_dict(saved["model"])
    opt2, sched2 = _opt(name, resumed, tmp_path)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    _steps(resumed, opt2, sched2, 5)
    for a, b in zip(uninterrupted, resumed.parameters(), strict=True):
        assert torch.equal(a, b.detach())


def test_muon_update_of_a_hidden_matrix_is_near_orthogonal(tmp_path):
    """A full-rank gradient with singular values spread 10x becomes an update with near-equal ones."""
    model = _model()
    opt, _ = _opt("muon", model, tmp_path)
    w = model.encoder.blocks[0].mlp[0].weight  # (32, 16)
    g = torch.Generator().manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(32, 16, generator=g))
    v, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    w.grad = u @ torch.diag(torch.linspace(0.1, 1.0, 16)) @ v.T
    before = w.detach().clone()
    opt.step()
    decay = 1 - opt.muon.param_groups[0]["lr"] * opt.muon.param_groups[0]["weight_decay"]
    sv = torch.linalg.svdvals(w.detach() - before * decay)  # the update, decoupled weight decay removed
    assert sv.max() / sv.min() < 2.0, sv  # Newton-Schulz: singular values in about [0.7, 1.2] x scale
    assert torch.linalg.svdvals(w.grad).max() / torch.linalg.svdvals(w.grad).min() > 9.9


def test_muon_gets_only_hidden_matrices(tmp_path):
    model = _model()
    opt, _ = _opt("muon", model, tmp_path)
    assert isinstance(opt, MuonAdamW)
    muon_ids = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    adamw_ids = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    assert not muon_ids & adamw_ids and muon_ids | adamw_ids == {id(p) for p in model.parameters()}
    for name, p in model.named_parameters():
        hidden = name.startswith("encoder.blocks.") and p.ndim == 2
        assert (id(p) in muon_ids) == hidden, name
    assert id(model.encoder.inp.weight) in adamw_ids and id(model.actor[-1].weight) in adamw_ids
    mats, _ = hidden_matrices(mlp_actor_critic(num_features=10, window=12))
    assert len(mats) == 1 and all(p.ndim == 2 for p in mats)  # the MLP: its second hidden layer


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_training_runs_with_every_optimizer(name, tiny_cfg, tmp_path):
    from src.train import train

    train(tiny_cfg(f"optimizer={name}"))
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert f"_target_: src.optim.factories.{name}" in (tmp_path / "run" / "config.yaml").read_text()


def _with_grads(*grads):
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    return params


def test_clip_grad_norm_by_hand():
    # gradients (3, 4) and (12,): joint norm sqrt(9 + 16 + 144) = 13
    params = _with_grads(torch.tensor([3.0, 4.0]), torch.tensor([12.0]))
    norm = clip_grad_norm_(params, max_norm=6.5)
    assert float(norm) == pytest.approx(13.0)
    scale = 6.5 / (13.0 + 1e-6)
    assert torch.allclose(params[0].grad, torch.tensor([3.0, 4.0]) * scale)
    assert torch.allclose(params[1].grad, torch.tensor([12.0]) * scale)
    # under the limit: untouched (the cap at 1), and parameters without a gradient are skipped
    params = [*_with_grads(torch.tensor([0.3, 0.4])), torch.nn.Parameter(torch.ones(2))]
    assert float(clip_grad_norm_(params, max_norm=1.0)) == pytest.approx(0.5)
    assert torch.equal(params[0].grad, torch.tensor([0.3, 0.4]))
    assert params[1].grad is None


def test_clip_grad_norm_matches_torch_and_flags_non_finite():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(64, 300, generator=g), torch.randn(64, generator=g), torch.randn(2, 64, generator=g)]
    ours, theirs = _with_grads(*grads), _with_grads(*grads)
    n1 = clip_grad_norm_(ours, 0.5)
    n2 = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert torch.allclose(n1, n2)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=0)
    bad = _with_grads(torch.tensor([1.0, float("nan")]))
    assert not bool(torch.isfinite(clip_grad_norm_(bad, 1.0)))


def test_clipped_is_the_pure_form_of_clip_grad_norm():
    # by hand: (3, 4) and (12,) have joint norm 13; max 6.5 halves them (to 1e-6)
    out, norm = clipped([torch.tensor([3.0, 4.0]), torch.tensor([12.0])], 6.5)
    assert float(norm) == pytest.approx(13.0)
    assert torch.allclose(out[0], torch.tensor([1.5, 2.0])) and torch.allclose(out[1], torch.tensor([6.0]))
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(64, 300, generator=g), torch.randn(64, generator=g)]
    params = _with_grads(*grads)
    n1 = clip_grad_norm_(params, 0.5)
    before = [x.clone() for x in grads]
    out, n2 = clipped(grads, 0.5)
    torch.testing.assert_close(n2, n1)
    for a, p in zip(out, params, strict=True):
        torch.testing.assert_close(a, p.grad)
    assert all(torch.equal(a, b) for a, b in zip(grads, before, strict=True))  # the inputs stay as they were
