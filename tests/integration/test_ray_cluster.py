"""``build --executor ray`` on a two-node Ray cluster started inside the test (one process tree on loopback, no
network): the same candidates, validation results, accuracies and selection as the local executor (timings
aside), placement by hardware label, a worker killed mid-candidate survived (retried on the other node), a
candidate lost twice reported (or failing the build with --require-all), and a candidate's own error stopping the
build with its exit code. About a minute in all; deselect with ``-m "not ray"``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from prumux_compile.cli.main import cli  # noqa: E402
from prumux_compile.driver import BuildOptions, build  # noqa: E402
from prumux_compile.errors import CandidatesLostError, InputError  # noqa: E402
from prumux_compile.executors import BENCH_RESOURCE, HARDWARE_LABEL, CrashInjection, RayExecutor  # noqa: E402
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint  # noqa: E402

pytestmark = pytest.mark.ray

# One-output (STS-B-style) heads: teacher agreement is then Pearson's r with the baseline's outputs, a number that
# depends on every prediction that came back from the cluster (random classifiers all predict one class).
BASE = dict(vocab=1000, max_pos=64, num_layers=2, hidden=32, heads=4, ffn=48, num_labels=1)
GRID = {
    "n1_s0": dict(family="bert"),
    "n2_s0": dict(family="muxplm", num_instances=2),
    "n2_s5": dict(family="prumux_compressed", num_instances=2, heads_kept=[[0, 1], [2]], ffn_kept=[list(range(20)), []]),
}
FAST = dict(seq_len=16, batch_sizes=(6,), rounds=1, warmup=0, threads=1, precisions=("fp32",))
FAST_CLI = ["--seq-len", "16", "--batch-sizes", "6", "--rounds", "1", "--warmup", "0", "--threads", "1",
            "--precision", "fp32"]


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of 1 CPU, each with one benchmark slot; labelled kind-a (head) and kind-b."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {BENCH_RESOURCE: 1},
                                                      "labels": {HARDWARE_LABEL: "kind-a"},
                                                      "include_dashboard": False})
    c.add_node(num_cpus=1, resources={BENCH_RESOURCE: 1}, labels={HARDWARE_LABEL: "kind-b"})
    ray.init(address=c.address, log_to_driver=False)
    nodes = {n["Labels"][HARDWARE_LABEL]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert sorted(nodes) == ["kind-a", "kind-b"]
    yield c.address, nodes
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("raygrid")
    for name, fields in GRID.items():
        write_checkpoint(root / "ckpts" / name, SynthSpec(**BASE, **fields))
    return root / "ckpts"


def _cli(args):
    return CliRunner().invoke(cli, ["build", *args, "--no-progress"])


def _by_id(report):
    return {c["id"]: c for c in report["candidates"]}


def test_ray_build_equals_local_build(cluster, grid, tmp_path, one_torch_thread):
    """Same grid, local executor vs the cluster (artifact store, build cache): equal structure, validation of
    the exported graph, accuracies and selection; the cluster's results fill the driver's cache. One torch thread
    here, as in the cluster's 1-CPU tasks, so the float64 reference sums in the same order."""
    address, nodes = cluster
    budget = ["--max-accuracy-drop", "0"]  # only a candidate whose outputs correlate perfectly with the baseline's
    res = _cli([str(grid), "-o", str(tmp_path / "local"), "--no-cache", *budget, *FAST_CLI])
    assert res.exit_code == 0, res.output
    store = tmp_path / "store"
    store.mkdir()
    res = _cli([str(grid), "-o", str(tmp_path / "ray"), "--executor", f"ray:{address}", "--artifact-store",
                str(store), "--cache-dir", str(tmp_path / "cache"), *budget, *FAST_CLI])
    assert res.exit_code == 0, res.output
    local = json.loads((tmp_path / "local" / "report.json").read_text())
    remote = json.loads((tmp_path / "ray" / "report.json").read_text())

    assert remote["executor"]["kind"] == "ray" and remote["options"]["executor"] == f"ray:{address}"
    assert {n["node_id"] for n in remote["executor"]["nodes"]} == set(nodes.values())
    assert remote["executor"]["failed"] == [] and remote["executor"]["retried"] == []
    assert local["executor"] == {"kind": "local", "retried": [], "failed": []}
    assert list(store.iterdir()) == []  # the build's private folder in the store is gone
    assert sorted(p.name for p in (tmp_path / "ray" / "candidates").iterdir()) == sorted(GRID)

    lc, rc = _by_id(local), _by_id(remote)
    assert sorted(lc) == sorted(rc) == sorted(GRID)
    assert local["selection"]["qualifying"] == ["n1_s0"]  # the premise: timings cannot change the choice
    assert all(lc[cid]["accuracy"] < 0.999 for cid in GRID if cid != "n1_s0")
    for key in ("chosen", "baseline", "baseline_accuracy", "qualifying", "threshold"):
        assert remote["selection"][key] == pytest.approx(local["selection"][key], abs=1e-6), key
    assert remote["accuracy_kind"] == local["accuracy_kind"]
    same_artifact = 0
    for cid in GRID:
        a, b = lc[cid], rc[cid]
        for key in ("checkpoint_files", "family", "num_instances", "sparsity", "model", "passes", "backend",
                    "precision", "accuracy_source", "metric"):
            assert b[key] == a[key], (cid, key)
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1e-6)  # exactly equal with the same variant
        assert a["validation"]["passed"] and b["validation"]["passed"]
        assert b["validation"]["cases"] == a["validation"]["cases"]
        va = json.loads((tmp_path / "local" / "candidates" / cid / "validation.json").read_text())
        vb = json.loads((tmp_path / "ray" / "candidates" / cid / "validation.json").read_text())
        assert vb["artifacts"]["model.onnx"] == va["artifacts"]["model.onnx"]  # the exported graph, case by case
        assert ((tmp_path / "ray" / "candidates" / cid / "model.onnx").read_bytes()
                == (tmp_path / "local" / "candidates" / cid / "model.onnx").read_bytes())
        if b["artifact"]["sha256"] == a["artifact"]["sha256"]:  # ort-cpu picks its graph variant by timing
            same_artifact += 1
            deployed = b["artifact"]["path"]
            assert vb["artifacts"][deployed] == va["artifacts"][deployed]
            pa = np.load(tmp_path / "local" / "candidates" / cid / "predictions.npz")
            pb = np.load(tmp_path / "ray" / "candidates" / cid / "predictions.npz")
            np.testing.assert_array_equal(pb["logits"], pa["logits"])
            assert b["accuracy"] == a["accuracy"]
        # compiled and measured on one of the cluster's nodes, recorded with the node's CPU
        for where in ("compiled_on", "measured_on"):
            assert b[where]["node_id"] in nodes.values() and b[where]["cpu_model"] == a[where]["cpu_model"]
            assert b[where]["hardware"] == next(k for k, v in nodes.items() if v == b[where]["node_id"])
        assert a["measured_on"]["node_id"] is None
    print(f"{same_artifact} of {len(GRID)} candidates deployed the same graph variant in both builds")

    # the driver's cache now holds the cluster's candidates: a local rebuild reuses all, provenance kept
    res = _cli([str(grid), "-o", str(tmp_path / "again"), "--cache-dir", str(tmp_path / "cache"), *budget,
                *FAST_CLI])
    assert res.exit_code == 0, res.output
    again = _by_id(json.loads((tmp_path / "again" / "report.json").read_text()))
    assert all(again[cid]["cached"] for cid in GRID)
    assert {cid: again[cid]["measured_on"] for cid in GRID} == {cid: rc[cid]["measured_on"] for cid in GRID}


def test_hardware_kind_places_every_stage(cluster, grid, tmp_path):
    address, nodes = cluster
    report = build([grid], BuildOptions(out=tmp_path / "out", cache=False, executor=RayExecutor(address),
                                        hardware={"*": "kind-b"}, max_accuracy_drop=1.0, **FAST))
    for c in report["candidates"]:
        assert c["compiled_on"]["node_id"] == c["measured_on"]["node_id"] == nodes["kind-b"], c["id"]
        assert c["measured_on"]["hardware"] == "kind-b"


def test_no_node_of_the_kind_is_refused_before_dispatch(cluster, grid, tmp_path):
    with pytest.raises(InputError) as err:
        build([grid], BuildOptions(out=tmp_path / "out", cache=False, executor=RayExecutor(),
                                   hardware={"ort-cpu": "kind-z"}, **FAST))
    text = str(err.value)
    assert err.value.exit_code == 2
    assert f"needs {BENCH_RESOURCE} 1, 1 CPU(s), label {HARDWARE_LABEL}=kind-z" in text
    assert f"{HARDWARE_LABEL}=kind-a" in text and f"{HARDWARE_LABEL}=kind-b" in text
    assert not (tmp_path / "out").exists()


def test_killed_workers_retried_elsewhere_then_reported(cluster, grid, tmp_path):
    """n2_s0's measure worker dies once: retried on the other node, built. n2_s5's compile worker dies on both
    attempts: reported failed with the reason, left out; the build finishes with the others."""
    _, nodes = cluster
    markers = tmp_path / "markers"
    executor = RayExecutor(crashes=[CrashInjection("n2_s0", "measure", markers, times=1),
                                    CrashInjection("n2_s5", "compile", markers, times=2)])
    report = build([grid], BuildOptions(out=tmp_path / "out", cache=False, executor=executor,
                                        max_accuracy_drop=1.0, **FAST))
    crashed = sorted(p.name.rsplit("-", 1)[0] for p in markers.iterdir())  # one marker per killed worker
    assert crashed == ["crash-n2_s0-measure-0", "crash-n2_s5-compile-0", "crash-n2_s5-compile-1"]

    assert sorted(_by_id(report)) == ["n1_s0", "n2_s0"]
    assert sorted(p.name for p in (tmp_path / "out" / "candidates").iterdir()) == ["n1_s0", "n2_s0"]
    retried = {r["id"]: r["attempts"] for r in report["executor"]["retried"]}
    assert list(retried) == ["n2_s0"]
    [lost] = retried["n2_s0"]
    assert lost["attempt"] == 1 and lost["stage"] == "measure" and "WorkerCrashedError" in lost["error"]
    assert lost["node"]["node_id"] in nodes.values()
    survivor = _by_id(report)["n2_s0"]
    assert survivor["validation"]["passed"]
    assert survivor["measured_on"]["node_id"] != lost["node"]["node_id"]  # retried on the other node
    assert survivor["compiled_on"]["node_id"] != lost["node"]["node_id"]

    [failed] = report["executor"]["failed"]
    assert failed["id"] == "n2_s5"
    assert [a["stage"] for a in failed["attempts"]] == ["compile", "compile"]
    assert {a["node"]["node_id"] for a in failed["attempts"]} == set(nodes.values())  # once on each node
    assert failed["reason"].startswith("lost 2 times to worker faults; last on ") and "WorkerCrashedError" in \
        failed["reason"]
    assert any(w.startswith("1 of 3 candidates lost to worker faults") and "n2_s5" in w for w in report["warnings"])
    assert report["selection"]["chosen"] in ("n1_s0", "n2_s0")
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["executor"]["failed"][0]["id"] == "n2_s5"


def test_require_all_fails_the_build_and_writes_nothing(cluster, grid, tmp_path):
    executor = RayExecutor(crashes=[CrashInjection("n2_s5", "measure", tmp_path / "markers", times=2)])
    with pytest.raises(CandidatesLostError) as err:
        build([grid / "n1_s0", grid / "n2_s5"], BuildOptions(out=tmp_path / "out", cache=False, executor=executor,
                                                             require_all=True, **FAST))
    assert err.value.exit_code == 7
    assert "1 of 2 candidates lost to worker faults (--require-all): n2_s5: lost 2 times" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["markers"]  # no OUT, no temporary OUT


def test_a_candidates_own_error_stops_the_build_with_its_code(cluster, grid, tmp_path):
    """Not a fault: an error of the candidate's code is raised as the local executor raises it (exit 2 here),
    naming the candidate and node; it is not retried."""
    address, _ = cluster
    res = _cli([str(grid / "n1_s0"), "-o", str(tmp_path / "out"), "--executor", f"ray:{address}", "--no-cache",
                "--seq-len", "100", "--batch-sizes", "2", "--threads", "1", "--precision", "fp32"])
    assert res.exit_code == 2, res.output
    assert "--seq-len 100 exceeds the checkpoint's 64 position embeddings (candidate n1_s0 on " in res.output
    assert not (tmp_path / "out").exists()
