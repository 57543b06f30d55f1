"""The body of ``src.train``: one training job from a composed config to its reports (see that command).

Builds the market and the LightningModule from the Hydra config, trains with validation-based checkpoint
selection, evaluates the selected checkpoint once on the test split, and writes the run's reports beside its
checkpoints and TensorBoard logs; a failed run leaves nothing that looks like a run, and ``resume=`` continues an
interrupted one. Returns the selected model's validation Sharpe (what a sweeper optimises; never the test figure).
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from src.app.config_check import check_run, hydra_choices
from src.app.kinds import kind_of
from src.app.loggers import as_list, log_config, publish
from src.core.checkpoint import AtomicCheckpointIO
from src.core.errors import ConfigError, TradelabError
from src.core.files import atomic_write, json_safe
from src.core.utils import build, command_line, count_parameters, git_revision, one_line_errors
from src.evaluation.verdict import verdict
from src.reports.population import write_population_outputs
from src.reports.run import write_run_outputs
from src.training.callbacks import GracefulInterrupt, Interrupted
from src.training.profit_target import ProfitTarget


def _run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def _rank_zero() -> bool:
    """True except in the other processes of a DDP run (``trainer=ddp``), which write nothing of the run's own."""
    return rank_zero_only.rank == 0


def _callbacks(cfg: DictConfig, run_dir: Path) -> list[L.Callback]:
    """The configured callbacks, plus selection by validation Sharpe when none provides it (``callbacks=none``),
    plus ``last.ckpt`` at every validation (what ``resume`` continues from).

    ``last.ckpt`` is its own unmonitored checkpoint: Lightning's ``save_last=True`` writes it only when
    the monitored checkpoint improves, which would send a killed run back to its last *best* validation.
    """
    bar = cfg.trainer.get("enable_progress_bar", True)  # trainer.enable_progress_bar=false drops the bar callback
    cbs = [
        build(c)
        for k, c in (cfg.get("callbacks") or {}).items()
        if c is not None and "_target_" in c and (bar or k != "progress_bar")
    ]
    if cfg.get("curriculum"):  # its own config group (curriculum=linear|adaptive), a callback like the others
        cbs.append(build(cfg.curriculum))
    if not any(isinstance(c, ModelCheckpoint) and c.monitor == "val/sharpe" for c in cbs):
        cbs.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="best",
                monitor="val/sharpe",
                mode="max",
                save_top_k=1,
                enable_version_counter=False,
            )
        )
    for c in cbs:
        if isinstance(c, ModelCheckpoint) and c.save_last:
            raise ConfigError("callbacks: save_last is not used (train.py writes last.ckpt at every validation)")
    cbs.append(
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
        )
    )
    return cbs


@one_line_errors
def train(cfg: DictConfig) -> float:
    """Run one training job; see the module docstring."""
    run_dir = _run_dir()
    resume = bool(cfg.get("resume"))
    if resume:
        cfg = _resume_config(cfg, run_dir)
    elif (run_dir / "metrics.json").exists():
        raise ConfigError(f"{run_dir} already holds a finished run (metrics.json); refusing to overwrite it")
    try:
        check_run(cfg, {} if resume else hydra_choices())  # bad values stop here, before anything is written
        result = _train(cfg, run_dir, resume)
        if _rank_zero():
            (run_dir / "FAILED").unlink(missing_ok=True)  # an earlier attempt's failure, resumed to the end
        return result
    except Exception as e:  # a bad value, bad data, or anything unforeseen: never leave a half-written run
        if not _rank_zero() or (run_dir / "metrics.json").exists():
            raise
        if resume or any((run_dir / "checkpoints").glob("*.ckpt")):  # keep the checkpoints, mark the failure
            why = str(e) if isinstance(e, TradelabError) else f"{type(e).__name__}: {e}"
            atomic_write(run_dir / "FAILED", why + "\n")
        else:
            remove_partial_run(run_dir)  # leave nothing that looks like a run
        raise


RUN_PRODUCTS = (".hydra", "config.yaml", "run_info.json", "tb", "csv", "wandb", "checkpoints", "val_history.csv",
                "train.log")  # fmt: skip


def remove_partial_run(run_dir: Path, products: tuple[str, ...] = RUN_PRODUCTS) -> None:
    """Delete what a run that failed before its first checkpoint wrote (``products``), and the directory if that
    empties it (a directory the user named, ``hydra.run.dir=...``, keeps anything else it holds)."""
    for name in products:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink(missing_ok=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def _resume_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The configuration saved in ``run_dir``; overrides given with ``resume=`` must agree with it."""
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"resume={cfg.resume}: {run_dir} is not a run directory (no config.yaml)")
    if (run_dir / "metrics.json").exists():
        raise ConfigError(f"resume={cfg.resume}: that run has finished (metrics.json exists); nothing to resume")
    saved = OmegaConf.load(run_dir / "config.yaml")
    old_dir = str(saved.trainer.default_root_dir)

    def move(x):  # the run directory may have moved since it was written (another clone, a copy)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, list):
            return [move(v) for v in x]
        if isinstance(x, str) and (x == old_dir or x.startswith(old_dir + "/")):
            return str(run_dir) + x[len(old_dir) :]
        return x

    saved = OmegaConf.create(move(OmegaConf.to_container(saved)))
    given = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    for ov in HydraConfig.get().overrides.task if HydraConfig.initialized() else []:
        key = ov.split("=", 1)[0].lstrip("+~")
        if key == "resume" or key.startswith("hydra.") or "=" not in ov:
            continue
        now, then = OmegaConf.select(given, key), OmegaConf.select(saved, key)
        now = OmegaConf.to_container(now, resolve=True) if OmegaConf.is_config(now) else now
        then = OmegaConf.to_container(then, resolve=True) if OmegaConf.is_config(then) else then
        if now != then:
            raise ConfigError(
                f"resume={cfg.resume}: override {ov!r} disagrees with the run's saved config.yaml "
                f"({key} = {then!r}); a resumed run keeps its configuration: drop the override or start a new run"
            )
    with open_dict(saved):
        saved.resume = str(run_dir)
    return saved


def _check_device(cfg: DictConfig) -> None:
    """Refuse (or, with ``allow_cpu_fallback=true``, fall back from) a GPU accelerator on a machine without one."""
    accel = str(cfg.trainer.get("accelerator", "cpu")).lower()
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        if not cfg.get("allow_cpu_fallback"):
            raise ConfigError(
                f"trainer.accelerator={accel} but no CUDA device is available (torch {torch.__version__}); "
                "use trainer=default, or add allow_cpu_fallback=true to run on the CPU"
            )
        print("warning: no CUDA device; allow_cpu_fallback=true: training on the CPU in fp32", flush=True)
        with open_dict(cfg):
            cfg.trainer.accelerator = "cpu"
            cfg.trainer.precision = "32-true"


def _train(cfg: DictConfig, run_dir: Path, resume: bool) -> float:
    started = time.time()
    _check_device(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    data = build(cfg.env)  # a Market, or a Universe of them (env=universe)
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("hydra", "resume")])
    resolved = OmegaConf.to_container(job_cfg, resolve=True)
    population = int(cfg.get("population", 1) or 1)
    kind = kind_of(cfg.env)  # one asset, a universe or a portfolio: src/app/kinds.py
    module = kind.module_class(population)(resolved, data)
    market = module.market  # a universe's tickers end to end
    info = {
        "command": command_line(),
        "git_revision": git_revision(),
        "seed": int(cfg.seed),
        "parameters": count_parameters(module.model),
        "data": data.describe(),
        "torch": str(torch.__version__),
        "lightning": str(L.__version__),
    }
    if resume:
        first = json.loads((run_dir / "run_info.json").read_text())
        info["command"] = first["command"]
        info["resumed"] = [*first.get("resumed", []), {"command": command_line(), "git_revision": git_revision()}]
    module.hparams["run_info"] = info  # saved inside every checkpoint
    zero = _rank_zero()
    if not resume and zero:
        atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(resolved))
    if zero:
        atomic_write(run_dir / "run_info.json", json.dumps(info, indent=2) + "\n")

    logger = build(cfg.logger, _recursive_=False) if cfg.get("logger") else False  # many: a list
    callbacks = _callbacks(cfg, run_dir)
    ckpt_cb = next(c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor == "val/sharpe")
    last = Path(ckpt_cb.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    interrupt = GracefulInterrupt(last)
    trainer: L.Trainer = build(
        cfg.trainer, callbacks=[*callbacks, interrupt], logger=logger, plugins=[AtomicCheckpointIO()]
    )
    if resume and not last.is_file():
        raise ConfigError(f"resume: no {last} to continue from (the run stopped before its first checkpoint)")
    if zero:
        header = {"seed": cfg.seed, "parameters": info["parameters"], "data_sha256": market.data_hash,
                  "git_revision": info["git_revision"]}  # fmt: skip
        log_config(as_list(logger), header, resolved)
    try:
        trainer.fit(module, ckpt_path=str(last) if resume else None)
    except Interrupted as e:
        print(f"\n{e}\ncontinue with: python -m src.train resume={run_dir}\n", flush=True)
        raise SystemExit(128 + int(signal.Signals[e.signal_name])) from None
    # before test() loads the best checkpoint (and with it that checkpoint's counters and validation history,
    # which ends at that checkpoint: the selection was made among *every* check); env steps over all ranks
    env_steps = module.env_steps * trainer.world_size
    grad_steps, faults = trainer.global_step, module.faults["total"]
    val_sharpes = [float(r["sharpe"]) for r in module.val_history]

    if market.oracle is not None:  # a planted market: what the policy that knows its edge earns, after costs
        from src.evaluation.oracle import oracle_section

        info["oracle"], oracle_lines = oracle_section(market)
    if population > 1:
        out = _finish_population(module, trainer, info, run_dir, market, started, env_steps, grad_steps, faults)
        if zero:
            publish(as_list(logger), run_dir)
        return out
    reporting = [cb for cb in callbacks if hasattr(cb, "report_key")]
    reports = json_safe({cb.report_key: cb.summary() for cb in reporting})
    sections = {cb.report_key: cb.report_section() for cb in reporting}
    if market.oracle is not None:
        sections["oracle"] = oracle_lines
    best = ckpt_cb.best_model_path
    target = next((cb for cb in callbacks if isinstance(cb, ProfitTarget)), None)
    if target is not None and target.checkpoint:  # the validation that met the target is the selection
        best = target.checkpoint
    if not best:  # the budget ended before the first validation: validate the final weights
        trainer.validate(module, verbose=False)
        best = str(Path(ckpt_cb.dirpath) / "best.ckpt")
        trainer.save_checkpoint(best)
    trainer.test(module, ckpt_path=best, verbose=False)  # loaded by AtomicCheckpointIO: allow-listed, safe
    results = {"val": module.results["val"], "test": module.results["test"]}
    part = kind.report(module, market.bars_per_year)  # a universe's tickers, a portfolio's baselines and assets
    if part is not None:
        summary, sections[kind.name] = part
        info[kind.name] = json_safe(summary)
    if not zero:  # DDP: every rank evaluated the same weights; rank 0 writes the reports
        return float(results["val"]["agent"].metrics["sharpe"])
    info.update(
        {
            "best_checkpoint": str(best),
            "env_steps": env_steps,
            "gradient_steps": grad_steps,
            "processes": trainer.world_size,
            "numerical_faults": faults,
            "wall_seconds": round(time.time() - started, 1),
            **reports,
        }
    )
    atomic_write(run_dir / "run_info.json", json.dumps(info, indent=2) + "\n")
    title = f"{market.name}: agent vs {kind.benchmark} (selected on validation, test evaluated once)"
    judged = verdict(results, market.bars_per_year, val_sharpes, bars_per_day=market.bars_per_day)
    table = write_run_outputs(
        run_dir, results, info["command"], info, title, judged, sections, baselines=kind.baselines
    )
    publish(as_list(logger), run_dir)
    print(f"\n{title}\n\n{table}\n\nrun directory: {run_dir}\n", flush=True)
    return float(results["val"]["agent"].metrics["sharpe"])


def _finish_population(module, trainer, info, run_dir, market, started, env_steps, grad_steps, faults) -> float:
    """A population's test and reports: every member with its own selected weights (:mod:`src.reports.population`)."""
    if bool((module.model.best_step < 0).any()):  # the budget ended before the first validation: validate now
        trainer.validate(module, verbose=False)
    module.to(market.device)  # the trainer's teardown left the weights on the CPU; the test runs outside it
    per = module.test_members()
    sel = [float(r["val"]["agent"].metrics["sharpe"]) for r in per]
    if not _rank_zero():
        return sum(sel) / len(sel)
    info.update({"population": len(per), "seeds": module.seeds, "env_steps": env_steps, "gradient_steps": grad_steps,
                 "numerical_faults": faults, "wall_seconds": round(time.time() - started, 1)})  # fmt: skip
    atomic_write(run_dir / "run_info.json", json.dumps(info, indent=2) + "\n")
    title = (
        f"{market.name}: a population of {len(per)} agents vs buy-and-hold (each selected on validation, tested once)"
    )
    steps, history = module.model.best_step.tolist(), module.member_val_history
    text = write_population_outputs(
        run_dir, per, module.seeds, steps, history, info, market.bars_per_year, market.bars_per_day, title
    )
    print(f"\n{title}\n\n{text}\n\nrun directory: {run_dir}\n", flush=True)
    return sum(sel) / len(sel)


def with_sweep_overrides(argv: list[str]) -> list[str]:
    """Expand ``from_sweep=<sweep dir>`` into that sweep's best parameters (``best_overrides.yaml``).

    They go before the other overrides, and one the user gives again on the command line is dropped
    from them, so the command line always wins. The ``from_sweep=`` argument stays (it is recorded).
    """
    given = [a for a in argv if a.startswith("from_sweep=")]
    if not given:
        return argv
    sweep = Path(given[-1].split("=", 1)[1])
    best = sweep / "best_overrides.yaml"
    if not best.is_file():
        raise ConfigError(f"from_sweep={sweep}: no {best.name} there (is it a finished hparams_search sweep?)")
    keys = {a.split("=", 1)[0].lstrip("+~") for a in argv[1:] if "=" in a}
    extra = [o for o in OmegaConf.load(best) if str(o).split("=", 1)[0].lstrip("+~") not in keys]
    return [argv[0], *map(str, extra), *argv[1:]]
