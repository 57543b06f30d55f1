"""Which trials of a shared study count toward ``n_trials``, and which are running elsewhere.

A trial *ended* when it completed, was pruned, or failed, except a failed trial that runs again as another one
(its process died and the heartbeat callback re-queued it, or it was stopped by hand and re-queued) and a
*surplus* trial (processes racing for the study's last trial: the later one stands down before training).
A trial is *running* while its state is RUNNING; it is *monitored* when the process that runs it records
heartbeats, so a waiting process can tell it from a dead one.
"""

from __future__ import annotations

from datetime import datetime

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
    return ended, len(running), sum(bool(t.user_attrs.get("heartbeat")) for t in running)


def orphans(trials: list, grace: float, now: datetime | None = None) -> list:
    """RUNNING trials no sweeper objective ever started (their process died while sampling, or they predate
    heartbeats), older than ``grace`` seconds: nothing will ever end them or mark them stale."""
    now = now or datetime.now()
    return [
        t
        for t in trials
        if t.state == RUNNING
        and "host" not in t.user_attrs
        and t.datetime_start is not None
        and (now - t.datetime_start).total_seconds() > grace
    ]
