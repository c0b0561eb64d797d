"""What a person sees in TensorBoard: figures with axes, a threshold line and labelled classes."""

import torch

from snnrun.run.logger import membrane_figure, raster_figure


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
