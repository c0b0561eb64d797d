"""Before a sweep's first job: every job's folder, values and parts, so that no hour of training comes before
job 37's typo, and no job writes into an earlier sweep's job folder.

Where the jobs are known beforehand (Hydra's basic sweeper on this machine's launchers) each is composed and
built without its data (``assemble(dry=True)``); Optuna's jobs, drawn as the search goes, and a cluster
launcher's, whose nodes have other devices, check themselves as they start.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from .assembly import assemble
from .guards import check_folder, check_resolves, check_switches, occupied, overrides_of
from .rules import USER_ERRORS, ConfigError

DEFAULT_SUBDIR = "${hydra.job.num}"  # Hydra's: jobs 0, 1, ... of one sweep, in a folder of its own


class JobRefused(Exception):
    """A job of the sweep that would be refused: none runs."""


def check_sweep(config: DictConfig) -> int:
    """Refuse the sweep (``ConfigError``, ``JobRefused``) before any job runs if its folder, a job's folder or a
    job's values and parts would be refused; returns the number of jobs known beforehand (0: none)."""
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    if subdir == DEFAULT_SUBDIR:
        check_folder("hydra.sweep.dir", config.hydra.sweep.dir)
    jobs = sweep_jobs(config)
    threads = torch.get_num_threads()  # a job's trainer.num_threads is its own, when it runs
    checked = set()
    try:
        for number, job in enumerate(jobs):
            if subdir != DEFAULT_SUBDIR:
                check_job_folder(config, subdir, number, job)
            cfg = compose(config_name="config", overrides=job)
            key = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "seed"]))
            if key in checked:  # a sweep over seeds builds the same parts each time: once is enough
                continue
            checked.add(key)
            try:
                check_job(cfg, job)
            except USER_ERRORS as err:
                raise JobRefused(f"job {number} of the sweep ({' '.join(job)}) would be refused, so none was run: "
                                 f"{err}") from None
    finally:
        torch.set_num_threads(threads)
    if subdir != DEFAULT_SUBDIR:
        keep_earlier_record(Path(str(config.hydra.sweep.dir)))
    return len(jobs)


LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")  # jobs run on this machine


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The overrides of each job of a sweep that Hydra's basic sweeper runs (every combination) on this
    machine; none where the jobs run elsewhere (a cluster's launcher: its nodes have other devices and
    memory), come from ``hydra.sweeper.params``, or are drawn as the search goes (Optuna)."""
    sweeper, launcher = (str(config.hydra[k].get("_target_", "")) for k in ("sweeper", "launcher"))
    if (not sweeper.endswith("BasicSweeper") or not launcher.endswith(LOCAL_LAUNCHERS)
            or config.hydra.sweeper.get("params")):
        return []
    parsed = OverridesParser.create().parse_overrides(overrides_of(config.hydra))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def keep_earlier_record(sweep_dir: Path) -> None:
    """A sweep folder that an earlier sweep shares (jobs in subdirs of their own): Hydra writes this sweep's
    multirun.yaml over the earlier one's, so the earlier one moves aside to multirun.<k>.yaml first."""
    record = sweep_dir / "multirun.yaml"
    if record.is_file():
        k = next(k for k in range(1, 10**6) if not (sweep_dir / f"multirun.{k}.yaml").exists())
        record.rename(sweep_dir / f"multirun.{k}.yaml")


def check_job_folder(config: DictConfig, subdir: str, number: int, job: list[str]) -> None:
    """Refuse a sweep whose job ``number`` would write into a folder that holds an earlier run: with a subdir of
    your own (``r${hydra.job.num}``, ``${hydra.job.override_dirname}``), a second sweep into the same folder
    would meet the first one's jobs there. The subdir is resolved as the launchers do, with the job's number."""
    cfg = compose(config_name="config", overrides=job, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.job.num, cfg.hydra.job.name = number, config.hydra.job.name
        launcher = str(config.hydra.launcher.get("_target_", ""))
        cfg.hydra.job.id = f"{config.hydra.job.name}_{number}" if launcher.endswith("JoblibLauncher") else number
        cfg.hydra.sweep.subdir = subdir
    folder = Path(str(config.hydra.sweep.dir)).expanduser() / str(cfg.hydra.sweep.subdir)
    held = occupied(folder)
    if held is not None:
        raise ConfigError("hydra.sweep.subdir", subdir, f"a folder per job that holds no earlier run: job {number} "
                          f"({' '.join(job)}) would write into {folder}, which {held}, and snnrun never writes over "
                          "what an earlier run wrote (give the sweep a new hydra.sweep.dir)",
                          f"hydra.sweep.dir={str(config.hydra.sweep.dir).rstrip('/')}-2")


def check_job(cfg: DictConfig, overrides: list[str]) -> None:
    """What a sweep's job would refuse before it loads data: its values, switches and parts (a training job
    from scratch; one that resumes or evaluates a checkpoint is checked when it runs)."""
    check_resolves(cfg)
    check_switches(cfg, overrides)
    if cfg.task == "train" and not cfg.get("ckpt_path"):
        assemble(cfg, dry=True)
