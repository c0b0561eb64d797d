"""Learning-rate schedules, built for a plan's total length and placed at the progress made so far.

A schedule is never reloaded from a checkpoint: ``place`` builds it anew for the run's total
steps and steps it forward to the current step. A resume with the same plan therefore follows
exactly the schedule of an uninterrupted run, and a resume with a longer (or shorter) plan
follows the schedule of a run planned that long from the start, from the step it has reached.
"""

from __future__ import annotations

import warnings

import torch

from ..core.options import in_range, non_negative


def cosine(optimizer, total_steps: int, eta_min: float = 0.0):
    """Cosine decay of the learning rate from its initial value to ``eta_min`` over the run."""
    eta_min = non_negative("eta_min", eta_min, example=0.0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=eta_min)


def onecycle(optimizer, total_steps: int, pct_start: float = 0.25):
    """One-cycle: warm up to the optimiser's lr for ``pct_start`` of the run, then anneal. Each
    phase lasts at least one step (torch divides by zero otherwise); a run of fewer than three
    steps has no room for a cycle and keeps the lr constant."""
    pct_start = in_range("pct_start", pct_start, 0, 1, example=0.25, low_open=False)
    if total_steps < 3:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = pct_start * total_steps
    if not 2 <= warmup <= total_steps - 1:
        pct_start = min(max(warmup, 2), total_steps - 1) / total_steps
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start)


def hyperparameters(optimizer) -> list[dict]:
    """Each parameter group's settings (lr, betas, ...) without its parameters."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def place(factory, optimizer, total_steps: int, step: int, initial: list[dict]):
    """The schedule ``factory`` builds for ``total_steps``, stepped forward to ``step``.

    ``initial`` holds the groups' settings before any schedule touched them (``hyperparameters``
    of the fresh optimiser): they are put back first, so a state loaded from a checkpoint cannot
    carry an old plan's learning rate or horizon into the new one."""
    for group, settings in zip(optimizer.param_groups, initial):
        for key in [k for k in group if k != "params"]:
            del group[key]
        group.update(settings)
    if factory is None:
        return None
    scheduler = factory(optimizer, total_steps=max(total_steps, 1))
    with warnings.catch_warnings():  # stepping without optimiser steps is what placing means
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(min(step, total_steps)):
            scheduler.step()
    return scheduler
