"""Pareto charts: accuracy against a cost, front and selected variant marked."""
from __future__ import annotations

from pathlib import Path

from slimline.evaluation.selection import pareto_front
from slimline.figures import pyplot, save_png


def pareto_plot(variants, cost: str, label: str, path: Path, selected: str | None) -> None:
    plt = pyplot()
    front = pareto_front(variants, cost)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in variants:
        on = v["name"] in front
        ax.scatter(v[cost], v["accuracy"] * 100, c="tab:red" if v["name"] == selected else
                   ("tab:blue" if on else "tab:gray"), s=40 if on else 20, zorder=3)
        ax.annotate(v["name"], (v[cost], v["accuracy"] * 100), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")
    pts = sorted((v[cost], v["accuracy"] * 100) for v in variants if v["name"] in front)
    ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", c="tab:blue", lw=1, zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy vs {label} (blue: Pareto front, red: selected)")
    ax.grid(alpha=0.3)
    save_png(fig, path)

