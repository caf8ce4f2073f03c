"""Auto-PruMUX on the trained demo grid: the trade-off, the choices per budget, and how well it is predicted.

Input: the ``report.json`` of ``prumux-compile build demo --seq-len 64 --eval-data demo/eval.tsv -o out`` over the
trained demo grid (``prumux-compile demo-checkpoints demo``). Every number comes from that report: accuracy
measured through the engine on the Rotten Tomatoes test split, throughput of the engine and of eager PyTorch on
the same checkpoint timed side by side in interleaved rounds by ``build``.

Printed (and written with ``--json``):

1. the candidates table: accuracy, engine seq/s, speedup over the compiled N = 1, s = 0 model (the teacher), over
   eager PyTorch of the same checkpoint, and over eager PyTorch of the teacher;
2. the choice of :func:`prumux_compile.select.select` for each accuracy-drop budget (default 0.01, 0.03, 0.05,
   0.10) and its reason;
3. the meta-model (:func:`prumux_compile.select.predict`, PruMUX section 5) fitted on the measured grid: its
   leave-one-out mean absolute errors next to the nearest-neighbour baseline's;
4. a held-out check: one trained configuration (``--withhold``, default ``n2_s0.50``) is removed, the meta-model
   is fitted on the rest and predicts it, and the prediction is compared with its measurement;
5. the demo's accuracy targets (teacher >= 0.80; N = 2 within 3 points of the teacher, N = 5 within 8; s = 0.5
   within 2 points of the same N unpruned; the budget-0.05 choice multiplexed or pruned and faster than the
   teacher), each marked met or missed;
6. whether the multiplexed candidates demultiplex (from ``OUT/candidates/ID/predictions.npz``, the engine's logits
   on the evaluation file, rows g·N .. g·N+N-1 sharing one encoder pass): accuracy on the mux groups whose
   sentences all have one label and on the groups with mixed labels, and the share of groups given one label for
   all their sentences. A model that only read the group's overall polarity would be right on the first kind and
   at chance on the second.

Masked twins (``*_masked``) compile to the same model as their compressed twin; they are listed but left out of
the fits so that no point counts twice. With several precisions per checkpoint (``build``'s default: fp32 and int8
through ONNX Runtime, bf16 through OpenVINO) every candidate is in the table and in the selection; the meta-model
and the held-out check are fitted on the fp32 surface (the build report's ``prediction`` has the per-precision
factors), and the teacher is the N = 1, s = 0 fp32 candidate.

Usage: ``python benchmarks/auto_prumux_demo.py OUT/report.json [--withhold ID] [--budgets 0.01,0.03,0.05,0.10]
[--json PATH]``. Runs in a second (no timing here: the report's measurements are used).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from prumux_compile.select import Candidate, predict, select


def _candidates(report: dict) -> tuple[list[dict], list[Candidate]]:
    rows = [c for c in report["candidates"] if c.get("accuracy") is not None]
    cands = [Candidate(id=c["id"], num_instances=int(c["num_instances"]), sparsity=float(c["sparsity"]),
                       backend=c["backend"], precision=c["precision"], throughput=float(c["throughput"]),
                       accuracy=float(c["accuracy"]), accuracy_source=c.get("accuracy_source", "measured"))
             for c in rows]
    return rows, cands


def _teacher(rows: list[dict]) -> dict:
    return min(rows, key=lambda c: (c["num_instances"], c["sparsity"], c["precision"] != "fp32", c["id"]))


def _checkpoint(cid: str) -> str:
    """The checkpoint folder name of a candidate id (``n2_s0.50@ort-cpu.int8`` -> ``n2_s0.50``)."""
    return cid.split("@")[0]


def _table(rows: list[dict], teacher: dict) -> list[dict]:
    out = []
    for c in sorted(rows, key=lambda c: (c["num_instances"], c["sparsity"], c["id"])):
        out.append({
            "id": c["id"], "num_instances": c["num_instances"], "sparsity": c["sparsity"],
            "precision": c["precision"], "backend": c["backend"],
            "accuracy": c["accuracy"], "throughput": c["throughput"], "eager_throughput": c.get("eager_throughput"),
            "speedup_vs_teacher": c["throughput"] / teacher["throughput"],
            "speedup_vs_eager": c.get("speedup_vs_eager"),
            "speedup_vs_eager_teacher": (c["throughput"] / teacher["eager_throughput"]
                                         if teacher.get("eager_throughput") else None),
        })
    return out


def _point_prediction(cands: list[Candidate], n: int, s: float, threshold: float, chance: float | None) -> dict:
    pred = predict(cands, threshold=threshold, nums=(n,), sparsities=(s,), chance=chance)
    return {**pred.grid[0], "loo": {"accuracy": pred.accuracy_model.loo_mae,
                                    "accuracy_nearest_neighbour": pred.accuracy_model.loo_mae_nearest_neighbour,
                                    "throughput": pred.throughput_model.loo_mae,
                                    "throughput_nearest_neighbour": pred.throughput_model.loo_mae_nearest_neighbour}}


def _nearest(cands: list[Candidate], n: int, s: float) -> tuple[float, float]:
    """Nearest-neighbour prediction in (log N, s), equidistant neighbours averaged (the meta-model's baseline)."""
    d = [math.hypot(math.log(c.num_instances) - math.log(n), c.sparsity - s) for c in cands]
    near = [c for c, x in zip(cands, d) if abs(x - min(d)) <= 1e-12]
    return (sum(c.accuracy for c in near) / len(near), sum(c.throughput for c in near) / len(near))


def demultiplexing(rows: list[dict], out_dir: Path) -> list[dict]:
    """Item 6 of the module docstring for every candidate with N > 1 whose ``predictions.npz`` is in ``out_dir``."""
    import numpy as np

    found = []
    for c in sorted(rows, key=lambda c: (c["num_instances"], c["sparsity"], c["id"])):
        n = int(c["num_instances"])
        path = out_dir / "candidates" / c["id"] / "predictions.npz"
        if n < 2 or not path.is_file():
            continue
        with np.load(path) as z:
            if "labels" not in z.files:
                continue
            pred, labels = z["logits"].argmax(axis=1), z["labels"]
        g = len(labels) // n
        pred, labels = pred[: g * n].reshape(g, n), labels[: g * n].reshape(g, n)
        same = (labels == labels[:, :1]).all(axis=1)
        right = pred == labels
        found.append({"id": c["id"], "num_instances": n, "groups": int(g), "same_label_groups": int(same.sum()),
                      "accuracy_same_label_groups": float(right[same].mean()) if same.any() else None,
                      "accuracy_mixed_label_groups": float(right[~same].mean()) if (~same).any() else None,
                      "groups_given_one_label": float((pred == pred[:, :1]).all(axis=1).mean())})
    return found


def analyse(report: dict, budgets: list[float], withhold: str, out_dir: Path | None = None) -> dict:
    """Everything the module docstring lists, as a JSON-ready dict (item 6 only with ``out_dir``, the build's
    output folder)."""
    rows, cands = _candidates(report)
    if len(rows) < 3:
        raise SystemExit("error: the report has fewer than 3 candidates with an accuracy; run build with --eval-data")
    teacher = _teacher(rows)
    fit = [c for c in cands if not _checkpoint(c.id).endswith("_masked") and c.precision == teacher["precision"]
           and c.backend == teacher["backend"]]
    result: dict = {"teacher": teacher["id"], "table": _table(rows, teacher), "budgets": []}
    for b in budgets:
        sel = select(cands, max_accuracy_drop=b, baseline_id=teacher["id"])
        result["budgets"].append({"max_accuracy_drop": b, "threshold": sel.threshold,
                                  "chosen": sel.chosen.id if sel.chosen else None,
                                  "chosen_accuracy": sel.chosen.accuracy if sel.chosen else None,
                                  "chosen_throughput": sel.chosen.throughput if sel.chosen else None,
                                  "qualifying": [c.id for c in sel.qualifying], "reason": sel.reason})
    outputs = int(teacher.get("num_outputs") or 0)
    chance = 1.0 / outputs if outputs >= 2 else None  # the accuracy floor of a model that learned nothing
    full = predict(fit, threshold=teacher["accuracy"] - 0.05, nums=(1, 2, 5), sparsities=(0.0, 0.5, 0.8),
                   chance=chance)
    result["meta_model"] = {"accuracy": full.accuracy_model.to_dict(), "throughput": full.throughput_model.to_dict()}
    held = next((c for c in fit if c.id == withhold or _checkpoint(c.id) == withhold), None)
    if held is None:
        raise SystemExit(f"error: --withhold {withhold}: no such candidate (have {', '.join(c.id for c in fit)})")
    rest = [c for c in fit if c.id != held.id]
    p = _point_prediction(rest, held.num_instances, held.sparsity, teacher["accuracy"] - 0.05, chance)
    nn_acc, nn_thr = _nearest(rest, held.num_instances, held.sparsity)
    result["withheld"] = {
        "id": held.id, "num_instances": held.num_instances, "sparsity": held.sparsity,
        "predicted_accuracy": p["accuracy"], "measured_accuracy": held.accuracy,
        "accuracy_error": abs(p["accuracy"] - held.accuracy),
        "nearest_neighbour_accuracy": nn_acc, "nearest_neighbour_accuracy_error": abs(nn_acc - held.accuracy),
        "predicted_throughput": p["throughput"], "measured_throughput": held.throughput,
        "throughput_relative_error": abs(p["throughput"] - held.throughput) / held.throughput,
        "nearest_neighbour_throughput_relative_error": abs(nn_thr - held.throughput) / held.throughput,
        "fitted_on": [c.id for c in rest],
    }
    acc = {(c["num_instances"], round(c["sparsity"], 1)): c["accuracy"] for c in rows
           if not _checkpoint(c["id"]).endswith("_masked") and c["precision"] == teacher["precision"]
           and c["backend"] == teacher["backend"]}
    t_acc = teacher["accuracy"]
    targets = [("teacher accuracy >= 0.80", t_acc, t_acc >= 0.80)]
    for n, pts in ((2, 0.03), (5, 0.08)):
        if (n, 0.0) in acc:
            targets.append((f"N={n} within {pts * 100:.0f} points of the teacher", acc[(n, 0.0)] - t_acc,
                            acc[(n, 0.0)] >= t_acc - pts - 1e-12))
    for n in sorted({k[0] for k in acc}):
        if (n, 0.5) in acc and (n, 0.0) in acc:
            targets.append((f"N={n} s=0.5 within 2 points of N={n} s=0", acc[(n, 0.5)] - acc[(n, 0.0)],
                            acc[(n, 0.5)] >= acc[(n, 0.0)] - 0.02 - 1e-12))
    b05 = next((b for b in result["budgets"] if abs(b["max_accuracy_drop"] - 0.05) < 1e-12), None)
    if b05 is not None:
        ch = next((c for c in rows if c["id"] == b05["chosen"]), None)
        ok = ch is not None and (ch["num_instances"] > 1 or ch["sparsity"] > 0.01) and ch["throughput"] > teacher["throughput"]
        targets.append(("budget 0.05 picks a multiplexed or pruned candidate faster than the teacher",
                        b05["chosen"], ok))
    result["targets"] = [{"target": t, "value": v, "met": bool(m)} for t, v, m in targets]
    result["demultiplexing"] = demultiplexing(rows, out_dir) if out_dir is not None else []
    return result


def _print(res: dict) -> None:
    print("candidates (accuracy on the Rotten Tomatoes test split through the engine; seq/s from build):")
    print(f"{'id':<30}{'N':>3}{'s':>7}{'prec':>6}{'accuracy':>10}{'seq/s':>9}{'x teacher':>11}{'x eager':>9}"
          f"{'x eager teacher':>17}")
    for r in res["table"]:
        se = r["speedup_vs_eager"]
        st = r["speedup_vs_eager_teacher"]
        print(f"{r['id']:<30}{r['num_instances']:>3}{r['sparsity']:>7.3f}{r['precision']:>6}{r['accuracy']:>10.4f}"
              f"{r['throughput']:>9.1f}"
              f"{r['speedup_vs_teacher']:>10.2f}x{'' if se is None else f'{se:>8.2f}x'}"
              f"{'' if st is None else f'{st:>16.2f}x'}")
    print("\nAuto-PruMUX choice per accuracy-drop budget (baseline = the teacher):")
    for b in res["budgets"]:
        print(f"  drop <= {b['max_accuracy_drop']:.2f}: {b['chosen']}  -- {b['reason']}")
    mm = res["meta_model"]
    print("\nmeta-model fitted on the measured grid (leave-one-out mean absolute error):")
    for name, unit in (("accuracy", ""), ("throughput", " seq/s")):
        m = mm[name]
        print(f"  {name:<10} model {m['loo_mae']:.4f}{unit}  vs nearest neighbour {m['loo_mae_nearest_neighbour']:.4f}"
              f"{unit}  (terms {', '.join(m['params']['terms'])})")
        choice = m["params"].get("family_choice")
        if choice:
            print(f"             family: {choice['chosen']} ("
                  + "; ".join(f"LOO {c['loo_mae']:.4f}: {c['formula'][:40]}..." for c in choice["candidates"]) + ")")
    w = res["withheld"]
    print(f"\nwithheld {w['id']} (N={w['num_instances']}, s={w['sparsity']:.3f}), fitted on the other "
          f"{len(w['fitted_on'])}:")
    print(f"  accuracy   predicted {w['predicted_accuracy']:.4f}, measured {w['measured_accuracy']:.4f}, error "
          f"{w['accuracy_error']:.4f} (nearest neighbour {w['nearest_neighbour_accuracy_error']:.4f})")
    print(f"  throughput predicted {w['predicted_throughput']:.1f}, measured {w['measured_throughput']:.1f} seq/s, "
          f"error {100 * w['throughput_relative_error']:.1f} % (nearest neighbour "
          f"{100 * w['nearest_neighbour_throughput_relative_error']:.1f} %)")
    print("\ntargets:")
    for t in res["targets"]:
        v = t["value"]
        shown = f"{v:+.4f}" if isinstance(v, float) else str(v)
        print(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {shown}")
    if res.get("demultiplexing"):
        print("\ndemultiplexing (accuracy on mux groups whose sentences share one label / have mixed labels):")
        print(f"{'id':<30}{'N':>3}{'groups':>8}{'one label':>11}{'mixed':>8}{'given one label':>17}")
        for d in res["demultiplexing"]:
            one, mixed = d["accuracy_same_label_groups"], d["accuracy_mixed_label_groups"]
            print(f"{d['id']:<30}{d['num_instances']:>3}{d['groups']:>8}"
                  f"{'-' if one is None else f'{one:.4f}':>11}{'-' if mixed is None else f'{mixed:.4f}':>8}"
                  f"{d['groups_given_one_label']:>17.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="report.json of a build over the demo grid")
    ap.add_argument("--withhold", default="n2_s0.50", help="candidate left out of the fit and predicted")
    ap.add_argument("--budgets", default="0.01,0.03,0.05,0.10", help="accuracy-drop budgets, comma-separated")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    report = json.loads(args.report.read_text())
    res = analyse(report, [float(b) for b in args.budgets.split(",") if b.strip()], args.withhold,
                  args.report.resolve().parent)
    _print(res)
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
