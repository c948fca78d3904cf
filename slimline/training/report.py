"""The train_baseline stage's markdown report: the baseline every compression is measured against."""
from __future__ import annotations

from slimline.params import NetworkParams
from slimline.report import markdown_table
from slimline.training.trainer import Trained, latency_line


def _model_line(net: NetworkParams, t: Trained) -> str:
    """A cnn's structure, or which model (and weights) the baseline is."""
    if t.spec.model == "cnn":
        return f"Structure: `{t.results['structure']}`\n\n"
    line = f"Model `{t.spec.model}`" + (f" with `{net.kwargs}`" if net.kwargs else "")
    if net.weights:
        line += f", weights from `{net.weights}`" + (" (not retrained)" if net.skip_training else "")
    return line + ".\n\n"


def baseline_markdown(net: NetworkParams, t: Trained) -> str:
    """reports/train_baseline.md's body: accuracy, size, the model, training speed, latency, epochs."""
    r, run = t.results, t.run
    return (f"## train_baseline\n\nTest accuracy **{r['test_accuracy']:.4f}** "
            f"(val {r['val_accuracy']:.4f}) after {r['epochs']} epochs; {r['params']:,} params, "
            f"{r['flops'] / 1e6:.2f} MFLOPs per image.\n\n"
            + _model_line(net, t)
            + f"Trained in {run['train_seconds']:.1f} s on {run['device']} "
            f"({run['samples_per_s']:.0f} samples/s). {latency_line(run)}\n\n### Epochs\n\n"
            f"{markdown_table(t.fit.history)}\n")
