"""The records a run is made of: its parts, its trainer options and its progress.

``Parts`` and ``TrainerOptions`` are built once by ``snnrun.run.assembly``; ``Progress`` is the
loop's bookkeeping (step, best figures and the split they were chosen on, time to accuracy,
the throughput window, the training clock), saved and restored as one unit, so nothing of it
can be forgotten by a checkpoint or survive a resume half-restored.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch

from ..core.synops import E_AC_PJ, E_MAC_PJ

FIGURES = ("every", "last")  # trainer.figures: at which evaluations the rasters are drawn
ACCURACY_TARGETS = (0.98, 0.99, 0.995)  # time to accuracy: the step and wall seconds each was first reached


@dataclass
class Parts:
    """Everything a run trains or evaluates."""

    model: torch.nn.Module
    encoder: Callable | None  # None for temporal data
    loss: Callable
    readout: Callable
    optimizer: torch.optim.Optimizer | None
    scheduler: Callable | None = None  # (optimizer, total_steps) -> LR scheduler: rebuilt for each plan


@dataclass(frozen=True)
class TrainerOptions:
    """The ``trainer:`` config block, with the run-level values the loop needs (all by name)."""

    time_steps: int
    seed: int
    batch_size: int
    eval_batch_size: int
    epochs: int = 1
    max_steps: int | None = None
    max_time: float | None = None  # seconds on the training clock (evaluations, resumed runs included): then stop
    eval_every: int | None = None
    curve_points: int = 10  # quick evaluations on a fixed subset when the full ones draw fewer points
    curve_samples: int = 1000
    log_every: int = 50
    grad_clip: float | None = None
    tbptt: int = 0  # truncated BPTT: the gradient through each layer's state is cut every this many steps
    skip_nonfinite: int = 0  # updates with a non-finite loss or gradient skipped in a row before the run fails
    num_threads: int | None = None
    raster_samples: int = 4
    figures: str = "every"  # draw the rasters at every evaluation or only at the last one
    augment_shift: int = 0
    energy_ac_pj: float = E_AC_PJ  # energy estimates: pJ per accumulate and per multiply-accumulate
    energy_mac_pj: float = E_MAC_PJ

    @classmethod
    def from_config(cls, cfg) -> "TrainerOptions":
        known = {f.name for f in fields(cls)} - {"time_steps", "seed", "batch_size", "eval_batch_size"}
        for key in cfg.trainer:
            if key not in known:
                from .rules import ConfigError

                close = difflib.get_close_matches(key, sorted(known), n=1)
                value = cfg.trainer[key]
                raise ConfigError(f"trainer.{key}", value, f"a trainer option ({', '.join(sorted(known))})",
                                  f"trainer.{close[0]}={value}" if close else "trainer.epochs=1 (leave +trainer."
                                  f"{key} out: no part reads it)")
        return cls(time_steps=cfg.time_steps, seed=cfg.seed, batch_size=cfg.data.batch_size,
                   eval_batch_size=cfg.data.eval_batch_size, **cfg.trainer)

    def total_steps(self, num_train: int) -> int:
        """Optimiser steps in the run: ``max_steps``, else ``epochs`` full batches of the training set."""
        return self.max_steps if self.max_steps is not None else self.epochs * (num_train // self.batch_size)


def _window() -> dict:
    return {"loss": 0.0, "correct": 0.0, "samples": 0, "seconds": 0.0}


@dataclass
class Progress:
    """How far a run has come. ``best`` is the evaluation best.pt holds, with ``split`` the one it was
    chosen on (val with a validation split, else test); ``reached`` maps each accuracy target to
    the first evaluation at or above it; ``window`` sums training figures since the last evaluation;
    ``wall_s`` is the training clock at the last save (a resumed run's clock continues from it);
    ``skipped`` lists the steps whose non-finite update was skipped; ``trained`` sums the samples and seconds of
    the training steps but each process's first (the throughput of the whole run, over its resumes)."""

    step: int = 0
    best_test_acc: float = -1.0
    best: dict = field(default_factory=dict)
    reached: dict = field(default_factory=dict)
    window: dict = field(default_factory=_window)
    wall_s: float = 0.0
    skipped: list = field(default_factory=list)  # the steps whose update was skipped (non-finite loss or gradient)
    trained: dict = field(default_factory=lambda: {"samples": 0, "seconds": 0.0})  # training steps, resumes too

    def state(self, wall_s: float) -> dict:
        return {**asdict(self), "wall_s": wall_s}

    @classmethod
    def from_state(cls, state: dict) -> "Progress":
        return cls(**{"skipped": [], **state})

    def observe(self, metrics: dict, split: str, step: int, wall_s: float) -> bool:
        """Take in an evaluation at ``step``: the best test accuracy, the targets first reached, and
        the best figures on ``split`` (val or test); returns whether they improved."""
        self.best_test_acc = max(self.best_test_acc, metrics["test_acc"])
        for target in ACCURACY_TARGETS:
            if f"{target:g}" not in self.reached and metrics["test_acc"] >= target:
                self.reached[f"{target:g}"] = {"step": step, "wall_s": wall_s}
        improved = metrics[f"{split}_acc"] > self.best.get(f"{split}_acc", -1.0)
        if improved:
            self.best = {"split": split, "step": step, **{k: metrics[k] for k in ("test_acc", "val_acc") if k in metrics}}
        return improved

    def best_figures(self, split: str) -> dict:
        """What best.pt holds and how it was chosen: on validation (with the test accuracy there) or on test."""
        figures = {"best_selected_on": split, "best_step": self.best.get("step")}
        if split == "val":
            figures.update(best_val_acc=self.best.get("val_acc"), test_acc_at_best_val=self.best.get("test_acc"))
        return figures

    def take_window(self) -> dict:
        """The figures since the last evaluation; the window starts again."""
        window, self.window = self.window, _window()
        return window
