"""Scale-out on existing engines (issue 8): Lightning DDP with 2 CPU processes, Hydra's joblib launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, TINY, compose_cfg


def _train_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.train", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    """``trainer=ddp``: 2 gloo processes, each its own episodes; gradients all-reduced, so weights stay equal."""
    run = tmp_path / "run"
    args = [*TINY, "trainer=ddp", "trainer.max_steps=12", "threads=1", "~logger", f"hydra.run.dir={run}"]
    args += ["+callbacks.w._target_=tests.helpers.SaveWeights", f"+callbacks.w.out={tmp_path}"]
    proc = _train_cli(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert not torch.equal(w0.pop("env_t"), w1.pop("env_t"))  # each rank walked its own episodes
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks disagree on {k}"
    info = json.loads((run / "run_info.json").read_text())
    assert info["processes"] == 2
    assert info["gradient_steps"] == 12
    assert info["env_steps"] == 2 * 8 * 32 * 3  # 3 iterations of 8 envs x 32 steps on each of 2 ranks
    assert (run / "metrics.json").is_file() and (run / "report.md").is_file()


@pytest.mark.slow
def test_joblib_launcher_runs_two_trials_in_their_own_processes(tmp_path):
    """``hydra/launcher=local`` (joblib): two seeds of a multirun run in two worker processes, both complete."""
    sweep, pids = tmp_path / "sweep", tmp_path / "pids"
    pids.mkdir()
    args = ["-m", "hydra/launcher=local", "seed=0,1", *TINY, "threads=1", "~logger", f"hydra.sweep.dir={sweep}"]
    args += ["+callbacks.p._target_=tests.helpers.RecordProcess", f"+callbacks.p.out={pids}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "Joblib" in out  # Hydra names the launcher it used
    workers = {int(p.name[3:]) for p in pids.iterdir()}
    assert len(workers) == 2 and proc.pid not in workers
    runs = sorted(sweep.glob("*_s*/metrics.json"))
    assert [r.parent.name for r in runs] == ["0_synthetic_s0", "1_synthetic_s1"]
    assert [json.loads((r.parent / "run_info.json").read_text())["seed"] for r in runs] == [0, 1]


@pytest.mark.slow
def test_compiled_ppo_loss_equals_eager_loss_and_gradients(tmp_path):
    """``compile=true`` runs the same PPO minibatch loss through torch.compile: same loss, terms and gradients."""
    import torch._dynamo

    from src.core.utils import build
    from src.envs.market_env import Obs
    from src.training.module import PPOModule

    small_mlp = ["model=mlp", "model.hidden=[16,16]", "model.head_hidden=16"]  # a transformer compiles 4x longer
    cfg = compose_cfg([o for o in TINY if not o.startswith("model.")] + small_mlp + ["compile=true"], tmp_path)
    market = build(cfg.env)
    module = PPOModule(cfg, market)
    assert module._loss is not module._loss_eager
    g = torch.Generator().manual_seed(3)
    n = 48
    obs = Obs(torch.randn(n, market.window, market.num_features, generator=g), torch.rand(n, 1, generator=g) * 2 - 1)
    actions = torch.rand(n, generator=g) * 1.8 - 0.9
    with torch.no_grad():
        dist, values = module.model(obs)
        old_logp = dist.log_prob(actions) + 0.05 * torch.randn(n, generator=g)  # ratios off 1: the clip is active
    batch = (obs, actions, old_logp, values + 0.1, torch.randn(n, generator=g), torch.randn(n, generator=g), None, None)
    params = list(module.model.parameters())

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    results = {}
    for name, fn in (("eager", module._loss_eager), ("compiled", module._loss)):
        loss, terms = fn(*batch)
        results[name] = (loss.detach(), {k: v.detach() for k, v in terms.items()}, torch.autograd.grad(loss, params))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did go through the compiler
    (l0, t0, g0), (l1, t1, g1) = results["eager"], results["compiled"]
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    assert t1.keys() == t0.keys()
    for k in t0:
        torch.testing.assert_close(t1[k], t0[k], rtol=1e-5, atol=1e-6, msg=k)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert float(torch.cat([x.reshape(-1) for x in g0]).abs().sum()) > 0


@pytest.mark.slow
def test_compile_true_trains_the_same_weights_as_eager(tmp_path):
    """``compile=true`` end to end: the compiled env step, the compiled behaviour policy (same samples) and the fused
    update (loss, gradients and clip in one graph, then the optimizer through Lightning) move the weights as eager
    training does, to float rounding, with Lightning's step count intact."""
    import lightning as L

    from src.core.utils import build
    from src.training.module import PPOModule

    small_mlp = ["model=mlp", "model.hidden=[16,16]", "model.head_hidden=16"]
    weights = {}
    for flag in ("false", "true"):
        cfg = compose_cfg([o for o in TINY if not o.startswith("model.")] + small_mlp + [f"compile={flag}"], tmp_path)
        torch.manual_seed(0)
        module = PPOModule(cfg, build(cfg.env))
        init = {k: v.clone() for k, v in module.model.state_dict().items()}
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=8,  # 2 iterations of 2 epochs x 2 minibatches
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module)
        assert trainer.global_step == 8 and module.env_steps == 2 * 8 * 32
        assert module._fuses_update() is (flag == "true") and (module._act is not None) is (flag == "true")
        weights[flag] = (init, module.model.state_dict())
    (init0, w0), (init1, w1) = weights["false"], weights["true"]
    for k in w0:
        assert torch.equal(init0[k], init1[k])
        moved = (w0[k] - init0[k]).abs().max()
        assert moved > 1e-4, f"{k} did not train"
        torch.testing.assert_close(w1[k], w0[k], rtol=0, atol=float(moved) * 1e-3, msg=k)
