"""Run state that cannot drift: evaluation touches nothing, checkpoints reproduce their figures,
resumes follow the new plan bit for bit, the bookkeeping survives as one unit.

Most tests drive the real ``Trainer`` in this process (real checkpoints, real TensorBoard files);
the ones about the command line run the ``snnrun`` console script."""

import copy
import json
import time

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST, read_metrics, read_results, scalars, snnrun, write_idx_dataset
from snnrun.run import checkpoints
from snnrun.run.assembly import assemble
from snnrun.run.logger import RunLogger
from snnrun.run.loop import Trainer, TrainingError
from snnrun.run.records import Progress

SMALL = [*FAST, "device=cpu", "trainer.curve_points=0"]
BN_DROPOUT = "model.arch=FC32-BN-DO0.3-FC10"


def trainer_for(compose, run_dir, *overrides) -> Trainer:
    cfg = compose(*SMALL, *overrides)
    a = assemble(cfg)
    return Trainer(a.parts, a.data, a.options, run_dir=run_dir, logger=RunLogger(run_dir, {}),
                   config=OmegaConf.to_container(cfg, resolve=True))


def keep_state_at(trainer: Trainer, step: int) -> dict:
    """Read back last.pt as it was written at ``step`` (the run overwrites it later)."""
    kept, save = {}, trainer.save

    def saving(name):
        path = save(name)
        if name == "last" and trainer.step == step:
            kept["state"] = checkpoints.load(path)
        return path

    trainer.save = saving
    return kept


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluating_and_drawing_change_nothing_training_depends_on(compose, tmp_path):
    t = trainer_for(compose, tmp_path, BN_DROPOUT, "trainer.max_steps=3", "trainer.raster_samples=4")
    t.fit()
    t.model.train()
    before = (copy.deepcopy(t.model.state_dict()), torch.get_rng_state(), t.generator.get_state())
    t.test()
    assert t.evaluator.traces()["spikes"]  # drawn: the figures ran the network
    after = (t.model.state_dict(), torch.get_rng_state(), t.generator.get_state())
    assert same_weights(before[0], after[0])  # BN running statistics and counters included
    assert torch.equal(before[1], after[1]) and torch.equal(before[2], after[2])
    assert t.model.training


def test_figures_at_every_evaluation_or_only_the_last_train_the_same_network(compose, tmp_path):
    runs = {}
    for figures in ("every", "last"):
        t = trainer_for(compose, tmp_path / figures, BN_DROPOUT, "trainer.max_steps=6", "trainer.eval_every=2",
                        "trainer.raster_samples=4", f"trainer.figures={figures}")
        t.fit()
        runs[figures] = t.model.state_dict()
    assert same_weights(runs["every"], runs["last"])


def test_an_exception_during_evaluation_restores_training_mode(compose, tmp_path):
    t = trainer_for(compose, tmp_path, "trainer.max_steps=1")
    t.model.train()

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    t.parts.loss = broken
    with pytest.raises(RuntimeError, match="out of memory"):
        t.test()
    assert t.model.training and t.model.counter is None and not t.model.record


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_a_resume_with_the_same_plan_is_bit_identical(compose, tmp_path, scheduler):
    plan = [BN_DROPOUT, "encoder=poisson", f"scheduler={scheduler}", "trainer.max_steps=12", "trainer.eval_every=6"]
    straight = trainer_for(compose, tmp_path / "straight", *plan)
    kept = keep_state_at(straight, 6)
    straight.fit()
    resumed = trainer_for(compose, tmp_path / "resumed", *plan)
    resumed.restore(kept["state"])
    resumed.fit()
    assert same_weights(straight.model.state_dict(), resumed.model.state_dict())
    a, b = read_metrics(tmp_path / "straight")[-1], read_metrics(tmp_path / "resumed")[-1]
    for key in ("step", "test_loss", "test_acc", "train_loss", "lr"):
        assert a[key] == b[key], key


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_a_longer_resume_follows_the_schedule_of_the_longer_plan(compose, tmp_path, scheduler):
    """Resuming a 6-step plan with 12 steps: no error (torch's OneCycleLR raised at step 7), and from
    step 6 on the learning rate is the 12-step plan's (the cosine used to keep its old horizon)."""
    short = trainer_for(compose, tmp_path / "short", f"scheduler={scheduler}", "trainer.max_steps=6")
    short.fit()
    longer = trainer_for(compose, tmp_path / "longer", f"scheduler={scheduler}", "trainer.max_steps=12",
                         "trainer.eval_every=3")
    longer.restore(checkpoints.load(tmp_path / "short" / "checkpoints" / "last.pt"))
    longer.fit()
    planned = trainer_for(compose, tmp_path / "planned", f"scheduler={scheduler}", "trainer.max_steps=12",
                          "trainer.eval_every=3")
    planned.fit()
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "longer")}
    assert lrs == {r["step"]: r["lr"] for r in read_metrics(tmp_path / "planned") if r["step"] > 6}
    assert lrs[12] < lrs[9]  # both schedules anneal to the new end


def test_the_bookkeeping_survives_a_resume_as_one_unit(compose, tmp_path):
    """Best figures, the split they were chosen on, time to accuracy and the training clock."""
    common = ["optimizer.lr=3e-3", "trainer.eval_every=4", "data.val_size=32"]
    first = trainer_for(compose, tmp_path / "first", *common, "trainer.max_steps=24")
    done = first.fit()
    assert "0.98" in done["time_to_acc"]  # synthetic data is easy: reached before the resume
    resumed = trainer_for(compose, tmp_path / "resumed", *common, "trainer.max_steps=28")
    saved = checkpoints.load(tmp_path / "first" / "checkpoints" / "last.pt")
    resumed.restore(saved)
    assert resumed.progress == Progress.from_state(saved["progress"]) and resumed.step == 24
    assert resumed.progress.best == {**first.progress.best, "split": "val"}  # restored as one unit
    tic = time.perf_counter()
    results = resumed.fit()
    elapsed = time.perf_counter() - tic
    for target, when in done["time_to_acc"].items():  # first reached before the resume: step and clock kept
        assert results["time_to_acc"][target] == when
    clock_at_save = saved["progress"]["wall_s"]  # the run's clock when last.pt was written (before best.pt)
    assert 0 < clock_at_save <= done["wall_s"]
    assert clock_at_save < results["wall_s"] <= clock_at_save + elapsed  # continued from the checkpoint's clock
    assert results["best_selected_on"] == "val" and results["best_step"] <= 28
    record = read_metrics(tmp_path / "resumed")[-1]
    assert record["wall_s"] > clock_at_save and record["time_to_acc"] == results["time_to_acc"]


def test_a_resume_that_holds_out_another_validation_split_is_refused(compose, tmp_path):
    from snnrun.run.checkpoints import CheckpointError

    t = trainer_for(compose, tmp_path, "trainer.max_steps=1", "data.val_size=32")
    t.fit()
    ckpt = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match=r"data.val_size=32.*data.val_size=0.*use data.val_size=32"):
        assemble(compose(*SMALL, f"ckpt_path={ckpt}"))
    assert assemble(compose(*SMALL, f"ckpt_path={ckpt}", "data.val_size=32")).checkpoint is not None


def test_max_time_ends_the_run_cleanly_with_the_plan_unchanged(compose, tmp_path):
    t = trainer_for(compose, tmp_path, "scheduler=onecycle", "trainer.max_steps=12", "trainer.max_time=1e-9")
    results = t.fit()
    assert results["status"] == "ok" and results["stopped_by"] == "max_time" and results["steps"] == 1
    assert checkpoints.load(tmp_path / "checkpoints" / "last.pt")["progress"]["step"] == 1
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    planned = trainer_for(compose, tmp_path / "planned", "scheduler=onecycle", "trainer.max_steps=12",
                          "trainer.eval_every=1")
    kept = keep_state_at(planned, 1)
    planned.fit()
    assert read_metrics(tmp_path)[0]["lr"] == read_metrics(tmp_path / "planned")[0]["lr"]  # the 12-step schedule
    assert kept["state"]["progress"]["step"] == 1


def test_a_plan_that_ends_with_its_budget_is_reported_as_the_plan(compose, tmp_path):
    """The budget runs out at the plan's last step: the plan ended the run, not max_time."""
    results = trainer_for(compose, tmp_path, "trainer.max_steps=1", "trainer.max_time=1e-9").fit()
    assert results["steps"] == 1 and results["stopped_by"] == "plan"


def test_a_resume_of_a_spent_budget_trains_no_step(compose, tmp_path, caplog):
    first = trainer_for(compose, tmp_path / "first", "trainer.max_steps=12", "trainer.max_time=1e-9")
    assert first.fit()["steps"] == 1
    again = trainer_for(compose, tmp_path / "again", "trainer.max_steps=12", "trainer.max_time=1e-9")
    again.restore(checkpoints.load(tmp_path / "first" / "checkpoints" / "last.pt"))
    with caplog.at_level("INFO", logger="snnrun"):
        results = again.fit()
    assert results["steps"] == 1 and results["stopped_by"] == "max_time"
    assert "has passed trainer.max_time=1e-09: no step is trained" in caplog.text


def test_the_throughput_counts_every_step_of_the_run_over_its_resumes(compose, tmp_path):
    first = trainer_for(compose, tmp_path / "first", "trainer.max_steps=4")
    first.fit()
    saved = checkpoints.load(tmp_path / "first" / "checkpoints" / "last.pt")
    assert saved["progress"]["trained"]["samples"] == 3 * 32 and saved["progress"]["trained"]["seconds"] > 0
    resumed = trainer_for(compose, tmp_path / "resumed", "trainer.max_steps=6")
    resumed.restore(saved)
    results = resumed.fit()
    trained = resumed.progress.trained
    assert trained["samples"] == (3 + 1) * 32  # each process's first step (loading the kernels) is timed apart
    assert results["train_samples_per_s"] == pytest.approx(trained["samples"] / trained["seconds"])
    again = trainer_for(compose, tmp_path / "again", "trainer.max_steps=6")  # nothing left to train
    again.restore(checkpoints.load(tmp_path / "resumed" / "checkpoints" / "last.pt"))
    assert again.fit()["train_samples_per_s"] == results["train_samples_per_s"]


def test_the_learning_rate_logged_is_the_one_the_step_used(compose, tmp_path):
    t = trainer_for(compose, tmp_path, "scheduler=onecycle", "trainer.max_steps=4", "trainer.eval_every=1",
                    "trainer.log_every=1")
    used = []
    t.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: used.append(optimizer.param_groups[0]["lr"]))
    t.fit()
    assert [r["lr"] for r in read_metrics(tmp_path)] == used and used[0] < used[1]  # one-cycle warms up
    t.logger.writer.flush()
    assert [value for _, value in scalars(tmp_path)["lr"]] == pytest.approx(used)


def test_dropout_gives_each_sample_the_mask_it_gets_in_one_process():
    from snnrun.core.architectures import _Block

    block = _Block("L1", torch.nn.Sequential(torch.nn.Linear(3, 5)), torch.nn.Identity(), (5,), dropout=0.5)
    spikes = torch.ones(4, 6, 5)  # [T, B, n]
    torch.manual_seed(3)
    whole = block.drop(spikes)
    shards = []
    for rank in range(2):
        torch.manual_seed(3)  # every rank draws from the same stream
        rows = slice(3 * rank, 3 * rank + 3)
        shards.append(block.drop(spikes[:, rows], rows=(6, rows)))
    assert torch.equal(torch.cat(shards, dim=1), whole)


def test_eval_takes_the_network_input_and_data_from_the_checkpoint(compose, tmp_path):
    from hydra import compose as hydra_compose, initialize_config_dir

    from snnrun.run.cli import config_dir
    from snnrun.run.preflight import checkpoint_config
    from snnrun.run.rules import ConfigError

    t = trainer_for(compose, tmp_path, "model.arch=FC32-FC10", "time_steps=6", "encoder=poisson", "neuron=sliding_psn",
                    "trainer.max_steps=1")
    t.fit()
    ckpt = tmp_path / "checkpoints" / "last.pt"

    def merged(*extra):
        overrides = ["task=eval", f"ckpt_path={ckpt}", *extra]
        with initialize_config_dir(config_dir=config_dir(), version_base=None):
            return checkpoint_config(hydra_compose(config_name="config", overrides=overrides), overrides,
                                     checkpoints.load(ckpt))

    cfg = merged("data.eval_batch_size=7")
    assert (cfg.model.arch, cfg.time_steps, cfg.encoder._target_) == ("FC32-FC10", 6, "snnrun.core.encoders.Poisson")
    assert cfg.data._target_ == "snnrun.data.datasets.synthetic" and cfg.data.num_train == 256
    assert cfg.data.eval_batch_size == 7 and cfg.task == "eval"  # the compatible override wins
    assert set(cfg.neuron) == set(compose("neuron=sliding_psn").neuron)  # the checkpoint's group whole, no lif keys
    assert assemble(cfg).parts.model.blocks[0].neuron.taps == 16
    assert merged("model.arch=FC32-FC10").model.arch == "FC32-FC10"  # repeating the checkpoint's value is fine
    assert merged("neuron.backend=torch").neuron.backend == "torch"  # how it computes may change, as on resume
    assert merged("loss=spike_count_ce").loss == compose("loss=spike_count_ce").loss  # another loss comes whole
    for override, key, theirs in (("time_steps=5", "time_steps", "6"), ("model=csnn", "model.arch", "'FC32-FC10'"),
                                  ("data=mnist", "data._target_", "'snnrun.data.datasets.synthetic'"),
                                  ("encoder=direct", "encoder._target_", "'snnrun.core.encoders.Poisson'")):
        with pytest.raises(ConfigError) as err:
            merged(override)
        assert err.value.key == key and f"the checkpoint's value, {theirs}" in str(err.value)


def test_eval_of_a_permuted_checkpoint_on_unpermuted_pixels_is_refused(compose, tmp_path):
    """psmnist's permutation_seed is null under data=smnist: a null that means what it says (no permutation),
    not a value left to the files, so it contradicts the checkpoint's seed."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from snnrun.run.cli import config_dir
    from snnrun.run.preflight import checkpoint_config
    from snnrun.run.rules import ConfigError

    root = write_idx_dataset(tmp_path / "data", n_train=16, n_test=8)
    net = ["model.arch=FC8-FC10", "data.batch_size=8", "data.val_size=0", "device=cpu", "trainer.curve_points=0",
           "trainer.raster_samples=0", f"data.root={root}"]
    cfg = compose("data=psmnist", "trainer.max_steps=1", *net)
    a = assemble(cfg)
    Trainer(a.parts, a.data, a.options, run_dir=tmp_path / "run", logger=RunLogger(tmp_path / "run", {}),
            config=OmegaConf.to_container(cfg, resolve=True)).fit()
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    overrides = ["task=eval", f"ckpt_path={ckpt}", "data=smnist", "data.mode=pixels"]
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        with pytest.raises(ConfigError, match="data.permutation_seed=None is not allowed.*the checkpoint's value, 0"):
            checkpoint_config(hydra_compose(config_name="config", overrides=overrides), overrides,
                              checkpoints.load(ckpt))


@pytest.mark.e2e
def test_a_checkpoint_evaluated_with_only_its_path_reproduces_its_reported_figures(tmp_path):
    """A BN + dropout network with figures drawn at every evaluation; ``task=eval ckpt_path=``
    alone rebuilds the network, its input and its data from the checkpoint."""
    snnrun(*FAST, "model.arch=4C5-BN-MP2-FC32-DO0.3-FC10", "encoder=poisson", "time_steps=6",
           "trainer.max_steps=6", "trainer.eval_every=3", "trainer.raster_samples=2", "hydra.run.dir=run", cwd=tmp_path)
    reported = read_metrics(tmp_path / "run")[-1]
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    snnrun("task=eval", f"ckpt_path={ckpt}", "hydra.run.dir=ev", cwd=tmp_path)
    evaluated = read_results(tmp_path / "ev")
    assert evaluated["test_loss"] == reported["test_loss"] and evaluated["test_acc"] == reported["test_acc"]
    snnrun("task=eval", f"ckpt_path={ckpt}", "data.eval_batch_size=128", "device=cpu", "hydra.run.dir=ev2", cwd=tmp_path)
    assert read_results(tmp_path / "ev2")["test_loss"] == reported["test_loss"]  # compatible overrides are fine
    refused = snnrun("task=eval", f"ckpt_path={ckpt}", "time_steps=5", "hydra.run.dir=bad", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and not (tmp_path / "bad").exists()
    assert "time_steps=5 is not allowed" in refused.stderr and "time_steps=6" in refused.stderr
    snnrun("task=export", f"ckpt_path={ckpt}", "export.approximate=true", "hydra.run.dir=ex", cwd=tmp_path)
    assert read_results(tmp_path / "ex")["status"] == "ok"
    nir = pytest.importorskip("nir")
    graph = nir.read(tmp_path / "run" / "checkpoints" / "model.nir")
    assert json.loads(str(graph.metadata["snnrun"]))["config"]["model"]["arch"] == "4C5-BN-MP2-FC32-DO0.3-FC10"


@pytest.mark.e2e
def test_the_command_line_resume_with_a_longer_onecycle_plan_and_a_time_budget(tmp_path):
    snnrun(*FAST, "scheduler=onecycle", "trainer.max_steps=4", "hydra.run.dir=short", cwd=tmp_path)
    ckpt = tmp_path / "short" / "checkpoints" / "last.pt"
    snnrun(*FAST, "scheduler=onecycle", "trainer.max_steps=8", f"ckpt_path={ckpt}", "hydra.run.dir=longer", cwd=tmp_path)
    assert read_results(tmp_path / "longer")["steps"] == 8
    proc = snnrun(*FAST, "trainer.epochs=50", "trainer.max_time=2", "hydra.run.dir=budget", cwd=tmp_path)
    results = read_results(tmp_path / "budget")
    assert proc.returncode == 0 and results["status"] == "ok" and results["stopped_by"] == "max_time"
    assert 0 < results["steps"] < 50 * 8 and 2 <= results["wall_s"]
    assert (tmp_path / "budget" / "checkpoints" / "last.pt").is_file()


def test_a_non_finite_gradient_is_skipped_counted_and_never_applied(compose, tmp_path, caplog):
    """trainer.skip_nonfinite=2: the update whose gradient was made NaN (step 3) is not applied, the
    step is listed, the run goes on; three in a row end it."""
    t = trainer_for(compose, tmp_path, "trainer.max_steps=5", "trainer.skip_nonfinite=2")
    weight = t.model.blocks[0].stateless[-1].weight
    seen, snapshots = {"calls": 0}, {}

    def poison(grad):
        seen["calls"] += 1
        return torch.full_like(grad, float("nan")) if seen["calls"] == 3 else grad

    weight.register_hook(poison)
    save = t.optimizer.step

    def step(*args, **kwargs):
        snapshots[t.step + 1] = weight.detach().clone()
        return save(*args, **kwargs)

    t.optimizer.step = step
    before = {}
    original = t.update.__call__

    def update(loss, mean_loss, step_number, progress, scheduler):
        before[step_number] = weight.detach().clone()
        return original(loss, mean_loss, step_number, progress, scheduler)

    t.update = update
    with caplog.at_level("WARNING", logger="snnrun"):
        results = t.fit()
    assert results["status"] == "ok" and results["steps"] == 5
    assert results["skipped_updates"] == 1 and results["skipped_steps"] == [3]
    assert 3 not in snapshots and set(snapshots) == {1, 2, 4, 5}  # the optimiser never stepped at step 3
    assert torch.equal(before[3], before[4])  # step 3 left the weights as they were
    assert "step 3: non-finite gradient, update skipped" in caplog.text
    assert read_metrics(tmp_path)[-1]["skipped_updates"] == 1
    assert checkpoints.load(tmp_path / "checkpoints" / "last.pt")["progress"]["skipped"] == [3]

    t = trainer_for(compose, tmp_path / "ends", "trainer.max_steps=5", "trainer.skip_nonfinite=2")
    t.model.blocks[0].stateless[-1].weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    with pytest.raises(TrainingError, match=r"3 updates in a row had a non-finite gradient"):
        t.fit()


def test_without_skipping_a_non_finite_gradient_ends_the_run_before_its_update(compose, tmp_path):
    """trainer.skip_nonfinite=0 (the default): the first NaN gradient under a finite loss stops the run at
    its step, before the optimiser applies it; last.pt from the evaluation before stays finite."""
    t = trainer_for(compose, tmp_path, "trainer.max_steps=6", "trainer.eval_every=2")
    weight = t.model.blocks[0].stateless[-1].weight
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return torch.full_like(grad, float("nan")) if calls["n"] == 3 else grad

    weight.register_hook(poison)
    with pytest.raises(TrainingError, match=r"the gradient is nan at step 3 \(the loss [0-9.]+ is finite\); training "
                                            r"stopped before that update\. The last good checkpoint, .*last\.pt, is intact"):
        t.fit()
    assert torch.isfinite(weight).all() and t.step == 2
    saved = checkpoints.load(tmp_path / "checkpoints" / "last.pt")
    assert saved["progress"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_a_checkpoint_from_a_gpu_evaluates_and_resumes_on_a_cpu(compose, tmp_path, caplog):
    """A CUDA generator's state (16 bytes: seed and offset) does not fit a CPU generator: evaluation does not
    need the training streams at all; a resume goes on from a stream seeded by (seed, step), and says so."""
    t = trainer_for(compose, tmp_path, "trainer.max_steps=2")
    t.fit()
    state = checkpoints.load(tmp_path / "checkpoints" / "last.pt")
    state["rng"]["encoder"] = torch.zeros(16, dtype=torch.uint8)  # as torch.Generator("cuda").get_state() gives
    evaluator = trainer_for(compose, tmp_path / "eval", "trainer.max_steps=2")
    evaluator.restore(state, training=False)
    assert evaluator.test()["test_acc"] == pytest.approx(t.last_eval["test_acc"])
    resumed = trainer_for(compose, tmp_path / "resumed", "trainer.max_steps=4")
    fresh = resumed.generator.get_state()
    with caplog.at_level("WARNING", logger="snnrun"):
        resumed.restore(state)
    assert "drawn on another kind of device than cpu" in caplog.text
    assert not torch.equal(resumed.generator.get_state(), fresh)  # not the stream the run started from
    assert resumed.fit()["steps"] == 4


def test_a_checkpoint_without_its_run_config_cannot_be_evaluated_or_exported():
    from snnrun.run.checkpoints import CheckpointError

    for state in ({}, {"config": {"model": {}, "neuron": {}, "surrogate": {}}}):
        with pytest.raises(CheckpointError, match=r"ckpt_path=old.pt holds no run config to rebuild its network from"):
            checkpoints.saved_config(state, "old.pt")
    assert checkpoints.saved_config({"config": {"model": 1, "neuron": 2, "surrogate": 3, "data": 4}}, "x")["data"] == 4


@pytest.mark.e2e
def test_a_resumed_run_folder_holds_the_best_checkpoint_its_results_name(tmp_path):
    """best.pt is written when an evaluation improves; a resume that does not improve on the best it took over
    used to leave its folder without one. It now carries the earlier run's best.pt (found beside ckpt_path)."""
    common = [*FAST, "optimizer.lr=3e-3", "trainer.eval_every=2"]
    snnrun(*common, "trainer.max_steps=6", "hydra.run.dir=first", cwd=tmp_path)
    snnrun(*common, "trainer.max_steps=8", "ckpt_path=first/checkpoints/last.pt", "hydra.run.dir=second", cwd=tmp_path)
    results = read_results(tmp_path / "second")
    assert results["best_step"] <= 6  # chosen in the first run: the second did not improve on it
    best = checkpoints.load(tmp_path / "second" / "checkpoints" / "best.pt")
    assert best["progress"]["step"] == results["best_step"]
    assert (tmp_path / "second/checkpoints/best.pt").read_bytes() == (tmp_path / "first/checkpoints/best.pt").read_bytes()
    (tmp_path / "first/checkpoints/best.pt").unlink()  # resumed from a folder without it: last.pt, when it is the best
    snnrun(*common, "trainer.max_steps=8", "ckpt_path=first/checkpoints/last.pt", "hydra.run.dir=third", cwd=tmp_path)
    carried, last = (checkpoints.load(tmp_path / f) for f in ("third/checkpoints/best.pt", "first/checkpoints/last.pt"))
    assert last["progress"]["step"] == results["best_step"] == 6  # the first run's last evaluation was its best
    assert all(torch.equal(carried["model"][k], last["model"][k]) for k in last["model"])
