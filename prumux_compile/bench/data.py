"""Labelled evaluation data (``--eval-data FILE``) for accuracy measured through an engine.

Reads GLUE-style TSV, CSV or JSON Lines, picks the text column(s) and the optional label column,
maps labels to the checkpoint's class ids and tokenizes the way upstream's ``evaluation.py`` does
(docs/checkpoint-formats.md section 6: ``padding="max_length"``, ``max_length=128``,
``truncation=True``; sentence pairs as in its ``task_to_keys``).

Column choice (header names matched case-insensitively, surrounding blanks ignored):

- sentence pairs, first match wins: :data:`PAIR_COLUMNS`
  (e.g. MNLI ``premise``/``hypothesis`` or ``sentence1``/``sentence2``, QNLI ``question``/``sentence``,
  QQP ``question1``/``question2``);
- otherwise one text column, first match wins: :data:`TEXT_COLUMNS`;
- label, first match wins: :data:`LABEL_COLUMNS` (absent -> ``labels`` is None; ``columns`` lists what the
  file has, so a caller can refuse a label column it does not recognise).

Labels of a classifier are class ids or names (mapped with ``label2id``); a head with one output is a
regression (STS-B style) and its labels are real numbers (float64).

Tokenizer files sit in the checkpoint directory or, in upstream's layout, in its parent (spec
section 1.2: ``evaluation.py`` loads the model from ``.../best`` and the tokenizer from ``...``).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from prumux_compile.errors import CheckpointError, InputError

__all__ = ["EvalSet", "load_eval_data", "find_tokenizer_dir", "task_for_labels", "PAIR_COLUMNS", "TEXT_COLUMNS",
           "LABEL_COLUMNS", "TOKENIZER_FILES", "TASKS"]

#: (first, second) text columns of sentence-pair tasks, in order of preference.
PAIR_COLUMNS: tuple[tuple[str, str], ...] = (
    ("premise", "hypothesis"),
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("text_a", "text_b"),
    ("text", "text_pair"),
)
#: single text columns, in order of preference.
TEXT_COLUMNS: tuple[str, ...] = ("sentence", "text", "sentence1", "question", "premise", "question1", "text_a")
#: label columns, in order of preference (GLUE MNLI TSV: gold_label; QQP TSV: is_duplicate).
LABEL_COLUMNS: tuple[str, ...] = ("label", "gold_label", "labels", "is_duplicate")
#: a directory holding any of these is taken to hold a tokenizer.
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")

_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclass
class EvalSet:
    """Tokenized evaluation examples.

    Attributes:
        input_ids, attention_mask, token_type_ids: int64 arrays [n, seq_len] (padded to seq_len).
        labels: int64 array [n] of class ids (classification) or float64 array [n] of targets (regression),
            or None when the file has no labels.
        source: the file path as given.
        n: number of examples (rows).
        text_columns: header names of the text column(s) used, one or two (pair).
        label_column: header name of the label column, or None.
        columns: every column name of the file, in file order.
        task: ``"classification"`` or ``"regression"`` (how the labels were read).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray | None
    source: str
    n: int
    text_columns: tuple[str, ...] = ()
    label_column: str | None = None
    columns: tuple[str, ...] = ()
    task: str = "classification"

    def feeds(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Engine inputs for rows ``[start:stop]``: name -> int64 array [rows, seq_len]."""
        return {"input_ids": self.input_ids[start:stop], "attention_mask": self.attention_mask[start:stop],
                "token_type_ids": self.token_type_ids[start:stop]}


# --------------------------------------------------------------------------------------------------
# reading rows


def _read_text(path: Path) -> str:
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:  # newline="": csv sees raw line ends
            return handle.read()
    except UnicodeDecodeError as exc:
        raise InputError(f"eval data {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _iter_delimited(path: Path, delimiter: str) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """Header and (line number, row dict) pairs of a TSV/CSV file with a header row."""
    # GLUE TSVs contain unbalanced quote characters inside sentences: read them unquoted.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
        while not any(f.strip() for f in header):  # leading blank lines
            header = next(reader)
    except StopIteration:
        raise InputError(f"eval data {path}: the file is empty (expected a header row and examples)") from None
    except csv.Error as exc:
        raise InputError(f"eval data {path}: cannot parse the header: {exc}") from None
    seen: dict[str, str] = {}
    for name in header:
        key = name.strip().lower()
        if key and key in seen:  # a row dict keeps only the last of two same-named columns
            raise InputError(f"eval data {path}: the header names column {name.strip()!r} twice (columns: "
                             f"{', '.join(header)}); rename one so that it is clear which holds the texts or labels")
        seen[key] = name

    def rows() -> Iterator[tuple[int, dict]]:
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputError(f"eval data {path}, line {reader.line_num}: {exc}") from None
            if not fields or all(not f.strip() for f in fields):
                continue  # blank line
            if len(fields) != len(header):
                raise InputError(f"eval data {path}, line {reader.line_num}: {len(fields)} fields but the header "
                                 f"has {len(header)}")
            yield reader.line_num, dict(zip(header, fields))

    return header, rows()


def _iter_jsonl(path: Path) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """Column names (keys of the first object) and (line number, object) pairs of a JSON Lines file.

    A ``.json`` file whose content is one JSON array of objects is accepted too.
    """
    text = _read_text(path)
    if not text.strip():
        raise InputError(f"eval data {path}: the file is empty (expected one JSON object per line)")
    records: list[tuple[int, object]] = []
    if text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"eval data {path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        records = [(i + 1, obj) for i, obj in enumerate(array)]  # position in the array, 1-based
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputError(f"eval data {path}, line {lineno}: invalid JSON: {exc.msg}") from None
    for lineno, obj in records:
        if not isinstance(obj, dict):
            raise InputError(f"eval data {path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
    if not records:
        raise InputError(f"eval data {path}: the file is empty (expected one JSON object per line)")
    return list(records[0][1].keys()), iter(records)  # type: ignore[arg-type]


def _pick_columns(header: list[str], path: Path) -> tuple[str, str | None, str | None]:
    """(text column, pair column or None, label column or None) as spelt in ``header``."""
    by_lower: dict[str, str] = {}
    for name in header:
        by_lower.setdefault(str(name).strip().lower(), name)
    first = second = None
    for a, b in PAIR_COLUMNS:
        if a in by_lower and b in by_lower:
            first, second = by_lower[a], by_lower[b]
            break
    if first is None:
        for a in TEXT_COLUMNS:
            if a in by_lower:
                first = by_lower[a]
                break
    if first is None:
        singles = ", ".join(TEXT_COLUMNS)
        pairs = ", ".join(f"{a}+{b}" for a, b in PAIR_COLUMNS)
        raise InputError(f"eval data {path}: no text column; columns found: {', '.join(map(str, header)) or 'none'}; "
                         f"accepted: one of {singles}, or a pair {pairs}")
    label = next((by_lower[c] for c in LABEL_COLUMNS if c in by_lower), None)
    return first, second, label


# --------------------------------------------------------------------------------------------------
# labels

_MISSING = object()


class _LabelMapper:
    """Maps one raw label cell to a class id (see :func:`load_eval_data` for the rules)."""

    def __init__(self, label2id: dict[str, int] | None, path: Path):
        self.path = path
        self.label2id = None if label2id is None else {str(k): int(v) for k, v in label2id.items()}
        self.exact = self.label2id or {}
        self.lower: dict[str, int] = {}
        for k, v in self.exact.items():
            self.lower.setdefault(k.strip().lower(), v)
        self.ids = None if self.label2id is None else set(self.label2id.values())

    def known(self) -> str:
        if not self.label2id:
            return "none given (pass the checkpoint's label2id)"
        return ", ".join(f"{k}={v}" for k, v in sorted(self.label2id.items(), key=lambda kv: kv[1]))

    def _unknown(self, raw: object, lineno: int) -> InputError:
        return InputError(f"eval data {self.path}, line {lineno}: unknown label {raw!r}; known labels: {self.known()}")

    def _check_id(self, value: int, raw: object, lineno: int) -> int:
        if value < 0 or (self.ids is not None and value not in self.ids):
            raise self._unknown(raw, lineno)
        return value

    def __call__(self, raw: object, lineno: int) -> object:
        """Class id, or ``_MISSING`` for an empty cell / JSON null / -1 (GLUE's 'no label')."""
        if raw is None:
            return _MISSING
        if isinstance(raw, bool):
            raise self._unknown(raw, lineno)
        if isinstance(raw, (int, np.integer)):
            return _MISSING if raw == -1 else self._check_id(int(raw), raw, lineno)
        if isinstance(raw, float):
            if raw.is_integer():
                return _MISSING if raw == -1 else self._check_id(int(raw), raw, lineno)
            raise self._unknown(raw, lineno)
        if not isinstance(raw, str):
            raise self._unknown(raw, lineno)
        text = raw.strip()
        if text == "":
            return _MISSING
        if text in self.exact:
            return self.exact[text]
        if text.lower() in self.lower:
            return self.lower[text.lower()]
        try:
            value = int(text)
        except ValueError:
            # "1.0" (pandas writes an integer column holding a blank as floats) is class 1, as JSON 1.0 is
            try:
                number = float(text)
            except ValueError:
                raise self._unknown(raw, lineno) from None
            if not number.is_integer():  # also nan / inf
                raise self._unknown(raw, lineno) from None
            value = int(number)
        return _MISSING if value == -1 else self._check_id(value, raw, lineno)


class _TargetMapper:
    """Maps one raw label cell of a regression head to a float target (empty / null: no label)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, raw: object, lineno: int) -> object:
        if raw is None:
            return _MISSING
        if isinstance(raw, bool):
            raise self._bad(raw, lineno)
        if isinstance(raw, str):
            if raw.strip() == "":
                return _MISSING
            try:
                value = float(raw.strip())
            except ValueError:
                raise self._bad(raw, lineno) from None
        elif isinstance(raw, (int, float, np.integer, np.floating)):
            value = float(raw)
        else:
            raise self._bad(raw, lineno)
        if not np.isfinite(value):
            raise self._bad(raw, lineno)
        return value

    def _bad(self, raw: object, lineno: int) -> InputError:
        return InputError(f"eval data {self.path}, line {lineno}: label {raw!r} is not a finite number; the model "
                          "has one output (a regression head, e.g. STS-B similarity), so labels are real numbers")


#: Values of ``load_eval_data(task=...)``.
TASKS = ("classification", "regression")


def task_for_labels(label2id: dict | None) -> str:
    """``"regression"`` for a head with exactly one output (``label2id`` of one entry, HF's ``num_labels == 1``),
    else ``"classification"``."""
    return "regression" if label2id is not None and len(label2id) == 1 else "classification"


# --------------------------------------------------------------------------------------------------
# tokenizer


def find_tokenizer_dir(checkpoint_dir: str | Path) -> Path:
    """Directory holding the tokenizer: ``checkpoint_dir`` itself, else its parent (docs/checkpoint-formats.md
    docs/checkpoint-formats.md §1.2), else — when ``checkpoint_dir`` is a symbolic link — the parent of the folder it
    points to.

    Raises:
        CheckpointError: neither directory holds any of :data:`TOKENIZER_FILES`.
    """
    base = Path(checkpoint_dir)
    candidates = [base, base.parent] if base.parent != base else [base]
    if base.is_symlink():  # a grid of links to runs' best/ folders: the tokenizer sits beside the real best/
        candidates.append(base.resolve().parent)
    for cand in candidates:
        if cand.is_dir() and any((cand / name).is_file() for name in TOKENIZER_FILES):
            return cand
    raise CheckpointError(f"no tokenizer in {base} or its parent {base.parent} "
                          f"(looked for {', '.join(TOKENIZER_FILES)})")


def _load_tokenizer(tokenizer_dir: str | Path):
    directory = find_tokenizer_dir(tokenizer_dir)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/... with multi-line messages
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load the tokenizer in {directory}: {first_line}") from None


# --------------------------------------------------------------------------------------------------


def load_eval_data(path: str | Path, *, tokenizer_dir: str | Path, seq_len: int = 128,
                   label2id: dict[str, int] | None = None, limit: int | None = None,
                   task: str | None = None, read_labels: bool = True) -> EvalSet:
    """Read and tokenize a labelled (or unlabelled) evaluation file.

    Args:
        path: ``.tsv`` (GLUE style: tab-separated, header row, no quoting), ``.csv`` (header row),
            ``.jsonl`` / ``.json`` (one JSON object per line; a ``.json`` array of objects also works).
        tokenizer_dir: the checkpoint directory; the tokenizer is loaded from it or its parent with
            ``transformers.AutoTokenizer.from_pretrained(..., local_files_only=True)``.
        seq_len: padded sequence length L (>= 2); longer inputs are truncated (longest first for pairs).
        label2id: the checkpoint config's ``label2id`` (class name -> id). Labels are mapped as follows:
            JSON integers, integral JSON numbers (``1.0``) and strings of either (``"1"``, ``"1.0"``: the same in
            TSV, CSV and JSON) are class ids, kept as they are when they are ids of ``label2id`` (any id >= 0 when
            ``label2id`` is None); other strings are looked up in ``label2id`` (exact, then case-insensitive). A
            name match wins over reading the string as a number; a non-integral number (``1.5``) is an unknown
            label. Empty cells, JSON null and -1 (GLUE test splits) mean "no label"; if every row is unlabelled
            ``labels`` is None.
        limit: keep only the first ``limit`` examples (>= 1), or all when None.
        task: ``"classification"`` (labels as above) or ``"regression"`` (a one-output head: every label is a
            finite real number, read as float64; empty cells and JSON null mean "no label"); None picks
            :func:`task_for_labels` of ``label2id`` (one entry: regression).
        read_labels: False reads the texts only (``build --eval-unlabelled``): a label column, if any, is not
            parsed, so labels the checkpoint does not know are no error; ``labels`` is None.

    Returns:
        :class:`EvalSet` with int64 ``input_ids``/``attention_mask``/``token_type_ids`` [n, seq_len] and
        int64 (classification) or float64 (regression) ``labels`` [n], or None.

    Raises:
        InputError: missing file, unsupported extension, empty file, no text column (lists the columns
            found and the accepted names), a malformed row, an unknown label (names the label, the line
            and the known labels) or a regression label that is not a number, only some rows labelled, or a
            bad ``seq_len``/``limit``/``task``.
        CheckpointError: no tokenizer in ``tokenizer_dir`` or its parent, or it cannot be loaded.
    """
    p = Path(path)
    task = task_for_labels(label2id) if task is None else task
    if task not in TASKS:
        raise InputError(f"eval data: task must be one of {', '.join(TASKS)}, got {task!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 2:
        raise InputError(f"eval data: seq_len must be an integer >= 2, got {seq_len!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise InputError(f"eval data: limit must be None or an integer >= 1, got {limit!r}")
    if not p.exists():
        raise InputError(f"eval data {p}: no such file")
    if not p.is_file():
        raise InputError(f"eval data {p}: not a regular file")
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise InputError(f"eval data {p}: unsupported extension {p.suffix!r}; use one of {', '.join(_FORMATS)}")

    if fmt == "jsonl":
        header, rows = _iter_jsonl(p)
    else:
        header, rows = _iter_delimited(p, "\t" if fmt == "tsv" else ",")
    text_col, pair_col, label_col = _pick_columns(header, p)
    if not read_labels:
        label_col = None
    mapper = _LabelMapper(label2id, p) if task == "classification" else _TargetMapper(p)

    texts: list[str] = []
    pairs: list[str] = []
    labels: list[object] = []
    lines: list[int] = []
    for lineno, row in rows:
        if limit is not None and len(texts) >= limit:
            break
        for col in (text_col, pair_col):
            if col is not None and not isinstance(row.get(col), str):
                found = row.get(col, "missing")
                raise InputError(f"eval data {p}, line {lineno}: column {col!r} must be text, got {found!r}")
        texts.append(row[text_col])
        if pair_col is not None:
            pairs.append(row[pair_col])
        if label_col is not None:
            labels.append(mapper(row.get(label_col), lineno))
        lines.append(lineno)
    if not texts:
        raise InputError(f"eval data {p}: no examples after the header")

    label_arr: np.ndarray | None = None
    if label_col is not None:
        missing = [line for line, lab in zip(lines, labels) if lab is _MISSING]
        if len(missing) == len(labels):
            label_arr = None
        elif missing:
            raise InputError(f"eval data {p}, line {missing[0]}: no label in column {label_col!r} while other rows "
                             f"have one ({len(missing)} of {len(labels)} rows unlabelled)")
        else:
            label_arr = np.asarray(labels, dtype=np.int64 if task == "classification" else np.float64)

    tokenizer = _load_tokenizer(tokenizer_dir)
    enc = tokenizer(texts, pairs if pair_col is not None else None, padding="max_length", max_length=int(seq_len),
                    truncation=True, return_tensors="np", return_token_type_ids=True, return_attention_mask=True)
    n = len(texts)
    input_ids = np.ascontiguousarray(enc["input_ids"], dtype=np.int64)
    attention_mask = np.ascontiguousarray(enc["attention_mask"], dtype=np.int64)
    token_type_ids = np.ascontiguousarray(enc.get("token_type_ids", np.zeros_like(input_ids)), dtype=np.int64)
    for name, arr in (("input_ids", input_ids), ("attention_mask", attention_mask),
                      ("token_type_ids", token_type_ids)):
        if arr.shape != (n, seq_len):  # pragma: no cover - guards tokenizers that ignore max_length
            raise InputError(f"eval data {p}: tokenizer returned {name} of shape {arr.shape}, expected {(n, seq_len)}")
    return EvalSet(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                   labels=label_arr, source=str(path), n=n,
                   text_columns=(text_col,) if pair_col is None else (text_col, pair_col), label_column=label_col,
                   columns=tuple(str(c) for c in header), task=task)


# --------------------------------------------------------------------------------------------------
# texts to classify (prumux-compile predict)


@dataclass
class TextRows:
    """Texts read from a file, without tokenizing them.

    Attributes:
        texts: the first (or only) sentence of every row.
        pairs: the second sentence of every row for sentence-pair files, else None.
        text_columns: header names of the text column(s) used (empty for a plain-text file).
        lines: the file line of every row (1-based).
        blank: blank lines skipped (plain text only).
    """

    texts: list[str]
    pairs: list[str] | None
    text_columns: tuple[str, ...]
    lines: list[int]
    blank: int = 0


def read_texts(path: str | Path) -> TextRows:
    """Texts of ``path``: a ``.tsv`` / ``.csv`` / ``.jsonl`` / ``.json`` file read with the column rules of
    :func:`load_eval_data` (labels, if any, are ignored), or any other file as plain UTF-8 text with one input per
    non-blank line, where a tab separates the two sentences of a pair (every line then must be a pair).

    Raises:
        InputError: missing or non-UTF-8 file, no text column, a malformed row, no rows, or pairs mixed with
            single sentences in a plain-text file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if not p.is_file():
        raise InputError(f"{p}: {'a folder' if p.is_dir() else 'not a regular file'}; give a file of texts")
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        return split_pairs(_read_text(p).splitlines(), str(p))
    header, rows = _iter_jsonl(p) if fmt == "jsonl" else _iter_delimited(p, "\t" if fmt == "tsv" else ",")
    text_col, pair_col, _ = _pick_columns(header, p)
    texts: list[str] = []
    pairs: list[str] = []
    lines: list[int] = []
    for lineno, row in rows:
        for col in (text_col, pair_col):
            if col is not None and not isinstance(row.get(col), str):
                raise InputError(f"{p}, line {lineno}: column {col!r} must be text, got {row.get(col, 'missing')!r}")
        texts.append(row[text_col])
        if pair_col is not None:
            pairs.append(row[pair_col])
        lines.append(lineno)
    if not texts:
        raise InputError(f"{p}: no rows after the header")
    return TextRows(texts, pairs if pair_col is not None else None,
                    (text_col,) if pair_col is None else (text_col, pair_col), lines)


def split_pairs(lines: list[str], source: str) -> TextRows:
    """Plain-text inputs, one per non-blank line; a tab separates the two sentences of a pair.

    Raises:
        InputError: no input, a line with more than one tab, or pairs mixed with single sentences.
    """
    texts: list[str] = []
    pairs: list[str] = []
    numbers: list[int] = []
    blank = 0
    for lineno, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            blank += 1
            continue
        parts = line.split("\t")
        if len(parts) > 2:
            raise InputError(f"{source}, line {lineno}: {len(parts) - 1} tabs; a tab separates the two sentences of "
                             "a pair, so a line holds one sentence or one pair")
        texts.append(parts[0])
        if len(parts) == 2:
            pairs.append(parts[1])
        numbers.append(lineno)
    if not texts:
        raise InputError(f"{source}: no text to classify")
    if pairs and len(pairs) != len(texts):
        raise InputError(f"{source}: {len(pairs)} of {len(texts)} inputs are sentence pairs (tab-separated); give "
                         "either only pairs or only single sentences")
    return TextRows(texts, pairs or None, (), numbers, blank)


def load_tokenizer(tokenizer_dir: str | Path):
    """``transformers.AutoTokenizer`` of ``tokenizer_dir`` or its parent (local files only).

    Raises:
        CheckpointError: no tokenizer there, or it cannot be loaded.
    """
    return _load_tokenizer(tokenizer_dir)
