"""What a build or an export measured, opened again for use: the artifact, its interface, its tokenizer.

``SOURCE`` (the argument of ``prumux-compile predict`` and of the text ensemble) is one of

* a build's ``OUT/report.json``: its chosen candidate, or another one by id;
* a candidate folder ``OUT/candidates/<id>/`` (or its ``candidate.json``);
* an export folder (``prumux-compile export CKPT -o OUT``: its ``export.json``).

:func:`open_source` turns it into a :class:`Measured`: the artifact record (``candidate.json``'s ``artifact``,
docs/report.md) becomes an :class:`~prumux_compile.engines.base.Artifact` that the backend that built it loads
(:meth:`Measured.load`, through :meth:`~prumux_compile.engines.base.Backend.load`: the measured file with its
measured load options, its sha256 checked first); the interface comes from the folder's ``model.onnx``; the
tokenizer from the checkpoint folder recorded at build time (or its parent, upstream's layout, see
:func:`prumux_compile.bench.data.find_tokenizer_dir`); the tokenization length is the candidate's ``seq_len``
(what its accuracy was measured with; the compiled length of a multiplexed model).

:func:`write_candidate_ensemble` writes the text-in, labels-out Triton ensemble
(:mod:`prumux_compile.triton.ensemble`) next to a candidate's engine model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prumux_compile.errors import CheckpointError, InputError

__all__ = ["Measured", "open_source", "write_candidate_ensemble", "DEFAULT_TOKENS"]

#: Tokenization length of an N = 1 export (no compiled length): upstream ``evaluation.py``'s ``max_length``.
DEFAULT_TOKENS = 128


@dataclass
class Measured:
    """A measured artifact and what is needed to feed it text.

    Attributes:
        id: candidate id (an export folder: its folder name).
        folder: the folder holding the artifact's files.
        record: ``candidate.json`` (an export: ``export.json``).
        artifact: the :class:`~prumux_compile.engines.base.Artifact` (files in ``folder``).
        checkpoint: the checkpoint folder recorded at build / export time (as given then), or None.
        seq_len: tokenization length L in tokens: the candidate's ``seq_len`` (the compiled length of a
            multiplexed model); an N = 1 export: min(128, position table).
        batch_size: default rows per engine call: the benchmark batch of the candidate (a multiple of N).
    """

    id: str
    folder: Path
    record: dict
    artifact: object
    checkpoint: Path | None
    seq_len: int
    batch_size: int

    @property
    def spec(self):
        """The model interface (:class:`~prumux_compile.export.spec.ExportSpec`)."""
        return self.artifact.spec

    @property
    def num_instances(self) -> int:
        """N: rows multiplexed into one encoder pass."""
        return int(self.spec.num_instances)

    @property
    def task(self) -> str:
        """``"regression"`` for a one-output head, else ``"classification"``."""
        return "regression" if int(self.spec.num_labels) == 1 else "classification"

    @property
    def labels(self) -> list[str]:
        """Label name of every output index (``id2label``; ``LABEL_<i>`` where it has no entry)."""
        names = self.spec.id2label
        return [str(names.get(i, f"LABEL_{i}")) for i in range(int(self.spec.num_labels))]

    def tokenizer_dir(self, override: str | Path | None = None) -> Path:
        """The folder of the tokenizer to use: ``override`` (or its parent), else the checkpoint's (or its parent).

        Raises:
            CheckpointError: no tokenizer files there (the message says to pass ``--tokenizer DIR``).
        """
        from prumux_compile.bench.data import find_tokenizer_dir

        if override is not None:
            return find_tokenizer_dir(override)
        if self.checkpoint is None:
            raise CheckpointError(f"{self.folder}: no checkpoint folder is recorded; pass --tokenizer DIR")
        if not self.checkpoint.is_dir():
            raise CheckpointError(f"the checkpoint folder {self.checkpoint} recorded in {self.folder} is not there "
                                  "(a relative path is read from the current folder); pass --tokenizer DIR")
        try:
            return find_tokenizer_dir(self.checkpoint)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; pass --tokenizer DIR") from None

    def load(self):
        """A :class:`~prumux_compile.engines.base.Runner` of the artifact, from the backend that built it.

        Raises:
            EngineBuildError: that backend is unavailable here (the message names it and why).
        """
        from prumux_compile.engines import registry
        from prumux_compile.errors import EngineBuildError

        backend = registry.get(self.artifact.backend)
        ok, why = backend.available()
        if not ok:
            raise EngineBuildError(f"{self.id} was built by backend {self.artifact.backend}, which is unavailable "
                                   f"here: {why}")
        return backend.load(self.artifact)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a {what}")
    return data


def _spec(folder: Path, art: dict):
    from prumux_compile.engines.base import Compiled

    plain = folder / str((art.get("files") or {}).get("plain", "model.onnx"))
    if not plain.is_file():
        raise InputError(f"{plain}: the exported graph is missing (its prumux.* metadata is the model interface)")
    return Compiled.from_onnx(plain).spec


def from_candidate(info: dict, folder: str | Path, *, threads: int | None = None) -> Measured:
    """A :class:`Measured` of a build's candidate record ``info`` whose files are in ``folder``.

    Raises:
        InputError: the record has no artifact (an older build: rebuild), files are missing or changed.
    """
    from prumux_compile.engines.base import Artifact

    folder = Path(folder)
    art = info.get("artifact")
    if not isinstance(info.get("id"), str) or not isinstance(art, dict):
        raise InputError(f"{folder}: not a build's candidate record (no id or no artifact record: written by another "
                         "tool or an older prumux-compile); rebuild it")
    spec = _spec(folder, art)
    n = int(spec.num_instances)
    seq_len = int(info.get("seq_len") or spec.seq_len or min(DEFAULT_TOKENS, spec.max_seq_len))
    batch = int(info.get("batch_size") or 8 * n)
    checkpoint = info.get("checkpoint")
    return Measured(id=info["id"], folder=folder, record=info,
                    artifact=Artifact.from_record(art, folder, spec, threads=threads),
                    checkpoint=Path(checkpoint) if checkpoint else None, seq_len=min(seq_len, spec.max_seq_len),
                    batch_size=max(n, batch - batch % n))


def _from_export(folder: Path, threads: int | None) -> Measured:
    from prumux_compile.engines.base import Artifact

    doc = _read_json(folder / "export.json", "export record")
    art = doc.get("artifact")
    if not isinstance(art, dict):
        raise InputError(f"{folder / 'export.json'}: no artifact record (exported by an older prumux-compile); "
                         "export the checkpoint again")
    spec = _spec(folder, art)
    n = int(spec.num_instances)
    checkpoint = (doc.get("checkpoint") or {}).get("path")
    return Measured(id=folder.name, folder=folder, record=doc,
                    artifact=Artifact.from_record(art, folder, spec, threads=threads),
                    checkpoint=Path(checkpoint) if checkpoint else None,
                    seq_len=int(spec.seq_len or min(DEFAULT_TOKENS, spec.max_seq_len)), batch_size=8 * n)


def open_source(source: str | Path, *, candidate: str | None = None, threads: int | None = None) -> Measured:
    """Open ``source`` (module docstring): a build's ``report.json``, a candidate folder (or its ``candidate.json``)
    or an export folder (or its ``export.json``).

    Args:
        candidate: with a report: this candidate id instead of the chosen one.
        threads: intra-op threads of the runner; None = the measured session's.

    Raises:
        InputError: not one of those, an unknown candidate id (lists the ids), a record without an artifact, a
            missing or changed artifact file, or ``candidate`` given with a source other than a report.
    """
    src = Path(source)
    if src.is_file() and src.name in ("candidate.json", "export.json"):
        src = src.parent
    if src.is_file() and src.suffix == ".json":
        from prumux_compile.report.builder import read_report

        report = read_report(src)
        wanted = candidate or (report.get("selection") or {}).get("chosen")
        ids = [c.get("id") for c in report.get("candidates", [])]
        if wanted is None:
            raise InputError(f"{src}: the build chose no candidate; pass --candidate ID (one of {', '.join(ids)})")
        if wanted not in ids:
            raise InputError(f"{src}: no candidate {wanted!r}; candidates: {', '.join(ids)}")
        folder = src.parent / "candidates" / wanted
        if not (folder / "candidate.json").is_file():
            raise InputError(f"{folder}: the candidate folder of {wanted!r} is missing next to the report")
        return from_candidate(_read_json(folder / "candidate.json", "candidate record"), folder, threads=threads)
    if candidate is not None:
        raise InputError(f"--candidate selects a candidate of a build's report.json; {src} is not one")
    if src.is_dir() and (src / "candidate.json").is_file():
        return from_candidate(_read_json(src / "candidate.json", "candidate record"), src, threads=threads)
    if src.is_dir() and (src / "export.json").is_file():
        return _from_export(src, threads)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    raise InputError(f"{src}: not a build's report.json, a candidate folder (candidate.json) or an export folder "
                     "(export.json)")


def write_candidate_ensemble(repo_dir: str | Path, info: dict, cand_dir: str | Path, engine_name: str, *,
                             tokenizer: str | Path | None = None, overwrite: bool = False,
                             required: bool = False) -> Path | None:
    """Write the text ensemble of :mod:`prumux_compile.triton.ensemble` for the candidate ``info`` whose engine
    model ``repo_dir/engine_name`` is already written: the checkpoint's tokenizer files, the compiled length, the
    labels of ``id2label`` (a regression head: its value).

    Args:
        tokenizer: a tokenizer folder to use instead of the checkpoint's.
        overwrite: replace existing tokenizer / postprocess / ensemble models of the same names.
        required: raise instead of returning None when no tokenizer is found.

    Returns:
        The ensemble's model directory, or None when no tokenizer is found (``tokenizer`` None, ``required``
        False): the checkpoint has none, so text cannot be served.

    Raises:
        TritonConfigError: the ensemble's configs do not agree (nothing is written), models exist without
            ``overwrite``. CheckpointError: ``tokenizer`` (or, with ``required``, the checkpoint) holds no loadable
            tokenizer.
    """
    from prumux_compile.triton.ensemble import write_text_ensemble

    measured = from_candidate(info, cand_dir)
    try:
        tok = measured.tokenizer_dir(tokenizer)
    except CheckpointError:
        if tokenizer is not None or required:
            raise
        return None
    return write_text_ensemble(repo_dir, engine_name=engine_name, tokenizer_dir=tok, max_length=measured.seq_len,
                               labels=measured.labels, task=measured.task, overwrite=overwrite)
