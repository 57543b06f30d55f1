"""Kill-and-resume demonstration: a run killed mid-training and resumed ends exactly where an uninterrupted one does.

Usage::

    python experiments/reliability/kill_resume.py [--signal KILL|INT|TERM] [--after 30] [-- key=value ...]

Runs ``python -m src.train`` twice with the same overrides (seed included): once uninterrupted, once sent
``--signal`` ``--after`` seconds after its first checkpoint exists, then ``python -m src.train resume=<dir>``
on the interrupted one. Compares ``metrics.json`` and ``val_history.csv`` of the two and writes
``kill_resume_<SIGNAL>.md`` to ``--out``. Exit status 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from src.core.checkpoint import load_checkpoint  # noqa: E402


def train(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--signal", default="KILL", choices=["KILL", "INT", "TERM"])
    ap.add_argument("--after", type=float, default=30.0, help="seconds after the first checkpoint")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "reliability")
    ap.add_argument("overrides", nargs="*", default=["trainer.max_steps=320"])
    args = ap.parse_args()

    base = ROOT / "outputs" / "kill_resume" / time.strftime("%Y-%m-%d_%H-%M-%S")
    full, cut = base / "uninterrupted", base / "interrupted"
    common = [*args.overrides, "trainer.enable_progress_bar=false"]
    t0 = time.time()
    if train(*common, f"hydra.run.dir={full}").wait() != 0:
        return 2
    t_full = time.time() - t0

    proc = train(*common, f"hydra.run.dir={cut}")
    while not (cut / "checkpoints" / "last.ckpt").exists() and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(args.after)
    proc.send_signal(getattr(signal, f"SIG{args.signal}"))
    code = proc.wait()
    validations = (cut / "val_history.csv").read_text().count("\n") - 1  # rows after the header
    saved_step = load_checkpoint(cut / "checkpoints" / "last.ckpt")["global_step"]
    t1 = time.time()
    resumed = train(f"resume={cut}").wait()
    t_resume = time.time() - t1
    if resumed != 0:
        return 2

    same_metrics = (full / "metrics.json").read_text() == (cut / "metrics.json").read_text()
    same_history = (full / "val_history.csv").read_text() == (cut / "val_history.csv").read_text()
    m = json.loads((cut / "metrics.json").read_text())
    max_steps = OmegaConf.load(cut / "config.yaml").trainer.max_steps
    ov = " ".join(args.overrides)
    md = f"""# Kill and resume (measured {time.strftime("%Y-%m-%d")})

```bash
python experiments/reliability/kill_resume.py --signal {args.signal} --after {args.after:g} {ov}
# which runs:
python -m src.train {ov} hydra.run.dir={full.relative_to(ROOT)}          # uninterrupted ({t_full:.0f} s)
python -m src.train {ov} hydra.run.dir={cut.relative_to(ROOT)} & # SIG{args.signal} {args.after:g} s after 1st ckpt
python -m src.train resume={cut.relative_to(ROOT)}                        # continues ({t_resume:.0f} s)
```

- The interrupted process exited with status {code} after {validations} validation(s) had been written;
  `last.ckpt` then held gradient step {saved_step} of {max_steps}. (SIGKILL cannot be caught, so the work since
  the last checkpoint is redone on resume; SIGINT/SIGTERM save at the end of the current iteration.)
- The resumed run finished; its `metrics.json` is {"**byte-identical**" if same_metrics else "**DIFFERENT**"} to the
  uninterrupted run's, and `val_history.csv` (validation Sharpe at every check) is
  {"**identical**" if same_history else "**DIFFERENT**"}.
- Test Sharpe of both: {m["test"]["agent"]["sharpe"]:.4f}; validation Sharpe of the selected checkpoint:
  {m["val"]["agent"]["sharpe"]:.4f}.
"""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"kill_resume_{args.signal}.md").write_text(md)
    print(md)
    return 0 if same_metrics and same_history else 1


if __name__ == "__main__":
    raise SystemExit(main())
