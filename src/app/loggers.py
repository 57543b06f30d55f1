"""``logger=...``: which Lightning loggers a run writes to (``conf/logger/``).

``tensorboard`` (default) and ``csv`` are Lightning's own; ``mlflow`` and ``wandb`` need their extras
(``pip install -e ".[mlflow]"``, ``".[wandb]"``); ``many`` is a list of them. Every scalar reaches each logger
(Lightning sends it); :func:`log_config` gives each the resolved config and :func:`publish` the run's
``report.md``, ``equity.png``, ``config.yaml`` and ``metrics.json`` once the test period has been evaluated.
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from src.core.errors import ConfigError
from src.core.utils import build

PUBLISHED = ("report.md", "equity.png", "config.yaml", "metrics.json")


def many(**loggers) -> list[Logger]:
    """The loggers configured under ``logger.<name>`` (each a node with its ``_target_``), in that order."""
    if not loggers:
        raise ConfigError("logger=many: give at least one logger under logger.<name>")
    return [build(node) for node in loggers.values()]


def as_list(logger) -> list[Logger]:
    """A logger setting as a list: False/None gives none, one logger itself, a list as is."""
    if not logger:
        return []
    return list(logger) if isinstance(logger, list | tuple) else [logger]


def require(module: str, extra: str) -> None:
    """A one-line error naming the extra to install when ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f'logger={extra}: the {module} package is not installed; pip install -e ".[{extra}]"')


def mlflow(tracking_uri: str, **kwargs) -> MLFlowLogger:
    """Lightning's MLflow logger; ``tracking_uri`` a local ``sqlite:///...`` store (the default) or a server."""
    require("mlflow", "mlflow")
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MLFlowLogger(tracking_uri=tracking_uri, **kwargs)


def wandb_key_set() -> bool:
    """Whether Weights & Biases has an API key here: ``WANDB_API_KEY``, or ``wandb login``'s ``~/.netrc`` entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None  # W&B reads $NETRC too
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb(mode: str | None = None, **kwargs) -> WandbLogger:
    """Lightning's W&B logger; ``mode`` null: ``WANDB_MODE`` if set, else online with a key and offline without."""
    require("wandb", "wandb")
    import wandb as wb

    mode = mode or os.environ.get("WANDB_MODE") or ("online" if wandb_key_set() else "offline")
    if mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"logger.mode: online, offline or disabled, got {mode!r}")
    if wb.run is not None:  # an earlier job of this process (a sweep) that failed: each job is its own W&B run
        wb.run.finish(exit_code=1)
    return WandbLogger(mode=mode, **kwargs)


def log_config(loggers: list[Logger], header: dict, resolved: dict) -> None:
    """The run's header and resolved config as each logger's hyper-parameters.

    MLflow and W&B get the config as nested parameters (searchable; MLflow cuts a parameter at 250 characters, so
    one JSON string would not reach it whole); TensorBoard and CSV get it as one JSON string.
    """
    for lg in loggers:
        nested = isinstance(lg, MLFlowLogger | WandbLogger)
        lg.log_hyperparams({**header, "cfg": resolved if nested else json.dumps(resolved)})


def publish(loggers: list[Logger], run_dir: Path) -> None:
    """Send the finished run's files (:data:`PUBLISHED`, those that exist) to each logger, as each keeps files."""
    files = [run_dir / name for name in PUBLISHED if (run_dir / name).is_file()]
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):  # the equity figure is already there (add_figure at the test)
            report = run_dir / "report.md"
            if report.is_file():
                lg.experiment.add_text("report", report.read_text())
                lg.experiment.flush()
        elif isinstance(lg, CSVLogger):
            dest = Path(lg.log_dir)
            if dest.resolve() != run_dir.resolve():
                dest.mkdir(parents=True, exist_ok=True)
                for f in files:
                    shutil.copy2(f, dest / f.name)
        elif isinstance(lg, MLFlowLogger):
            for f in files:
                lg.experiment.log_artifact(lg.run_id, str(f))
        elif isinstance(lg, WandbLogger):
            run = lg.experiment
            png = run_dir / "equity.png"
            if png.is_file():
                lg.log_image(key="equity", images=[str(png)])
            for f in files:  # under files/<run directory name>/: W&B keeps its own config.yaml beside
                run.save(str(f), base_path=str(run_dir.parent), policy="now")
            run.finish()  # Lightning leaves the run open; the next job of a sweep must start its own
