"""Pareto charts: accuracy against a cost, a point per (variant, runtime) pair, the front and
the selected pair marked."""
from __future__ import annotations

from pathlib import Path

from slimline.evaluation.selection import pareto_front
from slimline.figures import pyplot, save_png

MARKERS = "osD^vP*X"  # one shape per runtime, in the order the report lists them


def pareto_plot(variants, cost: str, label: str, path: Path, selected: str | None) -> None:
    """Only the front and the selected pair are named: with every variant on two runtimes,
    names on all points overlap into an unreadable band."""
    plt = pyplot()
    front = pareto_front(variants, cost)
    runtimes = list(dict.fromkeys(v.get("runtime", "onnxruntime") for v in variants))
    fig, ax = plt.subplots(figsize=(8, 5))
    named: dict[tuple, list[dict]] = {}  # one label per point: the same file on two runtimes
    for v in variants:                   # has the same bytes and, often, accuracy
        on, chosen = v["name"] in front, v["name"] == selected
        marker = MARKERS[runtimes.index(v.get("runtime", "onnxruntime")) % len(MARKERS)]
        ax.scatter(v[cost], v["accuracy"] * 100, marker=marker, zorder=3,
                   s=60 if chosen else 40 if on else 20,
                   c="tab:red" if chosen else ("tab:blue" if on else "tab:gray"))
        if on or chosen:
            named.setdefault((v[cost], v["accuracy"]), []).append(v)
    for (x, acc), vs in named.items():
        same = len({v.get("variant", v["name"]) for v in vs}) == 1 and len(vs) > 1
        text = (f"{vs[0]['variant']}@{'/'.join(v['runtime'] for v in vs)}" if same
                else ", ".join(v["name"] for v in vs))
        ax.annotate(text, (x, acc * 100), fontsize=6, textcoords="offset points",  # selected: below
                    xytext=(3, -8 if any(v["name"] == selected for v in vs) else 2))
    for i, r in enumerate(runtimes):  # the legend: shapes are runtimes
        ax.scatter([], [], marker=MARKERS[i % len(MARKERS)], c="tab:gray", label=r)
    pts = sorted((v[cost], v["accuracy"] * 100) for v in variants if v["name"] in front)
    ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", c="tab:blue", lw=1, zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against cost, a point per (variant, runtime)\nblue: Pareto front (named), "
                 "red: selected", fontsize=10)
    ax.legend(title="runtime", fontsize=7, title_fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    save_png(fig, path)
