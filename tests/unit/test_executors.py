"""The executor layer without a cluster: choosing an executor, the local executor's order of events, moving
candidate folders (object-store bytes, a shared folder) without half-written results, the lost-candidate policy,
the CLI's refusals, and that neither ``--help`` nor a local build imports ray."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prumux_compile.errors import CandidatesLostError, InputError
from prumux_compile.executors import (CandidateTask, CrashInjection, LocalExecutor, Outcome, RayExecutor, Stages,
                                      _fetch, _ObjectStoreTransfer, _SharedDirTransfer, make_executor)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spec, kind, address", [
    (None, LocalExecutor, None),
    ("local", LocalExecutor, None),
    ("ray", RayExecutor, None),
    ("ray:auto", RayExecutor, "auto"),
    ("ray:10.0.0.5:6379", RayExecutor, "10.0.0.5:6379"),
    ("ray:ray://head:10001", RayExecutor, "ray://head:10001"),
])
def test_make_executor(spec, kind, address):
    ex = make_executor(spec)
    assert type(ex) is kind
    assert ex.remote is (kind is RayExecutor)
    if kind is RayExecutor:
        assert ex.address == address
        assert ex.spec == ("ray" if address is None else f"ray:{address}")


@pytest.mark.parametrize("spec, store, words", [
    ("ray:", None, "expected 'local', 'ray'"),
    ("slurm", None, "expected 'local', 'ray'"),
    ("local", "store", "needs --executor ray"),
])
def test_make_executor_refuses(spec, store, words):
    with pytest.raises(InputError, match=words):
        make_executor(spec, artifact_store=store)


def _stages(calls):
    def run(cid, value, *, cand_dir):
        calls.append(("run", cid, value, cand_dir.name))
        return {"id": cid, "value": value}

    def never(*a, **k):
        raise AssertionError("the local executor runs whole candidates only")

    return Stages(run=run, lookup=never, compile=never, measure=never, store=never)


def test_local_executor_runs_in_order_with_events(tmp_path):
    calls, events = [], []
    tasks = [CandidateTask(f"c{i}", (f"c{i}", i * 10), tmp_path / f"c{i}") for i in range(3)]
    out = LocalExecutor().run(tasks, _stages(calls), notify=lambda *e: events.append(e))
    assert calls == [("run", "c0", 0, "c0"), ("run", "c1", 10, "c1"), ("run", "c2", 20, "c2")]
    assert [o.info for o in out] == [{"id": "c0", "value": 0}, {"id": "c1", "value": 10}, {"id": "c2", "value": 20}]
    assert all(o.error is None and o.attempts == [] for o in out)
    assert events == [(0, 3, "c0", None), (1, 3, "c0", {"id": "c0", "value": 0}),
                      (1, 3, "c1", None), (2, 3, "c1", {"id": "c1", "value": 10}),
                      (2, 3, "c2", None), (3, 3, "c2", {"id": "c2", "value": 20})]


def test_local_executor_refuses_a_hardware_kind(tmp_path):
    calls = []
    task = CandidateTask("c0", ("c0", 0), tmp_path / "c0", hardware="h200")
    with pytest.raises(InputError, match="needs --executor ray"):
        LocalExecutor().run([task], _stages(calls))
    assert calls == []


def _folder(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True)
    files = {"model.onnx": os.urandom(3000), "candidate.json": b'{"id": "c"}', "empty.npz": b""}
    for name, data in files.items():
        (path / name).write_bytes(data)
    return files


@pytest.mark.parametrize("kind", ["object store", "shared folder"])
def test_transfer_round_trip(tmp_path, kind):
    files = _folder(tmp_path / "src")
    if kind == "object store":
        transfer = _ObjectStoreTransfer()
    else:
        (tmp_path / "store" / "build").mkdir(parents=True)
        transfer = _SharedDirTransfer(tmp_path / "store" / "build")
    handle = transfer.put(tmp_path / "src", "n2_s0.50@ort-cpu.1.compile")
    _fetch(transfer, handle, tmp_path / "out" / "cand")
    got = {f.name: f.read_bytes() for f in (tmp_path / "out" / "cand").iterdir()}
    assert got == files
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cand"]  # no temporary folder left
    if kind == "shared folder":
        assert [p.name for p in (tmp_path / "store" / "build").iterdir()] == ["n2_s0.50@ort-cpu.1.compile"]
        transfer.cleanup()
        assert not (tmp_path / "store" / "build").exists() and (tmp_path / "store").is_dir()


def test_fetch_failure_leaves_nothing(tmp_path):
    class Broken(_ObjectStoreTransfer):
        def get(self, handle, dest):
            super().get(handle, dest)
            raise OSError(28, "No space left on device")

    _folder(tmp_path / "src")
    transfer = Broken()
    with pytest.raises(OSError):
        _fetch(transfer, transfer.put(tmp_path / "src", "c"), tmp_path / "out" / "cand")
    assert list((tmp_path / "out").iterdir()) == []


def test_shared_folder_not_visible_is_named(tmp_path):
    transfer = _SharedDirTransfer(tmp_path / "missing" / "build")
    _folder(tmp_path / "src")
    with pytest.raises(InputError, match=r"--artifact-store .*missing.* is not visible on node .*same path"):
        transfer.put(tmp_path / "src", "c")


def test_crash_injection_only_for_its_candidate_and_times(tmp_path):
    crash = CrashInjection("n2", "measure", tmp_path / "markers", times=1)
    crash.maybe_crash("n1", "measure")  # another candidate: returns
    crash.maybe_crash("n2", "compile")  # another stage: returns
    assert not (tmp_path / "markers").exists()
    (tmp_path / "markers").mkdir()
    (tmp_path / "markers" / "crash-n2-measure-0-1").touch()  # already crashed once
    crash.maybe_crash("n2", "measure")
    assert len(list((tmp_path / "markers").iterdir())) == 1


@pytest.mark.parametrize("lost, require_all, raises, words", [
    ([], False, False, []),
    (["b"], False, False, ["1 of 3 candidates lost", "b: worker died twice", "executor.failed"]),
    (["b"], True, True, ["1 of 3 candidates lost", "--require-all", "b: worker died twice", "build cache"]),
    (["a", "b", "c"], False, True, ["3 of 3 candidates lost", "none left"]),
])
def test_lost_candidate_policy(lost, require_all, raises, words):
    from prumux_compile.driver import BuildOptions, _lost_candidates

    outcomes = [Outcome(i, None, [{"attempt": 1}, {"attempt": 2}], "worker died twice") if i in lost
                else Outcome(i, {"id": i}) for i in "abc"]
    opts = BuildOptions(out=Path("out"), require_all=require_all)
    if raises:
        with pytest.raises(CandidatesLostError) as err:
            _lost_candidates(outcomes, opts)
        assert err.value.exit_code == 7
        text = str(err.value)
    else:
        notes = _lost_candidates(outcomes, opts)
        assert len(notes) == (1 if lost else 0)
        text = " ".join(notes)
    for w in words:
        assert w in text


def test_options_travel_without_callbacks():
    import pickle

    from prumux_compile.driver import BuildOptions

    opts = BuildOptions(out=Path("out"), progress=print, on_candidate=lambda *a: None, executor=LocalExecutor(),
                        hardware={"*": "h200"})
    back = pickle.loads(pickle.dumps(opts))
    assert back.progress is None and back.on_candidate is None and back.executor is None
    assert back.hardware == {"*": "h200"} and back.out == Path("out")
    assert opts.progress is print  # the original keeps them


def test_cli_hardware_values():
    import click

    from prumux_compile.cli.build import _hardware_map

    assert _hardware_map(None, None, ()) is None
    assert _hardware_map(None, None, ("h200",)) == {"*": "h200"}
    assert _hardware_map(None, None, ("tensorrt=h200", "ort-cpu=xeon-8480")) == {"tensorrt": "h200",
                                                                                    "ort-cpu": "xeon-8480"}
    for bad in (("=h200",), ("tensorrt=",), ("a", "b")):
        with pytest.raises(click.BadParameter):
            _hardware_map(None, None, bad)


@pytest.mark.parametrize("flags, words", [
    (["--hardware", "h200"], "--hardware selects cluster nodes; it needs --executor ray"),
    (["--artifact-store", "STORE"], "--artifact-store moves candidates between cluster nodes"),
    (["--executor", "slurm"], "--executor 'slurm': expected"),
])
def test_cli_refuses_cluster_flags_without_ray(synth_ckpt, tmp_path, flags, words):
    from click.testing import CliRunner

    from prumux_compile.cli.main import cli

    ckpt = synth_ckpt("c", family="bert", vocab=200, max_pos=32, num_layers=1, hidden=16, heads=2, ffn=16)
    flags = [str(tmp_path / "store") if f == "STORE" else f for f in flags]
    res = CliRunner().invoke(cli, ["build", str(ckpt), "-o", str(tmp_path / "out"), "--no-progress", *flags])
    assert res.exit_code == 2, res.output
    assert words in res.output
    assert not (tmp_path / "out").exists()


def test_ray_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(InputError, match=r"needs the Python package 'ray' \(pip install 'prumux-compile\[ray\]'"):
        RayExecutor().run([CandidateTask("c", (), tmp_path / "c")], _stages([]))


def test_help_and_local_executor_never_import_ray(tmp_path):
    code = f"""
import sys
from click.testing import CliRunner
from prumux_compile.cli.main import cli
for args in (["--help"], ["build", "--help"]):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
assert "--executor" in CliRunner().invoke(cli, ["build", "--help"]).output
import prumux_compile.driver
from prumux_compile.executors import CandidateTask, LocalExecutor, Stages
f = lambda *a, **k: {{"id": a[0]}}
out = LocalExecutor().run([CandidateTask("c", ("c",), __import__("pathlib").Path({str(tmp_path)!r}))],
                          Stages(run=f, lookup=f, compile=f, measure=f, store=f))
assert out[0].info == {{"id": "c"}}
print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().replace("'", '"')) == []


@pytest.mark.parametrize("address, words", [
    ("127.0.0.1:1", "nothing answers at 127.0.0.1:1"),
    ("ray://127.0.0.1:1", "nothing answers at 127.0.0.1:1"),
    ("headnode", "expected ray:HOST:PORT"),
])
def test_unreachable_cluster_is_refused_at_once(address, words):
    with pytest.raises(InputError, match=words):  # Ray's own connection attempts would retry for minutes
        RayExecutor(address)._probe(timeout_s=2.0)
    RayExecutor("auto")._probe()  # auto / a new local instance: nothing to probe
    RayExecutor(None)._probe()
