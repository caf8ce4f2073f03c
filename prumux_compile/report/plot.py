"""``pareto.png``: accuracy vs throughput of every candidate, the Pareto front and the chosen point."""
from __future__ import annotations

from pathlib import Path


def pareto_plot(candidates: list[dict], chosen_id: str | None, path: str | Path, *, accuracy_label: str,
                threshold: float | None = None) -> Path:
    """Write the plot (matplotlib, Agg backend) and return its path.

    Args:
        candidates: dicts with ``id``, ``num_instances``, ``sparsity``, ``throughput`` (sequences/s),
            ``accuracy`` (0..1 or None: not plotted) and ``pareto`` (bool).
        chosen_id: the selected candidate (marked with a star), or None.
        accuracy_label: y-axis label (e.g. "accuracy" or "teacher agreement").
        threshold: the accuracy floor of the budget, drawn as a dashed line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [c for c in candidates if c.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    markers = {1: "o", 2: "s", 3: "^", 4: "v", 5: "D", 10: "P"}
    for n in sorted({c["num_instances"] for c in pts}):
        sub = [c for c in pts if c["num_instances"] == n]
        ax.scatter([c["throughput"] for c in sub], [c["accuracy"] for c in sub], marker=markers.get(n, "o"),
                   s=40, label=f"N={n}", alpha=0.8)
        for c in sub:
            ax.annotate(f"s={c['sparsity']:.2f}", (c["throughput"], c["accuracy"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    front = sorted((c for c in pts if c.get("pareto")), key=lambda c: c["throughput"])
    if front:
        ax.plot([c["throughput"] for c in front], [c["accuracy"] for c in front], "k--", lw=1, label="Pareto front")
    chosen = next((c for c in pts if c["id"] == chosen_id), None)
    if chosen is not None:
        ax.scatter([chosen["throughput"]], [chosen["accuracy"]], marker="*", s=260, c="red", zorder=5,
                   label=f"chosen: {chosen['id']}")
    if threshold is not None:
        ax.axhline(threshold, color="gray", lw=0.8, ls=":", label="budget")
    ax.set_xscale("log")
    ax.set_xlabel("throughput (sequences/s, log scale)")
    ax.set_ylabel(accuracy_label)
    ax.set_title("Candidates: accuracy vs throughput")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
