"""``pareto.png``: accuracy vs throughput of every candidate, the Pareto front and the chosen point.

Legibility rules (checked by tests/unit/test_plot.py on the drawn figure):

- points that fall on the same spot (a compressed checkpoint and its masked twin measure the same) get ONE label,
  ``s=0.50 ×2``; other labels are placed greedily at the first of a few offsets around their point where they
  overlap no label placed before, no other point and stay inside the axes;
- the log-scaled throughput axis is labelled with plain numbers at 1-2-5 steps (or, over less than a factor 3,
  at evenly spread round values), and labels that would still touch are thinned, so they never run together;
- the budget line's legend entry carries its value (``budget: accuracy ≥ 0.990``).
"""
from __future__ import annotations

import math
from pathlib import Path

#: Offsets (points) tried, in order, for a label relative to its point: right-up first, then around it.
LABEL_OFFSETS: tuple[tuple[int, int, str, str], ...] = (
    (5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"), (-5, -4, "right", "top"),
    (0, 9, "center", "bottom"), (0, -9, "center", "top"), (9, 0, "left", "center"), (-9, 0, "right", "center"),
    (5, 16, "left", "bottom"), (5, -16, "left", "top"), (-5, 16, "right", "bottom"), (-5, -16, "right", "top"),
)
#: Two points closer than this (in display pixels at the saved size) share one label.
MERGE_PX = 6.0
_MARKERS = {1: "o", 2: "s", 3: "^", 4: "v", 5: "D", 10: "P"}


def _tick_text(value: float, pos=None) -> str:
    if value >= 10000:
        return f"{value / 1000:g}k"
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:g}"


def _set_throughput_ticks(ax, lo: float, hi: float) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    ratio = hi / lo if lo > 0 else math.inf
    if ratio >= 30:
        locator = LogLocator(base=10.0, subs=(1.0, 2.0, 5.0))
    elif ratio >= 3:
        locator = LogLocator(base=10.0, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
    else:
        locator = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10])
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(FuncFormatter(_tick_text))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _thin_tick_labels(ax, fig) -> None:
    """Keep every other x tick until no two tick labels touch (at least one stays); fixed, so redraws agree."""
    from matplotlib.ticker import FixedLocator

    for _ in range(8):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        lo, hi = ax.get_xlim()
        ticks = [(t, v) for t, v in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= v <= hi and t.get_text()]
        boxes = [t.get_window_extent(renderer) for t, _ in ticks]
        if len(ticks) <= 1 or not any(a.x1 + 2 > b.x0 for a, b in zip(boxes, boxes[1:])):
            return
        ax.xaxis.set_major_locator(FixedLocator([v for _, v in ticks][::2]))


def _overlaps(box, others, pad: float = 1.0) -> bool:
    return any(box.x0 < o.x1 + pad and o.x0 < box.x1 + pad and box.y0 < o.y1 + pad and o.y0 < box.y1 + pad
               for o in others)


def _groups(pts: list[dict], ax) -> list[list[dict]]:
    """Points grouped by display position: those within :data:`MERGE_PX` of a group's first point join it."""
    groups: list[tuple[tuple[float, float], list[dict]]] = []
    for c in sorted(pts, key=lambda c: (c["throughput"], c["accuracy"], c["id"])):
        x, y = ax.transData.transform((c["throughput"], c["accuracy"]))
        for (gx, gy), members in groups:
            if math.hypot(x - gx, y - gy) <= MERGE_PX:
                members.append(c)
                break
        else:
            groups.append(((x, y), [c]))
    return [members for _, members in groups]


def _group_label(members: list[dict]) -> str:
    sparsities = sorted({f"{c['sparsity']:.2f}" for c in members})
    ns = sorted({c["num_instances"] for c in members})
    text = "s=" + "/".join(sparsities)
    if len(ns) > 1:
        text = "N=" + "/".join(map(str, ns)) + " " + text
    return text + (f" ×{len(members)}" if len(members) > 1 else "")


def _place_labels(ax, fig, pts: list[dict]) -> list:
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    point_boxes = []
    for c in pts:
        x, y = ax.transData.transform((c["throughput"], c["accuracy"]))
        point_boxes.append(_box(x - 3, y - 3, x + 3, y + 3))
    placed, texts = [], []
    for members in _groups(pts, ax):
        anchor = (members[0]["throughput"], members[0]["accuracy"])
        own = ax.transData.transform(anchor)
        others = [b for b in point_boxes if not (b.x0 <= own[0] <= b.x1 and b.y0 <= own[1] <= b.y1)]
        best = None
        for dx, dy, ha, va in LABEL_OFFSETS:
            t = ax.annotate(_group_label(members), anchor, xytext=(dx, dy), textcoords="offset points", fontsize=7,
                            ha=ha, va=va)
            box = t.get_window_extent(renderer)
            inside = (box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1 and box.y0 >= axes_box.y0
                      and box.y1 <= axes_box.y1)
            if inside and not _overlaps(box, placed) and not _overlaps(box, others, pad=0.0):
                best = (t, box)
                break
            t.remove()
        if best is None:  # crowded: the first offset, even if it touches something
            dx, dy, ha, va = LABEL_OFFSETS[0]
            t = ax.annotate(_group_label(members), anchor, xytext=(dx, dy), textcoords="offset points", fontsize=7,
                            ha=ha, va=va)
            best = (t, t.get_window_extent(renderer))
        placed.append(best[1])
        texts.append(best[0])
    return texts


def _box(x0, y0, x1, y1):
    from matplotlib.transforms import Bbox

    return Bbox([[x0, y0], [x1, y1]])


def pareto_figure(candidates: list[dict], chosen_id: str | None, *, accuracy_label: str,
                  threshold: float | None = None):
    """Draw the plot and return the matplotlib ``Figure`` (Agg backend; the caller closes it).

    Args:
        candidates: dicts with ``id``, ``num_instances``, ``sparsity``, ``throughput`` (sequences/s),
            ``accuracy`` (the task's metric, or None: not plotted) and ``pareto`` (bool).
        chosen_id: the selected candidate (marked with a star), or None.
        accuracy_label: y-axis label (e.g. "accuracy", "teacher agreement", "Pearson r").
        threshold: the budget's floor in that metric, drawn as a dotted line labelled with its value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [c for c in candidates if c.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for n in sorted({c["num_instances"] for c in pts}):
        sub = [c for c in pts if c["num_instances"] == n]
        ax.scatter([c["throughput"] for c in sub], [c["accuracy"] for c in sub], marker=_MARKERS.get(n, "o"),
                   s=40, label=f"N={n}", alpha=0.8)
    front = sorted((c for c in pts if c.get("pareto")), key=lambda c: c["throughput"])
    if front:
        ax.plot([c["throughput"] for c in front], [c["accuracy"] for c in front], "k--", lw=1, label="Pareto front")
    chosen = next((c for c in pts if c["id"] == chosen_id), None)
    if chosen is not None:
        ax.scatter([chosen["throughput"]], [chosen["accuracy"]], marker="*", s=260, c="red", zorder=5,
                   label=f"chosen: {chosen['id']}")
    if threshold is not None:
        ax.axhline(threshold, color="gray", lw=0.8, ls=":", label=f"budget: {accuracy_label} ≥ {threshold:.3f}")
    ax.set_xscale("log")
    if pts:
        lo, hi = min(c["throughput"] for c in pts), max(c["throughput"] for c in pts)
        pad = max(1.25, (hi / lo) ** 0.08)  # room for labels at both ends
        ax.set_xlim(lo / pad, hi * pad)
        _set_throughput_ticks(ax, lo / pad, hi * pad)
        ys = [c["accuracy"] for c in pts] + ([threshold] if threshold is not None else [])
        span = max(max(ys) - min(ys), 0.02)
        ax.set_ylim(min(ys) - 0.12 * span, max(ys) + 0.18 * span)
    ax.set_xlabel("throughput (sequences/s, log scale)")
    ax.set_ylabel(accuracy_label)
    ax.set_title("Candidates: accuracy vs throughput" if accuracy_label == "accuracy"
                 else f"Candidates: {accuracy_label} vs throughput")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _thin_tick_labels(ax, fig)
    if pts:
        _place_labels(ax, fig, pts)
    return fig


def pareto_plot(candidates: list[dict], chosen_id: str | None, path: str | Path, *, accuracy_label: str,
                threshold: float | None = None) -> Path:
    """Write :func:`pareto_figure` to ``path`` (PNG) and return the path."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(candidates, chosen_id, accuracy_label=accuracy_label, threshold=threshold)
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
