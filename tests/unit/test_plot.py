"""pareto.png stays legible: twins share one label, labels do not overlap each other or other points, log-axis
tick labels never run together, and the budget line's legend entry carries its value. Checked on the drawn
figure (text extents from the renderer), for several candidate sets."""
from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from prumux_compile.report.plot import pareto_figure, pareto_plot  # noqa: E402


def c(cid, n, s, thr, acc, pareto=False):
    return {"id": cid, "num_instances": n, "sparsity": s, "throughput": thr, "accuracy": acc, "pareto": pareto}


# the demo grid of the README: compressed checkpoints and their masked twins measure (almost) the same
DEMO = [
    c("n1_s0.00", 1, 0.002, 63.9, 1.0, True), c("n1_s0.50", 1, 0.5, 110.8, 0.9961, True),
    c("n1_s0.80", 1, 0.8, 233.2, 0.8242), c("n2_s0.00", 2, 0.002, 128.0, 0.60),
    c("n2_s0.50", 2, 0.5, 234.9, 0.5977), c("n2_s0.50_masked", 2, 0.5, 235.3, 0.5977),
    c("n2_s0.80", 2, 0.8, 472.4, 0.6641, True), c("n2_s0.80_masked", 2, 0.8, 470.1, 0.6641),
    c("n5_s0.00", 5, 0.002, 320.0, 0.55), c("n5_s0.50", 5, 0.5, 590.0, 0.56), c("n5_s0.80", 5, 0.8, 1176.4, 0.5430, True),
]
CASES = {
    "demo-grid": (DEMO, "n1_s0.50", 0.99, "accuracy"),
    "five-decades": ([c(f"p{i}", 1 + i % 3, 0.1 * i, 3.0 * 10 ** (i / 2), 0.9 - 0.03 * i) for i in range(10)],
                     "p3", 0.8, "accuracy"),
    "narrow-range": ([c(f"q{i}", 2, 0.05 * i, 110 + 4 * i, 0.8 + 0.01 * i) for i in range(6)], "q5", 0.79,
                     "teacher agreement"),
    "regression": ([c("a", 1, 0.0, 60.0, 0.88), c("b", 2, 0.5, 200.0, 0.81), c("b_masked", 2, 0.5, 200.0, 0.81)],
                   "a", 0.87, "Pearson r"),
}


@pytest.fixture(params=sorted(CASES))
def drawn(request):
    pts, chosen, threshold, label = CASES[request.param]
    fig = pareto_figure(pts, chosen, accuracy_label=label, threshold=threshold)
    fig.canvas.draw()
    yield request.param, pts, fig, threshold, label
    plt.close(fig)


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_labels_do_not_overlap_and_twins_share_one(drawn):
    name, pts, fig, _, _ = drawn
    ax = fig.axes[0]
    r = fig.canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_visible()]
    boxes = [t.get_window_extent(r) for t in texts]
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not _overlap(a, b), (texts[i].get_text(), texts[j].get_text())
    labels = [t.get_text() for t in texts]
    if name == "demo-grid":
        # 11 points, two twin pairs on the same spot: 9 labels, the twins' carry x2
        assert len(labels) == 9
        assert sorted(x for x in labels if "×" in x) == ["s=0.50 ×2", "s=0.80 ×2"]
    if name == "regression":
        assert sorted(labels) == ["s=0.00", "s=0.50 ×2"]
    if name in ("five-decades", "narrow-range"):
        assert len(labels) == len(pts)
        # every label sits clear of every other point's marker
        for t, box in zip(texts, boxes):
            for p in pts:
                x, y = ax.transData.transform((p["throughput"], p["accuracy"]))
                if (p["throughput"], p["accuracy"]) != tuple(t.xy):
                    assert not (box.x0 < x < box.x1 and box.y0 < y < box.y1), (t.get_text(), p["id"])


def test_log_axis_tick_labels_do_not_run_together(drawn):
    _, _, fig, _, _ = drawn
    ax = fig.axes[0]
    r = fig.canvas.get_renderer()
    lo, hi = ax.get_xlim()
    shown = [(t, v) for t, v in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= v <= hi and t.get_text()]
    assert len(shown) >= 2, [t.get_text() for t, _ in shown]
    boxes = [t.get_window_extent(r) for t, _ in shown]
    for a, b in zip(boxes, boxes[1:]):
        assert a.x1 < b.x0, [t.get_text() for t, _ in shown]
    for t, v in shown:  # plain numbers, the value they stand at (no 10^x mathtext, no minor-label clutter)
        text = t.get_text()
        assert "$" not in text
        assert float(text[:-1]) * 1000 == pytest.approx(v) if text.endswith("k") else float(text) == pytest.approx(v)


def test_budget_line_carries_its_value(drawn):
    _, _, fig, threshold, label = drawn
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"budget: {label} ≥ {threshold:.3f}" in legend
    assert fig.axes[0].get_ylabel() == label


def test_pareto_plot_writes_a_png(tmp_path):
    out = pareto_plot(DEMO, "n1_s0.50", tmp_path / "p.png", accuracy_label="accuracy", threshold=0.99)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
