"""What a person sees in TensorBoard: figures with axes, a threshold line and labelled classes."""

import torch

from snnrun.run.figures import membrane_figure, raster_figure


def test_membrane_figure_has_axes_threshold_and_a_labelled_line_per_class():
    mem = torch.randn(12, 2, 10)
    mem[3, 1, 4] = float("inf")  # a blown-up run still gets a picture
    fig = membrane_figure(mem, labels=[7, 4], threshold=1.0)
    axes = fig.get_axes()
    assert len(axes) == 2
    for ax, label in zip(axes, (7, 4)):
        assert ax.get_xlabel() == "time step" and f"label {label}" in ax.get_title()
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [str(c) for c in range(10)] + ["threshold"]
        assert lines[-1].get_ydata()[0] == 1.0 and lines[-1].get_linestyle() == "--"
        assert lines[label].get_linewidth() > lines[(label + 1) % 10].get_linewidth()  # the true class stands out
        assert list(lines[0].get_xdata()) == list(range(12))
    assert "U (V)" in axes[0].get_ylabel()
    legend = [t.get_text() for t in axes[-1].get_legend().get_texts()]
    assert legend == [str(c) for c in range(10)] + ["threshold"]


def test_raster_figure_marks_every_spike_at_its_step_and_neuron():
    spikes = torch.zeros(6, 2, 3, 4)  # [T, K, 3x4 neurons]
    spikes[2, 0, 1, 2] = 1  # neuron 1*4+2 = 6 of sample 0 fires at step 2
    spikes[5, 1, 0, 0] = 1
    fig = raster_figure(spikes, labels=[3, 8])
    first, second = fig.get_axes()
    assert first.get_xlabel() == "time step" and first.get_ylabel() == "neuron"
    assert first.collections[0].get_offsets().tolist() == [[2, 6]]
    assert second.collections[0].get_offsets().tolist() == [[5, 0]]
    assert first.get_ylim() == (-0.5, 11.5) and "label 8" in second.get_title()


def test_time_steps_are_whole_numbers_on_both_figures():
    """A T=2 run shows ticks at steps 0 and 1, never at 0.2, 0.4, ..."""
    for fig in (raster_figure(torch.ones(2, 1, 3), labels=[0]), membrane_figure(torch.randn(2, 1, 3), labels=[0])):
        for ax in fig.get_axes():
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_torn_last_line_of_metrics_is_cut_before_the_next_record(tmp_path):
    import json

    from snnrun.atomic import append_line

    path = tmp_path / "metrics.jsonl"
    append_line(path, json.dumps({"step": 1}))
    with open(path, "a") as f:
        f.write('{"step": 2, "test_ac')  # a crash in the middle of an append
    append_line(path, json.dumps({"step": 3}))
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 3]


def test_the_atomic_writer_leaves_the_old_file_and_no_temporary_when_a_write_fails(tmp_path):
    import os

    import pytest

    from snnrun.atomic import write_atomic

    path = tmp_path / "results.json"
    write_atomic(path, "old\n")
    seen = []

    def crash(tmp):
        seen.append(tmp.name)
        tmp.write_bytes(b"half")
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        write_atomic(path, crash)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    assert seen == [f"results.json.{os.getpid()}.tmp"]  # two processes never share a temporary name
    write_atomic(path, b"new\n")
    assert path.read_text() == "new\n"
