"""reports/sensitivity.md and reports/sensitivity.png: which layers hurt, for int8 and for
pruning, written by the quantize stage (which sees every model).

* int8: for each static int8 variant that was scanned, each int8 node's sensitivity: the
  validation accuracy that keeping it alone in fp32 gives back (slimline/compress/sensitivity.py).
* pruning: for the structured pruning of prune.ratios: sensitivity, each layer's validation
  drop when it alone is pruned by each scan ratio, and the ratio it got
  (slimline/compress/pruning_ratios.py); with uniform ratios, the ratio each layer got.
"""
from __future__ import annotations

from pathlib import Path

from slimline.figures import pyplot, save_png
from slimline.report import markdown_table

CHART = "sensitivity.png"  # beside the report, which links it
CHART_LINK = f"![accuracy drop per layer]({CHART})"


def _pt(x: float) -> float:
    return round(x * 100, 2)


def render(int8: dict[str, dict], pruning: dict[str, dict], with_chart: bool = True) -> str:
    """int8: quantize's {variant: {"fp32_nodes", "nodes"}}; pruning: {model: layers.json}."""
    md = ["# Which layers hurt", "",
          "Validation accuracy, in points, measured one layer at a time. Written by the `quantize` "
          "stage; the methods are in docs/compression.md.", ""]
    if with_chart:
        md += [CHART_LINK, ""]
    md += ["## int8 (static, QDQ)", ""]
    if not int8:
        md += ["No static int8 variant was scanned (`quantize.variants` has no `static`, or "
               "`quantize.sensitivity_scan` is false and every variant met its budget).", ""]
    for variant, s in int8.items():
        nodes = s["nodes"]
        full = nodes[0]["val_drop"] + nodes[0]["recovered"] if nodes else 0.0
        rows = [{"node": n["node"], "op": n["op"], "given back in fp32 (pt)": _pt(n["recovered"]),
                 "drop left (pt)": _pt(n["val_drop"]), "kept in fp32": n["node"] in s["fp32_nodes"]}
                for n in nodes]
        md += [f"### `{variant}`", "",
               f"All-int8 drop against its fp32 source: {_pt(full)} pt. Most sensitive first; "
               f"{len(s['fp32_nodes'])} node(s) kept in fp32.", "", markdown_table(rows), ""]
    md += ["## Structured pruning", ""]
    if not pruning:
        md += ["No structured pruning in this run (`prune.methods` has no `structured`).", ""]
    for model, p in pruning.items():
        rows = [{**{k: v for k, v in row.items() if not k.startswith("drop@")},
                 **{f"drop if pruned {k[5:]} (pt)": _pt(v) for k, v in row.items() if k.startswith("drop@")}}
                for row in p["layers"]]
        a = p.get("allocation")
        how = (f"Per-layer ratios from the scan: {a['flops']:,} FLOPs against {a['target_flops']:,} "
               f"for uniform `amount` (unpruned {a['base_flops']:,})." if a else
               "Uniform ratios (`prune.ratios: uniform`): no scan ran; `prune.ratios: sensitivity` "
               "measures each layer.")
        md += [f"### `{model}`", "", how, "", markdown_table(rows), ""]
    return "\n".join(md)


def chart(int8: dict[str, dict], pruning: dict[str, dict], path: Path) -> None:
    """One figure, two panels: int8 accuracy given back per node (bars), and pruning drop per
    layer against the ratio (lines). A panel with nothing scanned says so."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{v.removesuffix('.int8_static')}: {n['node']}" for v, s in int8.items() for n in s["nodes"]]
    values = [n["recovered"] * 100 for s in int8.values() for n in s["nodes"]]
    left.barh(range(len(values)), values, color="tab:blue")
    left.set_yticks(range(len(values)), labels, fontsize=6)
    left.invert_yaxis()
    left.set_xlabel("val accuracy given back by keeping it in fp32 (pt)")
    left.set_title("int8: sensitivity per node")
    lines = [(model, row) for model, p in pruning.items() for row in p["layers"]
             if any(k.startswith("drop@") for k in row)]
    for model, row in lines:
        ratios = [k for k in row if k.startswith("drop@")]
        right.plot([float(k[5:]) for k in ratios], [row[k] * 100 for k in ratios], marker="o",
                   label=f"{model}: {row['layer']} (got {row['ratio']:.2f})")
    if lines:
        right.legend(fontsize=6)
    right.set_xlabel("fraction of the layer's channels pruned, that layer alone")
    right.set_ylabel("val accuracy drop (pt)")
    right.set_title("pruning: sensitivity per layer")
    for ax, empty, why in ((left, not values, "no int8 scan ran"),
                           (right, not lines, "no pruning scan ran (prune.ratios: uniform)")):
        if empty:
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    save_png(fig, path)
