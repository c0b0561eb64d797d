"""Hydra composition and assembly: every option of every group composes and builds its part;
every bad value is refused by the one rule that owns it, named as group.option."""

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra.utils import get_object

from snnrun.run import devices
from snnrun.run.cli import config_dir
from snnrun.run.assembly import assemble
from snnrun.run.devices import check_memory
from snnrun.run.preflight import Preflight
from snnrun.run.rules import ConfigError
from snnrun.data.datasets import DataSpec
from snnrun.run.records import Parts, TrainerOptions

CONF = Path(config_dir())
GROUPS = ["neuron", "surrogate", "encoder", "model", "loss", "data", "optimizer", "scheduler"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
FROM_FILES = ("tensors", "event_folder")  # what they yield is read from the user's files (test_own_data)
SMALL = ["data=synthetic", "data.num_train=64", "data.num_test=16", "data.batch_size=16", "time_steps=4"]


def test_defaults_are_the_tutorial5_dense_network(compose):
    cfg = compose()
    assert cfg.model.arch == "FC1000-FC10" and cfg.neuron.beta == 0.95 and cfg.time_steps == 25
    assert cfg.surrogate._target_.endswith("ATan") and cfg.encoder._target_.endswith("Direct")
    assert cfg.loss._target_.endswith("MembraneCE") and cfg.optimizer.lr == 5e-4
    assert cfg.data.batch_size == 128 and cfg.trainer.epochs == 1 and cfg.seed == 0
    assert cfg.device == "auto" and cfg.task == "train" and cfg.ckpt_path is None
    assert DataSpec.from_config(cfg.data) == DataSpec((1, 28, 28), 10, temporal=False)
    for key in ("max_steps", "eval_every"):
        assert key in cfg.trainer


def test_every_group_has_the_documented_options():
    names = {g: {o for gg, o in OPTIONS if gg == g} for g in GROUPS}
    assert names["neuron"] == {"lif", "if", "synaptic", "graded", "rlif", "alif", "filter_lif", "psn", "sliding_psn"}
    assert names["surrogate"] == {"atan", "fast_sigmoid", "sigmoid", "triangular", "multi_gaussian", "straight_through",
                                  "heaviside"}
    assert names["encoder"] == {"direct", "rate", "poisson", "noise", "latency"}
    assert names["model"] == {"dense", "csnn"}
    assert names["loss"] == {"membrane_ce", "spike_count_ce", "spike_rate_ce", "mse_count", "membrane_sum_ce",
                             "membrane_max_ce"}
    assert names["data"] == {"mnist", "fashion_mnist", "kmnist", "synthetic", "smnist", "psmnist", "nmnist", "shd",
                             "dvs_gesture", "tensors", "event_folder"}
    assert names["optimizer"] == {"adam", "adamw", "sgd"}
    assert names["scheduler"] == {"none", "cosine", "onecycle"}


@pytest.mark.parametrize("group, option", [o for o in OPTIONS if o[0] != "data"],
                         ids=[f"{g}={o}" for g, o in OPTIONS if g != "data"])
def test_option_builds_and_trains_a_step(compose, group, option):
    """Each option builds the part its _target_ names, and one step of it changes the weights."""
    arch = [] if group == "model" else ["model.arch=4C5-MP2-FC10"]
    if (group, option) == ("neuron", "rlif"):  # rlif needs a recurrent layer, on a flat input
        arch = ["model.arch=4C5-MP2-FC16-RFC10"]
    cfg = compose(f"{group}={option}", *SMALL, *arch)
    assembly = assemble(cfg)
    parts = assembly.parts
    built = {"neuron": [m for m in parts.model.modules()], "model": [parts.model], "encoder": [parts.encoder],
             "surrogate": [m.surrogate for m in parts.model.modules() if hasattr(m, "surrogate")],
             "loss": [parts.loss], "optimizer": [parts.optimizer], "scheduler": [parts.scheduler]}[group]
    target = cfg[group].get("_target_")
    assert any(_maker(part) is (get_object(target) if target else None) for part in built)
    x, y = assembly.data.train.inputs[:2].float() / 255, assembly.data.train.labels[:2]
    before = [p.detach().clone() for p in parts.model.parameters()]
    spk, mem = parts.model(parts.encoder(x, 4, torch.Generator().manual_seed(0)))
    loss = parts.loss(spk, mem, y)
    loss.backward()
    scheduler = parts.scheduler(parts.optimizer, total_steps=10) if parts.scheduler is not None else None
    parts.optimizer.step()
    if scheduler is not None:
        scheduler.step()
    assert spk.shape == (4, 2, 10) and torch.isfinite(loss)
    changed = any(not torch.equal(a, b) for a, b in zip(before, parts.model.parameters()))
    assert changed or option == "heaviside"  # no surrogate: no gradient reaches the weights behind a spike


def _maker(part):
    """What built ``part``: its class, or the function a partial wraps (None for None)."""
    return None if part is None else getattr(part, "func", None) or type(part)


DATASETS = {
    "mnist": DataSpec((1, 28, 28), 10), "fashion_mnist": DataSpec((1, 28, 28), 10),
    "kmnist": DataSpec((1, 28, 28), 10), "synthetic": DataSpec((1, 28, 28), 10),
    "smnist": DataSpec((28,), 10, temporal=True, time_steps=28),
    "psmnist": DataSpec((1,), 10, temporal=True, time_steps=784),
    "nmnist": DataSpec((2, 34, 34), 10, temporal=True, time_steps=20),
    "shd": DataSpec((700,), 20, temporal=True, time_steps=100),
    "dvs_gesture": DataSpec((2, 32, 32), 11, temporal=True, time_steps=20),
}


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "data" and o not in FROM_FILES])
def test_every_dataset_declares_what_it_yields(compose, option):
    cfg = compose(f"data={option}")
    assert DataSpec.from_config(cfg.data) == DATASETS[option]
    assert cfg.time_steps == (DATASETS[option].time_steps or 25)  # a temporal dataset brings its T


def test_declared_shapes_follow_the_options_they_depend_on(compose):
    assert DataSpec.from_config(compose("data=smnist", "data.mode=pixels").data).time_steps == 784
    assert DataSpec.from_config(compose("data=dvs_gesture", "data.downsample=2").data).input_shape == (2, 64, 64)
    assert DataSpec.from_config(compose("data=nmnist", "data.downsample=2").data).input_shape == (2, 17, 17)
    cfg = compose("data=nmnist", "data.time_steps=8")
    assert cfg.time_steps == 8 and DataSpec.from_config(cfg.data).time_steps == 8


def test_the_model_is_built_from_the_datasets_description(compose):
    assembly = assemble(compose(*SMALL, "data.image_size=12", "data.num_classes=4", "model.arch=8C3-MP2-FC4"))
    assert assembly.parts.model.input_shape == (1, 12, 12)
    assert assembly.spec == DataSpec((1, 12, 12), 4)
    assert assembly.parts.model.blocks[-1].out_shape == (4,)


def test_a_run_is_assembled_once_into_named_records(compose):
    assembly = assemble(compose(*SMALL, "scheduler=onecycle", "trainer.max_steps=7"))
    assert isinstance(assembly.parts, Parts) and isinstance(assembly.options, TrainerOptions)
    assert assembly.options.time_steps == 4 and assembly.options.batch_size == 16 and assembly.options.max_steps == 7
    assert assembly.options.total_steps(len(assembly.data.train)) == 7
    schedule = assembly.parts.scheduler(torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3), total_steps=7)
    assert isinstance(schedule, torch.optim.lr_scheduler.OneCycleLR) and schedule.total_steps == 7
    assert assembly.parts.optimizer.param_groups[0]["params"][0] is next(assembly.parts.model.parameters())
    assert Preflight.take() is None  # nothing handed over outside a single run


def test_arch_override(compose):
    parts = assemble(compose(*SMALL, "model.arch=32C3-MP2-FC128-FC10")).parts
    assert parts.model.layer_names == ["L1_32C3_MP2", "L2_FC128", "L3_FC10"]


@pytest.mark.parametrize("override, key", [
    ("time_steps=0", "time_steps"), ("neuron.beta=1.5", "neuron.beta"), ("neuron.threshold=0", "neuron.threshold"),
    ("neuron.reset=soft", "neuron.reset"), ("neuron.tau=-2", "neuron.tau"), ("neuron=synaptic neuron.alpha=2", "neuron.alpha"),
    ("neuron.learn_beta=true neuron.beta=1.0", "neuron.beta"), ("neuron=graded neuron.decay=0", "neuron.decay"),
    ("optimizer.lr=-1", "optimizer.lr"), ("optimizer.betas=[1.5,0.9]", "optimizer.betas"),
    ("optimizer=sgd optimizer.momentum=-1", "optimizer.momentum"),
    ("scheduler=onecycle scheduler.pct_start=1.5", "scheduler.pct_start"),
    ("scheduler=cosine +scheduler.warmup=3", "scheduler.warmup"), ("+neuron.colour=red", "neuron.colour"),
    ("+trainer.colour=red", "trainer.colour"), ("trainer.max_time=0", "trainer.max_time"),
    ("neuron=rlif model.arch=FC16-RFC10 model.readout_neuron=li loss=membrane_sum_ce readout=membrane", "model.arch"), ("data.batch_size=0", "data.batch_size"), ("data.batch_size=100000", "data.batch_size"),
    ("trainer.epochs=-1", "trainer.epochs"), ("trainer.max_steps=-5", "trainer.max_steps"),
    ("surrogate.alpha=0", "surrogate.alpha"), ("surrogate=fast_sigmoid surrogate.slope=-1", "surrogate.slope"),
    ("encoder=poisson encoder.gain=-1", "encoder.gain"), ("encoder=rate encoder.threshold=0", "encoder.threshold"),
    ("loss.reduction=max", "loss.reduction"), ("loss=mse_count loss.correct_rate=2", "loss.correct_rate"),
    ("task=eval", "ckpt_path"), ("ckpt_path=/no/such.pt", "ckpt_path"),
    ("model.arch=12X5-FC10", "model.arch"), ("model.arch=64C30-FC10", "model.arch"), ("readout=max", "readout"),
    ("model.precision=fp16", "model.precision"), ("model.init=orthogonal", "model.init"),
    ("data.input_shape=[1,0,28]", "data.input_shape"), ("data.num_classes=1", "data.num_classes"),
    ("time_steps=100000000", "time_steps"),
    ("neuron=alif neuron.tau_adapt=0", "neuron.tau_adapt"), ("neuron=alif neuron.adaptation=-1", "neuron.adaptation"),
    ("neuron=alif neuron.tau=-1", "neuron.tau"), ("neuron=rlif neuron.tau=0 model.arch=FC16-RFC10", "neuron.tau"),
    ("neuron=rlif neuron.recurrence=full model.arch=FC16-RFC10", "neuron.recurrence"),
    ("neuron=rlif model.arch=FC16-FC10", "model.arch"), ("model.arch=RFC16-FC10", "model.arch"),
    ("model.readout_neuron=spiking", "model.readout_neuron"),
    ("model.readout_neuron=li loss=spike_count_ce", "model.readout_neuron"),
    ("model.readout_neuron=li readout=spike_count", "readout"),
    ("neuron=graded model.readout_neuron=li loss=membrane_sum_ce readout=membrane", "model.readout_neuron"),
    ("trainer.figures=never", "trainer.figures"), ("model.arch=8C3p1-BN-MP2-BN-FC10", "model.arch"),
    ("model.arch=FC16-DO2-FC10", "model.arch"), ("trainer.curve_points=-1", "trainer.curve_points"),
    ("trainer.curve_samples=0", "trainer.curve_samples"), ("trainer.grad_clip=true", "trainer.grad_clip"),
    ("surrogate.scale=0", "surrogate.scale"), ("surrogate=multi_gaussian surrogate.sigma=0", "surrogate.sigma"),
    ("model.recurrent_init=identity", "model.recurrent_init"), ("model.recurrent_gain=0", "model.recurrent_gain"),
    ("neuron.tau=20 neuron.tau_std=5", "neuron.tau_std"), ("neuron.tau_std=-1", "neuron.tau_std"),
    ("trainer.skip_nonfinite=-1", "trainer.skip_nonfinite"),
    ("neuron=rlif model.arch=FC16-FC10", "model.arch"), ("+trainer.epoch=3", "trainer.epoch"),
    ("+trainer.colour=red", "trainer.colour"), ("trainer.energy_mac_pj=-1", "trainer.energy_mac_pj"),
    ("data.image_size=0", "data.image_size"), ("+data.nois=0.3", "data.nois"), ("+data.colour=1", "data.colour"),
])
def test_bad_values_refused_before_work(compose, override, key):
    """Refused, naming the key, with an example that is itself accepted in place of the bad value."""
    with pytest.raises(ConfigError) as err:
        assemble(compose(*SMALL, *override.split()))
    assert err.value.key == key and "For example: snnrun " in str(err.value)
    if key == "ckpt_path" or "fit in memory" in str(err.value):
        return  # a file no test has; the free memory, which moves (test_a_run_too_large_for_memory_names_the_sizes)
    example = str(err.value).split("For example: snnrun ")[1].split(" (")[0].split()
    kept = [o for o in override.split() if o.lstrip("+").split("=")[0] not in {e.split("=")[0] for e in example}
            and not o.lstrip("+").startswith(key + "=")]
    try:
        assemble(compose(*SMALL, *kept, *example), dry=True)
    except ConfigError as again:
        assert again.key != key, f"the example {example} is refused too: {again}"


def test_constructor_messages_keep_their_wording(compose):
    with pytest.raises(ConfigError, match=r"neuron.beta=1.5 is not allowed: neuron.beta must be in \(0, 1\]. "
                                          r"For example: snnrun neuron.beta=0.9"):
        assemble(compose(*SMALL, "neuron.beta=1.5"))


def test_a_run_too_large_for_memory_names_the_sizes(compose, monkeypatch):
    monkeypatch.setattr(devices, "available_memory", lambda device: 8 * 2**30)  # free memory varies between calls
    with pytest.raises(ConfigError) as err:
        assemble(compose(*SMALL, "time_steps=100000000"))
    message = str(err.value)
    assert "8.0 GiB available" in message and "FC1000-FC10" in message
    suggested = int(message.rsplit("time_steps=", 1)[1])
    assembly = assemble(compose(*SMALL, "trainer.max_steps=1"))
    check_memory(assembly.parts.model, replace(assembly.options, time_steps=suggested), torch.device("cpu"))  # fits
    sizes = (64, 10**8)  # a test split that large
    with pytest.raises(ConfigError) as err:  # not one step fits: the batch is named, not time_steps=1
        check_memory(assembly.parts.model, replace(assembly.options, eval_batch_size=10**8), torch.device("cpu"), sizes)
    assert err.value.key == "data.eval_batch_size"
    smaller = int(str(err.value).rsplit("data.eval_batch_size=", 1)[1])
    check_memory(assembly.parts.model, replace(assembly.options, eval_batch_size=smaller), torch.device("cpu"), sizes)
    # a batch is never larger than its split: 10**8 over 16 test samples is a batch of 16
    check_memory(assembly.parts.model, replace(assembly.options, eval_batch_size=10**8), torch.device("cpu"), (64, 16))
    with pytest.raises(ConfigError) as err:  # temporal data: T is the data's, so the example lowers the batch
        check_memory(assembly.parts.model, replace(assembly.options, time_steps=10**6), torch.device("cpu"), (64, 16),
                     temporal=True)
    assert err.value.key in ("data.batch_size", "data.eval_batch_size") and "the data's T" in str(err.value)


def test_one_cycle_fits_runs_of_any_length():
    """torch's OneCycleLR divides by zero when a phase has no step; short runs still get a schedule."""
    from snnrun.run.schedules import onecycle

    for total in range(1, 12):
        for pct in (0.0, 0.1, 0.25, 0.5, 1.0):
            optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
            scheduler = onecycle(optimizer, total, pct)
            lrs = []
            for _ in range(total):
                optimizer.step()
                scheduler.step()
                lrs.append(optimizer.param_groups[0]["lr"])
            assert all(0 < lr <= 0.1 + 1e-12 for lr in lrs)
    long = onecycle(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), 1000, 0.25)
    assert long.total_steps == 1000 and long._schedule_phases[0]["end_step"] == 249  # long runs: torch's own schedule


def test_memory_estimate_counts_the_bytes_of_the_state_type(compose, monkeypatch):
    """fp32 and bf16 networks keep 4-byte states; a float64 network needs twice the state memory."""
    assembly = assemble(compose(*SMALL, "trainer.max_steps=1"))
    model, options = assembly.parts.model, assembly.options
    assert devices.state_bytes(model) == 4
    need = {}
    for name, net in (("fp32", model), ("fp64", copy.deepcopy(model).double())):
        monkeypatch.setattr(devices, "available_memory", lambda device: 1)
        with pytest.raises(ConfigError) as err:
            check_memory(net, options, torch.device("cpu"), (10**6, 10**6))  # splits larger than both batches
        need[name] = float(str(err.value).split("needs about ")[1].split(" GiB")[0])
    assert devices.state_bytes(model.double()) == 8
    batch = max(options.batch_size, options.eval_batch_size)
    states = model.state_numel * batch * options.time_steps / 2**30
    params = 4 * sum(p.numel() for p in model.parameters()) / 2**30
    assert need["fp32"] == pytest.approx(round(4 * states + 4 * params, 1), abs=0.051)
    assert need["fp64"] == pytest.approx(round(8 * states + 8 * params, 1), abs=0.051)


def test_a_bug_inside_snnrun_is_not_reported_as_a_bad_option(compose, monkeypatch):
    """A TypeError/ValueError raised by snnrun's own code while a part is built keeps its traceback;
    the same exception raised by a library about a configured value is the user's error."""
    from snnrun.core import neurons

    def broken(*args, **kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(neurons, "_decay", broken)  # called by LIF.__init__ with the configured beta
    with pytest.raises(ValueError, match="an internal inconsistency") as err:
        assemble(compose(*SMALL))
    assert not isinstance(err.value, ConfigError)
    monkeypatch.undo()
    with pytest.raises(ConfigError) as err:  # torch.optim.Adam refuses the betas: a user error, exit 2
        assemble(compose(*SMALL, "optimizer.betas=[1.5,0.9]"))
    assert err.value.key == "optimizer.betas" and "Invalid beta parameter" in str(err.value)  # the key torch names
    assert "For example: snnrun optimizer.betas=[0.9,0.999]" in str(err.value)  # the shipped adam's value
