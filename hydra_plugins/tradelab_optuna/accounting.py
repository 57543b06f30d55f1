"""Which trials of a shared study count toward ``n_trials``, and which are running elsewhere.

A trial *ended* when it completed, was pruned, or failed, except a failed trial that runs again as another one
(its process died and the heartbeat callback re-queued it, or it was stopped by hand and re-queued) and a
*surplus* trial (processes racing for the study's last trial: the later one stands down before training).
A trial is *running* while its state is RUNNING; it is *monitored* when the process that runs it records
heartbeats, so a waiting process can tell it from a dead one, or when no objective ever started it (an *orphan*:
its process died while sampling; a waiting process fails and re-queues it after the grace period).
"""

from __future__ import annotations

import time

import optuna

FAIL, RUNNING = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def rerun(trials: list) -> set[int]:
    """Numbers of failed trials that run again as another trial."""
    out: set[int] = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", []))  # RetryHeartbeatStaleTrialCallback's record
        if "requeued_from" in t.user_attrs:
            out.add(int(t.user_attrs["requeued_from"]))
    return out


def count(trials: list, again: set[int] | None = None) -> tuple[int, int, int]:
    """``(ended, running, monitored)`` over ``trials``; ``again`` the re-run trials (default: found in ``trials``)."""
    again = rerun(trials) if again is None else again
    ended = sum(
        t.state in DONE or (t.state == FAIL and t.number not in again and "surplus" not in t.user_attrs) for t in trials
    )
    running = [t for t in trials if t.state == RUNNING]
    # worth waiting for: a trial whose process records heartbeats, or one no objective started (an orphan soon)
    return ended, len(running), sum(bool(t.user_attrs.get("heartbeat")) or not started(t) for t in running)


def started(t) -> bool:
    """Whether a sweeper objective started this trial (a re-queued copy inherits its original's attributes)."""
    return str(t.user_attrs.get("started", "")).split("@")[0] == str(t.number)


def orphans(trials: list, seen: dict[int, float], grace: float, now: float | None = None) -> list:
    """RUNNING trials that no sweeper objective started (the process died while sampling: no heartbeat ever) and
    that this process has seen in that state for more than ``grace`` seconds. ``seen`` maps a trial number to the
    ``time.monotonic()`` of its first sighting (kept by the caller; no clock of another host is compared)."""
    now = time.monotonic() if now is None else now
    out = []
    for t in trials:
        if t.state != RUNNING or started(t):
            seen.pop(t.number, None)
            continue
        if now - seen.setdefault(t.number, now) > grace:
            out.append(t)
    return out
