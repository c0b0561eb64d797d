"""The ``snnrun`` command: compose the config with Hydra, build the parts, train or evaluate.

Usage: ``snnrun [group=option ...] [key=value ...]``; ``snnrun --help`` lists the groups.
Set SNNRUN_DEBUG=1 to see full tracebacks instead of one-paragraph errors.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
from datetime import datetime
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ..atomic import write_atomic, write_json_atomic
from ..core import backends
from ..interop import nir_export
from ..interop.nir_readers import READERS
from . import checkpoints, distributed, reader_check
from .logger import RunLogger, flatten
from .loop import Interrupted, Trainer, TrainingError
from .guards import export_path, overrides_of
from .preflight import Preflight, prepare
from .rules import USER_ERRORS
from . import sweep
from .sweep import SweepStopped, SweepSummary

log = logging.getLogger("snnrun")


def config_dir() -> str:
    """conf/ inside an installed wheel (snnrun/conf), else the source checkout's top-level conf/."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"snnrun's conf/ folder is missing next to {here}")


def hyperparameters(cfg: DictConfig) -> dict:
    """Group choices plus every leaf value, for TensorBoard's hparams dashboard."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    flat = {k: v for k, v in flatten(plain).items() if not k.rsplit(".", 1)[-1].startswith("_")}
    choices = {g: str(c) for g, c in HydraConfig.get().runtime.choices.items() if not g.startswith("hydra")}
    return {**choices, **flat}


def keep_freed_memory() -> None:
    """glibc: allocate every block from the heap and keep freed blocks there (up to 1 GiB) instead of
    returning them to the OS.

    BPTT allocates the same large tensors every step; by default glibc maps each one in fresh
    pages and unmaps it when freed, and the page faults on the next step made CPU steps up to
    3x slower (measured: dense tutorial-5 steps of 13.5 ms jumping to 30-55 ms). glibc caps the
    mmap threshold at 32 MiB, so blocks above it (a [100, 64, 4096] float32 state is 105 MB) are
    kept off mmap altogether: forward + backward of that lif layer went from 142 ms to 45 ms.
    GPU tensors are not affected. No-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 2**25)  # M_MMAP_THRESHOLD: blocks below 32 MiB come from the heap
        libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: larger blocks too (glibc caps the threshold at 32 MiB)
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap
    except (OSError, AttributeError):
        pass


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX512-BF16 or AMX); elsewhere it emulates it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # cannot tell: no warning


def run(cfg: DictConfig) -> float:
    """Train (or evaluate) one configuration; returns the best validation accuracy, or without a
    validation split the final test accuracy (the objective of optimising sweepers)."""
    world = distributed.world()
    # a single run was prepared before its folder existed; a sweep's job prepares here
    prepared = Preflight.take()
    if prepared is None:
        prepared = prepare(cfg, overrides_of(HydraConfig.get()))
        if world.main:
            save_job_config(cfg)
    if cfg.task == "export":
        return export(cfg, prepared)
    assembly = prepared
    cfg = assembly.config if assembly.config is not None else cfg  # the checkpoint's, or the NIR graph's network
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.task == "check_nir":
        return check_nir(cfg, assembly, run_dir)
    logger = RunLogger(run_dir, hyperparameters(cfg)) if world.main else None  # only rank 0 writes
    trainer = Trainer(assembly.parts, assembly.data, assembly.options, run_dir=run_dir, logger=logger,
                      config=OmegaConf.to_container(cfg, resolve=True), world=world)
    if assembly.checkpoint is not None:
        with checkpoints.restoring(cfg.ckpt_path):
            trainer.restore(assembly.checkpoint, training=cfg.task == "train")
        if cfg.task == "train" and world.main:
            trainer.carry_best(Path(cfg.ckpt_path).expanduser())
        log.info("%s %s at step %d", "resumed from" if cfg.task == "train" else "loaded", cfg.ckpt_path, trainer.step)
    if assembly.read_as:
        log.info(assembly.read_as)
    log.info("run folder %s  device %s  model %s  T=%d%s", run_dir, assembly.device, assembly.parts.model.arch,
             cfg.time_steps, f"  truncated BPTT every {assembly.options.tbptt} steps" if assembly.options.tbptt else "")
    if assembly.parts.model.precision == "bf16" and assembly.device.type == "cpu" and not cpu_has_bf16():
        log.warning("model.precision=bf16 on a CPU without bfloat16 instructions (torch reports %s): bf16 is emulated "
                    "there, several times slower than fp32; model.precision=fp32 is faster on this machine",
                    torch.backends.cpu.get_cpu_capability())

    if cfg.task == "eval":
        metrics = trainer.test()
        source = {"nir_path": str(cfg.nir_path)} if cfg.get("nir_path") else {"ckpt_path": str(cfg.ckpt_path)}
        results = {"status": "ok", "task": "eval", **source, "steps": trainer.step, **metrics}
        log.info("eval of %s: test_acc %.2f%%  test_loss %.4f", *source.values(), 100 * metrics["test_acc"],
                 metrics["test_loss"])
    else:
        try:
            results = trainer.fit()
        except (TrainingError, Interrupted) as err:
            status = "failed" if isinstance(err, TrainingError) else "interrupted"
            if logger:
                logger.finish({"status": status, "error": str(err), "steps": trainer.step,
                               "skipped_updates": len(trainer.progress.skipped),
                               "skipped_steps": list(trainer.progress.skipped)})
            raise
    used = backends.used(trainer.model)
    if used:
        log.info("neuron backend: %s", ", ".join(used))
    if logger:
        logger.finish({**results, "backend": used, "threads": torch.get_num_threads(), "processes": world.size})
    return results.get("best_val_acc", results["test_acc"])  # the objective: validation accuracy when there is a split


def save_job_config(cfg: DictConfig) -> None:
    """A sweep's job: Hydra saved .hydra/config.yaml before the job prepared; save it again with what
    preparing filled in (the shape, T and classes that data files declare)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is not None:
        path = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir / "config.yaml"
        write_atomic(path, OmegaConf.to_yaml(cfg))


def export(cfg: DictConfig, built: tuple) -> float:
    """task=export: the checkpoint's network as a NIR graph (built by the preflight for export.reader), at
    export.path or next to the checkpoint."""
    graph, approximations = built
    path = export_path(cfg)
    nir_export.write(graph, path)
    for item in approximations:
        log.warning("approximation: %s", item)
    reader = READERS[cfg.export.get("reader", "nir")]
    log.info("wrote %s (%d nodes%s) for %s: run it with %s", path, len(graph.nodes),
             f", {len(approximations)} approximations" if approximations else ", exact", reader.title, reader.call)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    write_json_atomic(run_dir / "results.json", {"status": "ok", "task": "export", "ckpt_path": str(cfg.ckpt_path),
                                                 "path": str(path), "reader": reader.name,
                                                 "approximations": approximations})
    return math.nan


def check_nir(cfg: DictConfig, assembly, run_dir: Path) -> float:
    """task=check_nir: the graph through export.reader against NIR's definition; results.json either way."""
    results = reader_check.check(cfg, assembly)
    if distributed.world().main:
        write_json_atomic(run_dir / "results.json", results)
    if results["status"] != "ok":
        where = (f"it parts from NIR's definition at {results['first_parting']}" if results.get("runs") else
                 f"it {'imports but cannot run' if results['imports'] else 'does not import'} the graph: {results['error']}")
        raise reader_check.ReaderMismatch(f"{READERS[cfg.export.reader].title} does not compute {cfg.nir_path} as NIR "
                                          f"defines it: {where} (details in {run_dir / 'results.json'})")
    return math.nan


def _fail(message: str, code: int, status: str = "failed") -> None:
    """Report a failure: one paragraph on stderr; in a sweep, a failed job instead of an exit. It returns no
    value: Optuna marks the trial failed and searches on (a NaN made Optuna 2.10's sweeper crash)."""
    log.error(message)
    print(f"snnrun: error: {message}", file=sys.stderr)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if not (run_dir / "results.json").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(run_dir / "results.json", {"status": status, "error": message})
        return None
    sys.exit(code)


_SWEEP_PID: int | None = None  # the command's process: a sweep's jobs run in it under Hydra's basic launcher


@hydra.main(version_base=None, config_path=config_dir(), config_name="config")
def task(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    signame = sweep.stopped_by(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    if signame:  # a job that starts after a signal stopped the sweep
        _fail(f"not run: the sweep was stopped by {signame} before this job started", 1, status="not run")
        if os.getpid() == _SWEEP_PID:
            raise SweepStopped(hydra_cfg.sweep.dir, signame)
        return None
    if os.environ.get("SNNRUN_DEBUG"):
        return run(cfg)
    try:
        return run(cfg)
    except USER_ERRORS as err:
        return _fail(str(err), 2)
    except (TrainingError, reader_check.ReaderMismatch) as err:
        return _fail(str(err), 1)
    except Interrupted as err:
        overrides = " ".join(overrides_of(hydra_cfg))
        resume = f"snnrun {overrides} ckpt_path={err.checkpoint}".replace("  ", " ")
        code = sweep.exit_code(err.signame)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return _fail(f"{err}. Resume with:\n  {resume}", code)
        sweep.stop(hydra_cfg.sweep.dir, err.signame)  # no later job of the sweep starts
        _fail(f"{err}. The sweep stops here: no later job starts. Resume this job with:\n  {resume} "
              f"hydra.run.dir={hydra_cfg.runtime.output_dir}-resumed", code, status="interrupted")
        if os.getpid() == _SWEEP_PID:
            raise SweepStopped(hydra_cfg.sweep.dir, err.signame) from None
        return None
    except Exception as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.exception("job failed")  # the traceback goes to the job's log; the sweep goes on
        return _fail(f"{type(err).__name__}: {err}", 1)


def main():
    """The console script: under torchrun, join the process group first and share rank 0's
    launch time, so every rank resolves the same run folder; ranks > 0 write nothing in it."""
    world = distributed.init()
    keep_freed_memory()
    launch = datetime.fromtimestamp(distributed.launch_time())
    OmegaConf.register_new_resolver("launch", launch.strftime, replace=True)
    if not world.main:
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    global _SWEEP_PID
    _SWEEP_PID = os.getpid()
    if os.environ.get("SNNRUN_DEBUG"):
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra's own frames too
    try:
        task()
    except SweepStopped as stopped:
        SweepSummary.report(stopped.sweep_dir)
        sys.exit(stopped.code)
    finally:
        if torch.distributed.is_initialized():
            distributed.leave()
    if SweepSummary.stopped:
        sys.exit(sweep.exit_code(SweepSummary.stopped))
    if SweepSummary.failed:
        print(f"snnrun: error: {SweepSummary.failed} job(s) of the sweep did not end ok (their rows in summary.md "
              "give the first line of each error)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
