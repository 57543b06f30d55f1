"""population=K: K independent agents in one batched model train as K separate runs would, and never mix."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import torch.optim._muon as torch_muon
from omegaconf import OmegaConf

from src.core.errors import ConfigError
from src.core.utils import build
from src.optim.batched_muon import BatchedMuon, newton_schulz
from src.train import train
from src.training.module import PPOModule
from src.training.population import PopulationModule
from tests.conftest import TINY, compose_cfg

K = 3
SEED = 5


def _resolved(cfg) -> dict:
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


class _Snapshots(L.Callback):
    """The model's weights at every validation (what a separate run's ModelCheckpoint would have kept)."""

    def __init__(self) -> None:
        self.weights: list[dict] = []

    def on_validation_end(self, trainer, module) -> None:
        self.weights.append({n: w.detach().clone() for n, w in module.model.state_dict().items()})


def _fit(module, root, max_steps: int = 8, callbacks=()):
    trainer = L.Trainer(
        default_root_dir=root,  # where validation writes val_history.csv
        accelerator="cpu",
        max_steps=max_steps,  # 2 iterations of 2 epochs x 2 minibatches
        val_check_interval=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(module)
    return module


def _population(tmp_path, *extra: str, targets=None) -> PopulationModule:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = compose_cfg([*TINY, f"population={K}", f"seed={SEED}", *extra], tmp_path)
    module = PopulationModule(_resolved(cfg), build(cfg.env))
    if targets is not None:
        module.rule.targets = targets(module.rule.targets)
    return _fit(module, tmp_path)


@pytest.fixture
def float32_newton_schulz(monkeypatch):
    """Muon's Newton-Schulz in float32 for both torch's Muon and the batched one. In torch's bfloat16, a 1e-8
    difference in a gradient (the batched forward sums in another order) can flip a rounding that the iteration
    then amplifies (its slope at 0 is 3.4 per step), so runs that agree to 1e-7 in float32 differ by ~1e-3 in
    bfloat16; the bfloat16 step itself is checked by ``test_batched_muon_is_torch_muon_for_each_member``."""
    monkeypatch.setattr(BatchedMuon, "ns_dtype", torch.float32)
    monkeypatch.setattr(
        torch_muon, "_zeropower_via_newtonschulz", lambda g, c, s, e: newton_schulz(g[None], c, s, e, torch.float32)[0]
    )


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_population_members_train_as_their_own_runs(tmp_path, optimizer, request):
    """Member k of ``population=3 seed=5`` ends with the weights, validates with the Sharpe ratios at every
    check, selects the check and earns the test result of the run ``seed=5+k``: initialisation, episodes,
    sampled actions, minibatches, value statistics, clipping, optimizer state and selection all per member."""
    if optimizer == "muon":
        request.getfixturevalue("float32_newton_schulz")
    cut = "env.episode_length=20"  # episodes cut inside a rollout: the final states valued by their own member
    pop = _population(tmp_path, f"optimizer={optimizer}", "population_chunk=2", cut)  # chunks: members 0-1, then 2
    assert pop.env_steps == K * 2 * 8 * 32 and pop.global_step == 8
    tested, selected = pop.test_members(), []
    for k in range(K):
        cfg = compose_cfg([*TINY, f"optimizer={optimizer}", f"seed={SEED + k}", cut], tmp_path)
        torch.manual_seed(SEED + k)  # what train.py's seed_everything does before building the module
        init = build(cfg.model, num_features=pop.market.num_features, window=pop.market.window,
                     action_range=tuple(float(x) for x in pop.market.position_limits)).state_dict()  # fmt: skip
        torch.manual_seed(SEED + k)
        (tmp_path / f"own{k}").mkdir()
        snaps = _Snapshots()
        own = _fit(PPOModule(_resolved(cfg), build(cfg.env)), tmp_path / f"own{k}", callbacks=[snaps])
        mine, theirs = pop.model.member_state(k), own.model.state_dict()
        for name, w in theirs.items():
            assert float((w - init[name]).abs().max()) > 1e-5, f"{name} did not train"
            torch.testing.assert_close(mine[name], w, rtol=0, atol=2e-6, msg=f"member {k}: {name}")
        own_val = [r["sharpe"] for r in own.val_history]
        assert len(own_val) == 2  # a validation after each iteration
        torch.testing.assert_close(torch.tensor([h[k] for h in pop.member_val_history]), torch.tensor(own_val),
                                   rtol=0, atol=1e-4)  # fmt: skip
        best = max(range(len(own_val)), key=lambda i: (own_val[i], -i))  # the first check of the highest Sharpe
        assert int(pop.model.best_step[k]) == own.val_history[best]["gradient_steps"]
        selected.append(best)
        own.model.load_state_dict(snaps.weights[best])  # the separate run's selected weights, tested once
        own_test = own._evaluate("test")["agent"].metrics
        pop_test = tested[k]["test"]["agent"].metrics
        for key in ("sharpe", "total_return", "max_drawdown"):
            assert pop_test[key] == pytest.approx(own_test[key], abs=1e-4), f"member {k}: test {key}"
    assert 0 in selected and 1 in selected  # some members select the first check, some the last: the test
    # results above tell the selected weights from the final ones


def test_a_member_trains_on_its_own_data_only(tmp_path):
    """Negating member 0's advantages every iteration changes member 0 and leaves every other member's weights
    bit for bit as they were: no loss, gradient norm, random draw or optimizer state is shared."""

    def perturb(targets):
        def changed(it, rewards):
            batch = targets(it, rewards)
            batch.advantages[0] = -batch.advantages[0]
            return batch

        return changed

    a = _population(tmp_path / "a")
    b = _population(tmp_path / "b", targets=perturb)
    for name in a.model.names:
        wa, wb = a.model.params()[name].detach(), b.model.params()[name].detach()
        assert not torch.equal(wa[0], wb[0]) or wa[0].numel() == 0
        assert torch.equal(wa[1:], wb[1:]), f"{name}: another member's data reached members 1..{K - 1}"


def test_batched_muon_is_torch_muon_for_each_member():
    """In torch's own bfloat16: a (K, rows, cols) stack steps exactly as K ``torch.optim.Muon`` on each matrix."""
    g = torch.Generator().manual_seed(0)
    for shape in ((8, 5), (5, 8)):
        w = torch.randn(K, *shape, generator=g)
        stacked = torch.nn.Parameter(w.clone())
        single = [torch.nn.Parameter(w[k].clone()) for k in range(K)]
        opt = BatchedMuon([stacked], lr=0.02, weight_decay=0.01)
        opts = [torch.optim.Muon([p], lr=0.02, weight_decay=0.01) for p in single]
        for _ in range(3):
            grad = torch.randn(K, *shape, generator=g)
            stacked.grad = grad.clone()
            opt.step()
            for k in range(K):
                single[k].grad = grad[k].clone()
                opts[k].step()
        assert float((stacked - w).abs().max()) > 1e-3
        for k in range(K):
            assert torch.equal(stacked[k], single[k])


def test_population_run_reports_every_member_and_their_interval(tiny_cfg, tmp_path):
    cfg = tiny_cfg(f"population={K}")
    val = train(cfg)
    run = tmp_path / "run"
    m = json.loads((run / "metrics.json").read_text())
    pop, members = m["population"], m["members"]
    assert [x["seed"] for x in members] == [0, 1, 2]
    sharpes = [x["test"]["agent"]["sharpe"] for x in members]
    assert len(set(sharpes)) == K  # independent members differ
    s = pop["test_sharpe"]
    assert s["mean"] == pytest.approx(sum(sharpes) / K) and s["low"] < s["mean"] < s["high"]
    assert pop["beat_buy_and_hold_holm"] <= pop["beat_buy_and_hold"] <= K
    assert val == pytest.approx(sum(x["val"]["agent"]["sharpe"] for x in members) / K)
    report = (run / "report.md").read_text()
    assert "Holm" in report and report.count("\n| ") >= K + 1
    info = json.loads((run / "run_info.json").read_text())
    assert info["env_steps"] == K * 2 * 8 * 32 and info["seeds"] == [0, 1, 2]


@pytest.mark.parametrize(
    "override",
    ["replay=uniform", "curiosity=rnd", "augmentation=jitter", "optimizer=shampoo", "algo.target_kl=0.02",
     "ensemble=three", "model.dropout=0.1"],
)  # fmt: skip
def test_a_population_refuses_what_it_cannot_train_per_member(tiny_cfg, tmp_path, override, capsys):
    with pytest.raises((ConfigError, SystemExit)) as e:
        train(tiny_cfg(f"population={K}", override))
    assert f"population={K}" in str(e.value) + capsys.readouterr().err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_killed_population_resumes_to_the_same_results(tmp_path):
    """Every member's streams, env generator, value statistics, optimizer state and selection survive a kill."""
    from tests.helpers import outcome, run_killed_and_resumed

    full, cut, saved = run_killed_and_resumed(tmp_path, [*TINY, f"population={K}", "trainer.max_steps=12"], at=2)
    assert len(saved["population"]["streams"]["states"]) == K
    assert outcome(full) == outcome(cut)


def test_values_of_rows_in_any_order_are_their_own_members():
    """The final states of episodes cut at different steps come in time order, not grouped by member: each row
    is valued by the member its env belongs to."""
    from src.envs.market_env import Obs
    from src.models.actor_critic import mlp_actor_critic
    from src.models.population import Population
    from src.rl.population import MemberStreams

    members = [mlp_actor_critic(3, 4, hidden=(8,), head_hidden=8) for _ in range(K)]
    pop = Population(members, MemberStreams([torch.get_rng_state()] * K))
    g = torch.Generator().manual_seed(0)
    market, position = torch.randn(7, 4, 3, generator=g), torch.rand(7, 1, generator=g)
    member = torch.tensor([2, 0, 2, 1, 2, 0, 2])
    got = pop.value(Obs(market, position, None, member))
    want = torch.stack([members[int(m)].value(Obs(market[i : i + 1], position[i : i + 1]))[0] for i, m in
                        enumerate(member)])  # fmt: skip
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_each_member_keeps_its_own_best_check_as_a_checkpoint_would(tmp_path):
    """``keep_best`` per member, with ModelCheckpoint's rule (mode max): the first check always selects, a later
    one only when strictly better (a tie keeps the earlier), a NaN Sharpe never beats a number; the weights
    kept are that member's weights at that check."""
    from src.models.population import Population
    from src.rl.population import MemberStreams

    cfg = compose_cfg(TINY, tmp_path)
    members = []
    for k in range(3):
        torch.manual_seed(k)
        members.append(build(cfg.model, num_features=4, window=8, action_range=(-1.0, 1.0)))
    pop = Population(members, MemberStreams.seeded([0, 1, 2], "cpu"))
    name = pop.names[0]

    def check(sharpes: list[float], step: int) -> list[bool]:
        with torch.no_grad():
            pop.params()[name].fill_(step)  # mark every member's weights with the step
        return pop.keep_best(torch.tensor(sharpes, dtype=torch.float64), step).tolist()

    assert check([float("nan"), 0.5, 1.0], 10) == [True, True, True]  # the first check selects, even a NaN
    assert check([-3.0, 0.5, float("nan")], 20) == [True, False, False]  # a number beats NaN; a tie keeps the first
    assert check([float("nan"), 0.7, 0.9], 30) == [False, True, False]
    assert pop.best_step.tolist() == [20, 30, 10]
    assert [float(pop.member_state(k, best=True)[name].flatten()[0]) for k in range(3)] == [20.0, 30.0, 10.0]
