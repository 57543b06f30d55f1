"""Up-front checks of a run's configuration: a bad value stops the run before anything is written.

Every group's own object validates its ranges when it is built (``PPOConfig``, ``Costs``, ``build_market``,
...). What reaches a *library* instead (the optimizer's and the Trainer's keys, the LR schedule) is checked
here, and every numeric key of every group is checked for its type against the option file it comes from,
so ``env.costs.commission_bps=abc`` or ``optimizer.lr=-0.1`` is one line naming the key, never a traceback
from torch or Lightning halfway into a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.app.kinds import kind_of
from src.core.checks import mandatory, number
from src.core.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("env", "model", "algo", "optimizer", "scheduler", "curiosity", "replay", "ensemble", "curriculum")


def _leaves(node, prefix: str) -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


def _option_defaults(group: str, choice: str) -> dict:
    """The option file's own values (with its ``defaults: [base]``), as plain containers."""
    path = CONF / group / f"{choice}.yaml"
    if not path.is_file():
        return {}
    node = OmegaConf.load(path)
    merged = OmegaConf.create()
    for d in node.get("defaults", []) or []:
        if isinstance(d, str) and d not in ("_self_",):
            merged = OmegaConf.merge(merged, _option_defaults(group, d))
    body = {k: v for k, v in OmegaConf.to_container(node, resolve=False).items() if k != "defaults"}
    return OmegaConf.to_container(OmegaConf.merge(merged, body), resolve=False)


NULLABLE = {"algo.vf_clip", "algo.target_kl"}  # numbers that null switches off


def check_types(cfg: DictConfig, choices: dict[str, str]) -> None:
    """Every key whose option file holds a number must hold a number (an integer where the file has one)."""
    for group in GROUPS:
        node = cfg.get(group)
        if node is None or group not in choices or choices[group] is None:
            continue
        given = dict(_leaves(OmegaConf.to_container(node, resolve=True), group))
        for key, default in _leaves(_option_defaults(group, choices[group]), group):
            if key not in given or isinstance(default, bool) or not isinstance(default, int | float):
                continue
            if given[key] is None and key in NULLABLE:
                continue
            number(given[key], key, integer=isinstance(default, int))


_POSITIVE = {"low": 0.0, "low_open": True}
_FRACTION = {"low": 0.0, "high": 1.0, "high_open": True}

OPTIMIZER_RULES: list[tuple[Callable[[str], bool], dict, bool]] = [  # (which keys, bounds, whole numbers)
    (lambda k: k == "lr" or k.endswith("_lr"), _POSITIVE, False),
    (lambda k: k == "eps", _POSITIVE, False),
    (lambda k: k.endswith("weight_decay"), {"low": 0.0}, False),
    (lambda k: k == "momentum", _FRACTION, False),
    (lambda k: k in ("ns_steps", "block_size", "max_precondition_dim") or k.endswith("frequency"), {"low": 1.0}, True),
    (lambda k: k.endswith("_steps") or k.endswith("_step"), {"low": 0.0}, True),
]


def check_optimizer(node: DictConfig) -> None:
    """Learning rates > 0, decays >= 0, momenta and betas in [0, 1), step counts whole."""
    for key, value in OmegaConf.to_container(node, resolve=True).items():
        if key.startswith("_") or value is None or isinstance(value, bool | str):
            continue
        if key.endswith("betas"):
            if not isinstance(value, list) or len(value) != 2:
                raise ConfigError(f"optimizer.{key} must be a pair [beta1, beta2], got {value!r}")
            for i, b in enumerate(value):
                number(b, f"optimizer.{key}[{i}]", **_FRACTION)
            continue
        for match, bounds, integer in OPTIMIZER_RULES:
            if match(key):
                number(value, f"optimizer.{key}", integer=integer, **bounds)
                break


def check_run(cfg: DictConfig, choices: dict[str, str] | None = None) -> None:
    """Everything a library would otherwise reject later (or accept and misuse): see the module docstring."""
    mandatory(cfg)
    if choices:
        check_types(cfg, choices)
    number(cfg.get("seed", 0), "seed", integer=True, low=0)
    number(cfg.get("population", 1), "population", integer=True, low=1)
    if cfg.get("population_chunk") is not None:
        number(cfg.population_chunk, "population_chunk", integer=True, low=1)
    number(cfg.get("lr_scale", 1.0), "lr_scale", **_POSITIVE)
    if cfg.get("threads") is not None:
        number(cfg.threads, "threads", integer=True, low=1)
    if cfg.get("optimizer") is not None:
        check_optimizer(cfg.optimizer)
    t = cfg.get("trainer") or {}
    if t.get("max_steps") == -1:  # Lightning's "no limit": the schedules would have no length
        raise ConfigError(
            "trainer.max_steps=-1: the learning-rate schedule, replay's beta and every progress-based setting "
            "need a budget of gradient steps; set trainer.max_steps (trainer.max_time can still stop a run earlier)"
        )
    number(t.get("max_steps", 1), "trainer.max_steps", integer=True, low=1)
    vci = t.get("val_check_interval", 1)
    if vci is not None:
        number(vci, "trainer.val_check_interval", integer=True, low=1)
    s = cfg.get("scheduler") or {}
    if "warmup_steps" in s:
        number(s.warmup_steps, "scheduler.warmup_steps", integer=True, low=0)
    if "min_ratio" in s:
        number(s.min_ratio, "scheduler.min_ratio", low=0.0, high=1.0)
    kind_of(cfg.get("env")).refuse(cfg)  # what this kind of run (and a population) cannot train


def hydra_choices() -> dict[str, str]:
    """The option chosen in each config group of the running Hydra app (empty outside one)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {str(k): v for k, v in HydraConfig.get().runtime.choices.items()}
