"""The project installs into today's stack without downgrading it (issue 23).

1. The environment `make install` built has Optuna >= 4 and SQLAlchemy >= 2.
2. With optuna, sqlalchemy and alembic upgraded to their newest releases (what a user who keeps current has), pip,
   asked to install the project again, would change none of them (an upper pin anywhere would show here).
3. pip can resolve the project together with the oldest supported Optuna (4.0) and SQLAlchemy 2.0, so a user's
   environment holding those keeps them.
Run by .ci/run (it needs the package index); exits 1 naming what is wrong.
"""

import json
import subprocess
import sys
from importlib.metadata import version

from packaging.version import Version

WATCHED = {"optuna", "sqlalchemy", "alembic"}


def would_install(*requirements: str) -> dict[str, str] | None:
    """What ``pip install --dry-run`` would install (name -> version) for ``requirements``; None if unresolvable."""
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", *requirements],
        capture_output=True,
        text=True,
    )
    if res.returncode:
        print(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "pip failed", file=sys.stderr)
        return None
    out = res.stdout
    report = json.loads(out[out.index("{") :])
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}


def main() -> int:
    errors = []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-U", *sorted(WATCHED)], check=True)
    have = {name: Version(version(name)) for name in ("optuna", "sqlalchemy", "alembic")}
    print("installed:", ", ".join(f"{k} {v}" for k, v in have.items()))
    if have["optuna"] < Version("4"):
        errors.append(f"optuna {have['optuna']} < 4")
    if have["sqlalchemy"] < Version("2"):
        errors.append(f"sqlalchemy {have['sqlalchemy']} < 2")
    again = would_install("-e", ".[dev]")
    if again is None:
        errors.append("pip cannot resolve the project in this environment")
    else:
        again = {k: v for k, v in again.items() if k in WATCHED}
        print("reinstalling the project would change:", again or "nothing watched")
        errors += [f"pip install -e . would replace {k} {have[k]} by {v}" for k, v in again.items()]
    oldest = would_install("-e", ".", "optuna==4.0.0", "sqlalchemy>=2,<2.1")
    if oldest is None:
        errors.append("pip cannot resolve the project with optuna 4.0.0 and SQLAlchemy 2.0")
    else:
        print("with optuna 4.0.0 and SQLAlchemy 2.0 pinned, pip resolves:", {k: oldest.get(k) for k in WATCHED})
    for line in errors:
        print(f"check_stack: {line}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
