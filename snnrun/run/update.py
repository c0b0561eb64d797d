"""One optimiser update of the loop, guarded: backward, gradient clipping, the non-finite check.

With ``trainer.skip_nonfinite=k`` an update whose loss or gradient norm is NaN or inf is skipped,
not applied: the weights and the optimiser's state stay as they were, the step is listed in the
run's progress (and so in the log, ``metrics.jsonl`` and ``results.json``), and the schedule still
takes its step. More than k skips in a row end the run. With k = 0 the first non-finite loss or
gradient ends it, before its update: the weights that were checkpointed stay finite.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch

from .records import Progress, TrainerOptions

log = logging.getLogger("snnrun")


class GuardedUpdate:
    def __init__(self, model: torch.nn.Module, optimizer, options: TrainerOptions, fail: Callable[[str], None]):
        self.model, self.optimizer, self.fail = model, optimizer, fail
        self.clip, self.skips = options.grad_clip, options.skip_nonfinite
        self.in_a_row = 0  # updates skipped since the last one applied

    def __call__(self, loss: torch.Tensor, mean_loss: float, step: int, progress: Progress, scheduler) -> None:
        """Apply the update of ``step`` (1-based) from ``loss``, whose value over all ranks is ``mean_loss``."""
        if not math.isfinite(mean_loss) and not self.skips:
            self.fail(f"the loss is {mean_loss} at step {step}; training stopped before that update.")
        self.optimizer.zero_grad(set_to_none=True)
        finite = math.isfinite(mean_loss)
        if finite:
            loss.backward()
            norm = self.gradient_norm()  # under DDP the gradients, and so their norm, agree on every rank
            finite = bool(torch.isfinite(norm))
            if not finite and not self.skips:
                self.fail(f"the gradient is {norm.item()} at step {step} (the loss {mean_loss:.4g} is finite); "
                          "training stopped before that update.")
        if finite:
            self.optimizer.step()
            self.in_a_row = 0
        else:
            self.skip(step, "loss" if not math.isfinite(mean_loss) else "gradient", progress)
        if scheduler:
            scheduler.step()  # a skipped update still takes its step of the schedule

    def gradient_norm(self) -> torch.Tensor:
        """The gradients' global 2-norm, after clipping them to ``trainer.grad_clip`` where it is set."""
        if self.clip:
            return torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())

    def skip(self, step: int, what: str, progress: Progress) -> None:
        progress.skipped.append(step)
        self.in_a_row += 1
        if self.in_a_row > self.skips:
            self.fail(f"{self.in_a_row} updates in a row had a non-finite {what} (trainer.skip_nonfinite={self.skips}), "
                      f"the last at step {step}; training stopped.")
        log.warning("step %d: non-finite %s, update skipped (%d skipped so far)", step, what, len(progress.skipped))
