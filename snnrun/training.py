"""Training: surrogate-gradient BPTT through T steps, periodic evaluation, checkpoints and resume.

Read top to bottom: ``simulate`` runs the network on a batch, ``evaluate`` measures it on a
split, ``Trainer.fit`` is the loop. A run is reproducible from (seed, step): the data order of
each epoch is a function of (seed, epoch), random encoders draw from a generator whose state
is checkpointed, and evaluation uses its own fixed generator, so a resumed run continues
exactly as if it had never stopped.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from . import checkpoints
from .data import Dataset, Split, batches, epoch_order, fixed_subset, random_shift
from .distributed import World, all_sum
from .options import in_range
from .synops import E_AC_PJ, E_MAC_PJ, ENERGY_KEYS, OpCounter

log = logging.getLogger("snnrun")


class TrainingError(RuntimeError):
    """The run cannot go on (a NaN or inf loss)."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved after ``step``."""

    def __init__(self, signame: str, checkpoint: Path, step: int):
        super().__init__(f"{signame} received: stopped after step {step} and saved {checkpoint}")
        self.signame, self.checkpoint, self.step = signame, checkpoint, step


@dataclass
class Parts:
    """Everything a run trains or evaluates, built from the config by ``snnrun.config.assemble``."""

    model: torch.nn.Module
    encoder: Callable | None  # None for temporal data
    loss: Callable
    readout: Callable
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


FIGURES = ("every", "last")  # trainer.figures: at which evaluations the rasters are drawn
ACCURACY_TARGETS = (0.98, 0.99, 0.995)  # time to accuracy: the step and wall seconds each was first reached


@dataclass(frozen=True)
class TrainerOptions:
    """The ``trainer:`` config block, with the run-level values the loop needs (all by name)."""

    time_steps: int
    seed: int
    batch_size: int
    eval_batch_size: int
    epochs: int = 1
    max_steps: int | None = None
    eval_every: int | None = None
    curve_points: int = 10  # quick evaluations on a fixed subset when the full ones draw fewer points
    curve_samples: int = 1000
    log_every: int = 50
    grad_clip: float | None = None
    num_threads: int | None = None
    raster_samples: int = 4
    figures: str = "every"  # draw the rasters at every evaluation or only at the last one
    augment_shift: int = 0
    energy_ac_pj: float = E_AC_PJ  # energy estimates: pJ per accumulate and per multiply-accumulate
    energy_mac_pj: float = E_MAC_PJ

    @classmethod
    def from_config(cls, cfg) -> "TrainerOptions":
        return cls(time_steps=cfg.time_steps, seed=cfg.seed, batch_size=cfg.data.batch_size,
                   eval_batch_size=cfg.data.eval_batch_size, **cfg.trainer)

    def total_steps(self, num_train: int) -> int:
        """Optimiser steps in the run: ``max_steps``, else ``epochs`` full batches of the training set."""
        return self.max_steps if self.max_steps is not None else self.epochs * (num_train // self.batch_size)


def cosine(optimizer, total_steps: int, eta_min: float = 0.0):
    """Cosine decay of the learning rate from its initial value to ``eta_min`` over the run."""
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


def simulate(model, encoder, x, time_steps: int, generator, shard: slice = slice(None)):
    """Encode a batch into ``time_steps`` steps and run the network on its ``shard`` of rows
    -> output (spikes, membranes). The whole batch is encoded, so random encoders draw the
    same numbers whatever the shard. Without an encoder the batch is already temporal,
    [B, T, ...], and runs time-first."""
    if encoder is None:
        return model(x[shard].transpose(0, 1))
    if encoder.static:
        return model(x[shard], time_steps=time_steps)
    return model(encoder(x, time_steps, generator)[:, shard])


@torch.no_grad()
def evaluate(parts: Parts, split: Split, *, batch_size: int, time_steps: int, seed: int,
             progress: bool = False, world: World = World(), name: str = "test",
             costs: tuple[float, float] = (E_AC_PJ, E_MAC_PJ)) -> dict:
    """Mean loss, accuracy, per-layer firing rates and synaptic operations per sample, with the
    energy they would cost at ``costs`` (pJ per AC, per MAC; see snnrun.synops), over a whole split.
    Under torchrun each rank simulates its shard of every batch and the sums are all-reduced:
    the same figures, N times sooner."""
    model, encoder = parts.model, parts.encoder
    was_training = model.training
    model.eval()
    model.counter = counter = OpCounter(model, ann_steps=time_steps if encoder is None else 1)  # sequences: T steps
    device = split.labels.device
    generator = torch.Generator(device=device).manual_seed(seed + 1)  # fixed, apart from training's
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    rates = 0
    for x, y in tqdm(batches(split, batch_size), desc="eval", leave=False, disable=not progress,
                     total=-(-len(split) // batch_size)):
        shard = world.shard(len(y))
        y = y[shard]
        if len(y) == 0:  # fewer rows than ranks: nothing to simulate, but draw the batch's noise
            if encoder is not None and not encoder.static:
                encoder(x, time_steps, generator)
            continue
        spk, mem = simulate(model, encoder, x, time_steps, generator, shard)
        loss_sum += parts.loss(spk, mem, y) * len(y)
        correct += (parts.readout(spk, mem) == y).sum()
        rates = rates + model.firing_rates * len(y)
    model.train(was_training)
    model.counter = None
    n, layers = len(split), len(model.layer_names)
    totals = all_sum([loss_sum.item(), correct.item(), *torch.as_tensor(rates, dtype=torch.float64)
                      .expand(layers).tolist(), *counter.totals()], device)
    return {
        f"{name}_loss": totals[0] / n,
        f"{name}_acc": totals[1] / n,
        "firing_rates": {layer: r / n for layer, r in zip(model.layer_names, totals[2:2 + layers])
                         if layer in model.spiking_layers},
        **counter.report(totals[2 + layers:], n, *costs),
    }


@contextmanager
def stop_on_signals(trainer: "Trainer"):
    """SIGINT/SIGTERM ask the trainer to stop after the current step; a second SIGINT aborts."""

    def request(signum, frame):
        if trainer.stop_signal == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_signal = signal.Signals(signum).name
        log.warning("%s received: finishing this step, then saving a checkpoint", trainer.stop_signal)

    try:
        previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (e.g. a thread-based launcher): no handlers
        previous = {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Trainer:
    def __init__(self, parts: Parts, data: Dataset, options: TrainerOptions, *, run_dir: Path, logger, config: dict,
                 world: World = World()):
        self.parts, self.model, self.optimizer, self.scheduler = parts, parts.model, parts.optimizer, parts.scheduler
        self.data, self.options = data, options
        self.run_dir, self.logger, self.config = Path(run_dir), logger, config
        self.steps_per_epoch = len(data.train) // options.batch_size
        self.total_steps = options.total_steps(len(data.train))
        self.eval_every = options.eval_every or self.steps_per_epoch
        # Curves, not dots: if the full evaluations give fewer than curve_points points, quick ones
        # on a fixed subset of the selection split fill in, about curve_points over the whole run.
        sparse = self.total_steps // self.eval_every < options.curve_points
        self.curve_every = -(-self.total_steps // options.curve_points) if sparse else 0
        self.curve_split = (fixed_subset(data.val if data.val is not None else data.test, options.curve_samples)
                            if self.curve_every else None)
        self.device = data.train.labels.device
        self.generator = torch.Generator(device=self.device).manual_seed(options.seed)
        self.step, self.best_test_acc, self.last_eval = 0, -1.0, None
        self.best = {}  # the evaluation best.pt holds: chosen on validation when there is a split, else on test
        self.started = time.perf_counter()  # reset when fit() starts
        self.reached: dict[str, dict] = {}  # time to accuracy: the first evaluation at or above each target
        self.window = {"loss": 0.0, "correct": 0.0, "samples": 0, "seconds": 0.0}  # since the last evaluation
        self.stop_signal: str | None = None  # set by a signal handler at any time
        self.stopping = False  # whether any rank had a stop signal at the last step (agreed by all ranks)
        self.world = world  # under torchrun: this rank; its replica syncs gradients through DDP
        self.replica = self.model
        if world.size > 1:
            self.replica = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.progress = sys.stderr.isatty()

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "encoder": self.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "step": self.step,
            "best_test_acc": self.best_test_acc,
            "best": dict(self.best),
            "window": dict(self.window),
            "rng": rng,
            "arch": self.model.arch,
            "input_shape": list(self.model.input_shape),
            "data": dict(self.data.meta),
            "config": self.config,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best_test_acc = state["step"], state["best_test_acc"]
        self.best = dict(state.get("best", {}))
        self.window = dict(state["window"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["encoder"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def checkpoint(self, name: str) -> Path:
        return self.run_dir / "checkpoints" / f"{name}.pt"

    def save(self, name: str) -> Path:
        checkpoints.save(self.checkpoint(name), self.state())
        return self.checkpoint(name)

    # -- one step, one evaluation ----------------------------------------------------------------
    def train_step(self, x, y) -> None:
        shard = self.world.shard(len(y))
        spk, mem = simulate(self.replica, self.parts.encoder, x, self.options.time_steps, self.generator, shard)
        y = y[shard]
        loss = self.parts.loss(spk, mem, y)
        correct = (self.parts.readout(spk, mem) == y).sum().item()
        # one all-reduce: every rank agrees on the batch's figures, a NaN anywhere, a stop signal anywhere
        loss_sum, correct, n, stop = all_sum([loss.item() * len(y), correct, len(y), float(bool(self.stop_signal))],
                                             self.device)
        self.stopping = stop > 0
        if not math.isfinite(loss_sum):
            self.fail(f"the loss is {loss_sum / n} at step {self.step + 1}; training stopped before that update.")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.options.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        self.optimizer.step()
        if self.scheduler:
            self.scheduler.step()
        self.window["loss"] += loss_sum
        self.window["correct"] += correct
        self.window["samples"] += int(n)
        if self.step % self.options.log_every == 0 and self.world.main:
            self.logger.log_train(self.step + 1, loss_sum / n, correct / n, self.lr)

    def fail(self, what: str):
        last = self.checkpoint("last")
        kept = f"The last good checkpoint, {last}, is intact. " if last.exists() else "No checkpoint was saved. "
        raise TrainingError(f"{what} {kept}Try a lower optimizer.lr or trainer.grad_clip=1.0.")

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def evaluate_split(self, split: Split, name: str, progress: bool = False) -> dict:
        o = self.options
        return evaluate(self.parts, split, batch_size=o.eval_batch_size, time_steps=o.time_steps, seed=o.seed,
                        progress=progress, world=self.world, name=name, costs=(o.energy_ac_pj, o.energy_mac_pj))

    def test(self) -> dict:
        """The test figures and, with a validation split, the validation figures."""
        metrics = self.evaluate_split(self.data.test, "test", self.progress)
        if self.data.val is not None:
            val = self.evaluate_split(self.data.val, "val", self.progress)
            metrics.update(val_loss=val["val_loss"], val_acc=val["val_acc"])
        return metrics

    @property
    def selected_on(self) -> str:
        return "val" if self.data.val is not None else "test"

    @torch.no_grad()
    def traces(self) -> dict | None:
        """Every layer's spikes and the output membranes of the first few test samples."""
        k = min(self.options.raster_samples, len(self.data.test))
        if k <= 0 or (self.options.figures == "last" and self.step < self.total_steps):
            return None
        x, y = next(batches(self.data.test, k))
        self.model.record = True
        try:
            generator = torch.Generator(device=self.device).manual_seed(self.options.seed + 1)
            _, mem = simulate(self.model, self.parts.encoder, x, self.options.time_steps, generator)
        finally:
            self.model.record = False
        threshold = getattr(self.model.blocks[-1].neuron, "threshold", None)
        if threshold is not None and not torch.isfinite(torch.as_tensor(threshold)).all():
            threshold = None  # an li readout never fires
        spiking = self.model.spiking_layers
        return {
            "spikes": {name: s.cpu() for name, s in zip(self.model.layer_names, self.model.recorded) if name in spiking},
            "membrane": mem.cpu(),
            "labels": y.tolist(),
            "threshold": float(torch.as_tensor(threshold).float().mean()) if threshold is not None else None,
        }

    def check_weights(self) -> None:
        """Never checkpoint NaN or inf weights over good ones."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self.fail(f"the weights became NaN or inf in the update of step {self.step}; nothing after it was saved.")

    def curve_point(self) -> None:
        """A quick evaluation on ``curve_split`` for TensorBoard's curve/ tags; it selects nothing."""
        split = self.selected_on
        metrics = self.evaluate_split(self.curve_split, split)
        if self.world.main:
            self.logger.log_curve(self.step, split, metrics[f"{split}_loss"], metrics[f"{split}_acc"])
        log.info("step %d  %s_acc %.2f%% on %d samples (curve point)", self.step, split, 100 * metrics[f"{split}_acc"],
                 len(self.curve_split))

    def evaluate_and_save(self) -> dict:
        self.check_weights()
        metrics = self.test()
        w = self.window
        record = {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "train_loss": w["loss"] / w["samples"] if w["samples"] else None,
            "train_acc": w["correct"] / w["samples"] if w["samples"] else None,
            **metrics,
            "best_test_acc": max(self.best_test_acc, metrics["test_acc"]),
            "train_samples_per_s": w["samples"] / w["seconds"] if w["seconds"] else 0.0,
            "lr": self.lr,
            "wall_s": time.perf_counter() - self.started,  # since training started, this evaluation included
        }
        self.window = {"loss": 0.0, "correct": 0.0, "samples": 0, "seconds": 0.0}
        self.best_test_acc = record["best_test_acc"]
        for target in ACCURACY_TARGETS:
            if f"{target:g}" not in self.reached and metrics["test_acc"] >= target:
                self.reached[f"{target:g}"] = {"step": self.step, "wall_s": record["wall_s"]}
        record["time_to_acc"] = dict(self.reached)
        key = f"{self.selected_on}_acc"
        improved = metrics[key] > self.best.get(key, -1.0)
        if improved:
            self.best = {"step": self.step, **{k: metrics[k] for k in ("test_acc", "val_acc") if k in metrics}}
        if self.data.val is not None:
            record.update(best_val_acc=self.best["val_acc"], test_acc_at_best_val=self.best["test_acc"])
        if self.world.main:
            self.logger.log_eval(record, self.model, self.traces())
            self.save("last")
            if improved:
                self.save("best")
        log.info("step %d  epoch %.2f  train_loss %s  test_loss %.4f  test_acc %.2f%%%s  (%.0f samples/s)",
                 self.step, record["epoch"], f"{record['train_loss']:.4f}" if record["train_loss"] is not None else "-",
                 record["test_loss"], 100 * record["test_acc"],
                 f"  val_acc {100 * record['val_acc']:.2f}%" if "val_acc" in record else "", record["train_samples_per_s"])
        self.last_eval = record
        return record

    def best_figures(self) -> dict:
        """What best.pt holds and how it was chosen: on validation (with the test accuracy there) or on test."""
        figures = {"best_selected_on": self.selected_on, "best_step": self.best.get("step")}
        if self.data.val is not None:
            figures.update(best_val_acc=self.best.get("val_acc"), test_acc_at_best_val=self.best.get("test_acc"))
        return figures

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict:
        self.started = time.perf_counter()
        samples, seconds = 0, 0.0
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=not self.progress)
        with stop_on_signals(self):
            while self.step < self.total_steps:
                epoch, first_batch = divmod(self.step, self.steps_per_epoch)
                order = epoch_order(len(self.data.train), self.options.seed, epoch, self.device)
                for x, y in batches(self.data.train, self.options.batch_size, order, drop_last=True, start=first_batch):
                    tic = time.perf_counter()
                    self.train_step(random_shift(x, self.options.augment_shift, self.generator), y)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    elapsed = time.perf_counter() - tic
                    self.window["seconds"] += elapsed
                    seconds += elapsed
                    samples += len(y)
                    self.step += 1
                    bar.update(1)
                    if self.step % self.eval_every == 0 or self.step == self.total_steps:
                        bar.set_postfix(test_acc=f"{self.evaluate_and_save()['test_acc']:.4f}")
                    elif self.curve_every and self.step % self.curve_every == 0:
                        self.curve_point()
                    if self.stopping:
                        self.check_weights()
                        path = self.save("last") if self.world.main else self.checkpoint("last")
                        raise Interrupted(self.stop_signal or "SIGTERM", path, self.step)
                    if self.step >= self.total_steps:
                        break
        bar.close()
        final = self.last_eval if self.last_eval and self.last_eval["step"] == self.step else self.evaluate_and_save()
        return {
            "status": "ok",
            "test_acc": final["test_acc"],
            "test_loss": final["test_loss"],
            "best_test_acc": self.best_test_acc,
            **self.best_figures(),
            "steps": self.step,
            "epochs": self.step / self.steps_per_epoch,
            "train_samples_per_s": samples / seconds if seconds else 0.0,
            "wall_s": time.perf_counter() - self.started,
            "firing_rates": final["firing_rates"],
            "time_to_acc": dict(self.reached),
            **{k: final[k] for k in ENERGY_KEYS},
        }
