"""The training loop: surrogate-gradient BPTT through T steps, periodic evaluation, checkpoints, resume.

Read ``Trainer.fit`` top to bottom. A run is reproducible from (seed, step): the data order of
each epoch is a function of (seed, epoch), random encoders draw from a generator whose state
is checkpointed, evaluation (``snnrun.run.evaluation``) draws from its own and changes nothing,
and the learning-rate schedule is rebuilt for the plan and placed at the step reached
(``snnrun.run.schedules``), so a resumed run continues exactly as if it had never stopped.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import write_atomic
from ..core.synops import ENERGY_KEYS
from ..data.datasets import Dataset, batches, epoch_order, random_shift
from . import checkpoints, schedules
from .distributed import World, all_sum
from .evaluation import Evaluator, simulate
from .records import Parts, Progress, TrainerOptions
from .update import GuardedUpdate

log = logging.getLogger("snnrun")


class TrainingError(RuntimeError):
    """The run cannot go on (a NaN or inf loss)."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved after ``step``."""

    def __init__(self, signame: str, checkpoint: Path, step: int):
        super().__init__(f"{signame} received: stopped after step {step} and saved {checkpoint}")
        self.signame, self.checkpoint, self.step = signame, checkpoint, step


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


def _rate(trained: dict, first: tuple[int, float] | None) -> float:
    """Training samples per second over the steps after each process's first; the first alone if it is all."""
    samples, seconds = (trained["samples"], trained["seconds"]) if trained["seconds"] or first is None else first
    return samples / seconds if seconds else 0.0


class Trainer:
    def __init__(self, parts: Parts, data: Dataset, options: TrainerOptions, *, run_dir: Path, logger, config: dict,
                 world: World = World()):
        self.parts, self.model, self.optimizer = parts, parts.model, parts.optimizer
        self.data, self.options = data, options
        self.run_dir, self.logger, self.config = Path(run_dir), logger, config
        self.steps_per_epoch = len(data.train) // options.batch_size
        self.total_steps = options.total_steps(len(data.train))
        self.eval_every = options.eval_every or self.steps_per_epoch
        self.device = data.train.labels.device
        self.generator = torch.Generator(device=self.device).manual_seed(options.seed)
        self.progress = Progress()
        self.initial = schedules.hyperparameters(self.optimizer) if self.optimizer else []
        self.scheduler = self.place_schedule()
        self.update = GuardedUpdate(self.model, self.optimizer, options, self.fail)
        self.started = time.perf_counter()  # the training clock runs from here plus progress.wall_s
        self.last_eval: dict | None = None
        self.stop_signal: str | None = None  # set by a signal handler at any time
        self.stopping = False  # whether any rank had a stop signal at the last step (agreed by all ranks)
        self.out_of_time = False  # whether trainer.max_time was reached (agreed by all ranks)
        self.step_lr: float | None = None  # the learning rate of the last step trained
        self.world = world  # under torchrun: this rank; its replica syncs gradients through DDP
        self.replica = self.model
        if world.size > 1:
            self.replica = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.show_progress = sys.stderr.isatty()
        self.evaluator = Evaluator(parts, data, options, total_steps=self.total_steps, eval_every=self.eval_every,
                                   world=world, progress=self.show_progress)
        self.selected_on = self.evaluator.selected_on
        self.test = self.evaluator.test

    @property
    def step(self) -> int:
        return self.progress.step

    def clock(self) -> float:
        """Seconds of training: this process's and those of the runs it resumes."""
        return self.progress.wall_s + time.perf_counter() - self.started

    def place_schedule(self):
        return schedules.place(self.parts.scheduler, self.optimizer, self.total_steps, self.step, self.initial)

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "progress": self.progress.state(self.clock()),
            "rng": checkpoints.random_state(self.generator),
            "arch": self.model.arch,
            "input_shape": list(self.model.input_shape),
            "data": dict(self.data.meta),
            "config": self.config,
        }

    def restore(self, state: dict, training: bool = True) -> None:
        """Load a checkpoint's weights and progress and, to train on (``training``), its optimiser and random
        streams (evaluation draws from its own); the schedule is rebuilt for this run's plan at the step reached."""
        self.model.load_state_dict(state["model"])
        if training:
            self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress.from_state(state["progress"])
        self.started = time.perf_counter()
        self.scheduler = self.place_schedule()
        if not training:
            return
        if not checkpoints.set_random_state(state["rng"], self.generator):
            self.generator.manual_seed(int(np.random.SeedSequence([self.options.seed, self.step]).generate_state(1)[0]))
            log.warning("the checkpoint's encoder stream was drawn on another kind of device than %s: it goes on "
                        "from a stream seeded by (seed, step %d), so this resume does not retrace an uninterrupted "
                        "run's random draws", self.device, self.step)

    def carry_best(self, resumed: Path) -> None:
        """A resumed run's folder gets the best.pt its progress names (the resumed run's, beside ``resumed``, or
        ``resumed`` itself where it is that evaluation): best.pt is written again only when this run improves on it."""
        step = self.progress.best.get("step")
        if step is None:  # no evaluation yet
            return
        for candidate in (resumed.with_name("best.pt"), resumed):
            try:
                progress = checkpoints.load(candidate)["progress"]
            except checkpoints.CheckpointError:  # missing or unreadable
                continue
            if progress.get("best") == self.progress.best and progress["step"] == step:  # that evaluation
                write_atomic(self.checkpoint("best"), candidate.read_bytes())
                return
        log.warning("the best evaluation so far (step %d) is not beside %s: this run writes best.pt when it "
                    "improves on it", step, resumed)

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
        budget = self.options.max_time
        # one all-reduce: every rank agrees on the batch's figures, a NaN anywhere, a stop signal or the budget
        loss_sum, correct, n, stop, late = all_sum(
            [loss.item() * len(y), correct, len(y), float(bool(self.stop_signal)),
             float(budget is not None and self.clock() >= budget)], self.device)
        self.stopping, self.out_of_time = stop > 0, late > 0
        self.step_lr = self.lr  # the rate this update uses (the schedule moves on after it)
        self.update(loss, loss_sum / n, self.step + 1, self.progress, self.scheduler)
        w = self.progress.window
        w["loss"] += loss_sum
        w["correct"] += correct
        w["samples"] += int(n)
        if self.step % self.options.log_every == 0 and self.world.main:
            self.logger.log_train(self.step + 1, loss_sum / n, correct / n, self.step_lr)

    def fail(self, what: str):
        last = self.checkpoint("last")
        kept = f"The last good checkpoint, {last}, is intact. " if last.exists() else "No checkpoint was saved. "
        raise TrainingError(f"{what} {kept}Try a lower optimizer.lr or trainer.grad_clip=1.0.")

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def check_weights(self) -> None:
        """Never checkpoint NaN or inf weights over good ones."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            since = f"after step {self.last_eval['step']}, " if self.last_eval else ""
            self.fail(f"the weights became NaN or inf in an update {since}by step {self.step}; nothing after the last "
                      "evaluation was saved.")

    def evaluate_and_save(self, final: bool = False) -> dict:
        self.check_weights()
        metrics = self.test()
        p, w = self.progress, self.progress.take_window()
        record = {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "train_loss": w["loss"] / w["samples"] if w["samples"] else None,
            "train_acc": w["correct"] / w["samples"] if w["samples"] else None,
            **metrics,
            "train_samples_per_s": w["samples"] / w["seconds"] if w["seconds"] else 0.0,
            "lr": self.step_lr if self.step_lr is not None else self.lr,  # that of the last step trained
            "wall_s": self.clock(),  # training seconds so far, this evaluation included
        }
        improved = p.observe(metrics, self.selected_on, self.step, record["wall_s"])
        record.update(best_test_acc=p.best_test_acc, time_to_acc=dict(p.reached), skipped_updates=len(p.skipped))
        if self.data.val is not None:
            record.update(best_val_acc=p.best["val_acc"], test_acc_at_best_val=p.best["test_acc"])
        if self.world.main:
            draw = self.options.figures == "every" or final or self.step >= self.total_steps
            self.logger.log_eval(record, self.model, self.evaluator.traces() if draw else None)
            self.save("last")
            if improved:
                self.save("best")
        log.info("step %d  epoch %.2f  train_loss %s  test_loss %.4f  test_acc %.2f%%%s  (%.0f samples/s)",
                 self.step, record["epoch"], f"{record['train_loss']:.4f}" if record["train_loss"] is not None else "-",
                 record["test_loss"], 100 * record["test_acc"],
                 f"  val_acc {100 * record['val_acc']:.2f}%" if "val_acc" in record else "", record["train_samples_per_s"])
        self.last_eval = record
        return record

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict:
        self.started = time.perf_counter()
        budget, trained, first = self.options.max_time, self.progress.trained, None
        if budget is not None and self.progress.wall_s >= budget:  # a resume of a run that spent its budget
            self.out_of_time = True
            log.info("the training clock (%.0f s) has passed trainer.max_time=%g: no step is trained", self.progress.wall_s,
                     budget)
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=not self.show_progress)
        with stop_on_signals(self):
            while self.step < self.total_steps and not self.out_of_time:
                epoch, first_batch = divmod(self.step, self.steps_per_epoch)
                order = epoch_order(len(self.data.train), self.options.seed, epoch, self.device)
                for x, y in batches(self.data.train, self.options.batch_size, order, drop_last=True, start=first_batch):
                    tic = time.perf_counter()
                    self.train_step(random_shift(x, self.options.augment_shift, self.generator), y)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    elapsed = time.perf_counter() - tic
                    self.progress.window["seconds"] += elapsed
                    if first is None:  # this process's first step loads or compiles the kernels: timed apart
                        first = (len(y), elapsed)
                    else:
                        trained["seconds"] += elapsed
                        trained["samples"] += len(y)
                    self.progress.step += 1
                    bar.update(1)
                    if self.out_of_time and self.step < self.total_steps:
                        log.info("trainer.max_time=%gs reached after step %d of %d", self.options.max_time, self.step,
                                 self.total_steps)
                        break
                    if self.step % self.eval_every == 0 or self.step == self.total_steps:
                        bar.set_postfix(test_acc=f"{self.evaluate_and_save()['test_acc']:.4f}")
                    elif self.evaluator.curve_every and self.step % self.evaluator.curve_every == 0:
                        self.evaluator.curve_point(self.step, self.logger if self.world.main else None)
                    if self.stopping:
                        self.check_weights()
                        path = self.save("last") if self.world.main else self.checkpoint("last")
                        raise Interrupted(self.stop_signal or "SIGTERM", path, self.step)
                    if self.step >= self.total_steps:
                        break
        bar.close()
        final = (self.last_eval if self.last_eval and self.last_eval["step"] == self.step
                 else self.evaluate_and_save(final=True))
        return {
            "status": "ok",
            "stopped_by": "max_time" if self.step < self.total_steps else "plan",
            "test_acc": final["test_acc"],
            "test_loss": final["test_loss"],
            "best_test_acc": self.progress.best_test_acc,
            **self.progress.best_figures(self.selected_on),
            "steps": self.step,
            "epochs": self.step / self.steps_per_epoch,
            "train_samples_per_s": _rate(trained, first),
            "wall_s": self.clock(),
            "firing_rates": final["firing_rates"],
            "time_to_acc": dict(self.progress.reached),
            "skipped_updates": len(self.progress.skipped),
            "skipped_steps": list(self.progress.skipped),
            **{k: final[k] for k in ENERGY_KEYS},
        }
