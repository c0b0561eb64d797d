"""The figures a run draws at its evaluations: spike rasters and output membranes, time in whole steps."""

from __future__ import annotations

import torch


def _panels(width: float, height: float, k: int, right: float):
    """A figure of k panels side by side with fixed margins (inches): a constrained layout would
    cost more than the drawing at every evaluation."""
    from matplotlib.figure import Figure  # imported only when a figure is drawn: keeps the CLI's start fast
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.75 / width, right=1 - right / width, bottom=0.5 / height, top=1 - 0.3 / height,
                        wspace=0.12)
    axes = fig.subplots(1, k, sharey=True, squeeze=False)[0]
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # time steps are whole: no tick at 0.2
    return fig, axes


def _name(label: int, classes: list[str] | None) -> str:
    return f"{label} ({classes[label]})" if classes else str(label)


def raster_figure(spikes: torch.Tensor, labels: list[int], max_neurons: int = 512, classes: list[str] | None = None):
    """One layer's spikes [T, K, *] for K samples -> a figure with a panel per sample: a mark at
    (time step, neuron) for every spike, the first ``max_neurons`` neurons of the layer."""
    t, k = spikes.shape[:2]
    flat = spikes.detach().reshape(t, k, -1).cpu()
    n = min(flat.shape[2], max_neurons)
    fig, axes = _panels(1.0 + 2.6 * k, 3.2, k, right=0.15)
    for i, ax in enumerate(axes):
        steps, neurons = (flat[:, i, :n] > 0).nonzero(as_tuple=True)
        ax.scatter(steps.numpy(), neurons.numpy(), s=6, marker="|", color="black", linewidths=0.8)
        ax.set_xlim(-0.5, t - 0.5)
        ax.set_ylim(-0.5, n - 0.5)
        ax.set_xlabel("time step")
        ax.set_title(f"sample {i}, label {_name(labels[i], classes)}", fontsize="medium")
        if i == 0:
            ax.set_ylabel("neuron" + (f" (first {n} of {flat.shape[2]})" if flat.shape[2] > n else ""))
    return fig


def membrane_figure(mem: torch.Tensor, labels: list[int], threshold: float | None = None,
                    classes: list[str] | None = None):
    """The output membranes [T, K, C] of K samples -> a figure with a panel per sample: one
    labelled line per class, named where the data names its classes (the true class drawn
    thicker), and the threshold dashed."""
    values = mem.detach().double().cpu()
    values = values.masked_fill(~torch.isfinite(values), float("nan"))  # a blown-up run still gets a picture
    t, k, c = values.shape
    fig, axes = _panels(1.9 + 3.2 * k, 3.4, k, right=1.15)
    for i, ax in enumerate(axes):
        for j in range(c):
            ax.plot(range(t), values[:, i, j].numpy(), label=_name(j, classes), linewidth=2.4 if j == labels[i] else 1.0)
        if threshold is not None:
            ax.axhline(threshold, linestyle="--", color="grey", linewidth=1.0, label="threshold")
        ax.set_xlabel("time step")
        ax.set_title(f"sample {i}, label {_name(labels[i], classes)}", fontsize="medium")
        if i == 0:
            ax.set_ylabel("membrane potential U (V)")
    ax.legend(title="class", fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig
