"""``prumux-compile predict SOURCE [TEXT ...]``: label names and scores for sentences, from a measured artifact.

Only wires :func:`prumux_compile.sources.open_source`, :func:`prumux_compile.bench.data.read_texts` and
:func:`prumux_compile.predict.predict`. Errors print one line on stderr and exit with the error's code (2 bad input
or a missing tokenizer, 4 the artifact's backend is unavailable here).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from prumux_compile.cli.common import handle_errors


def _texts(texts: tuple[str, ...], file: str | None):
    from prumux_compile.bench.data import read_texts, split_pairs
    from prumux_compile.errors import InputError

    if texts and file is not None:
        raise InputError("give texts as arguments or --file, not both")
    if texts:
        return split_pairs(list(texts), "arguments")
    if file is not None and file != "-":
        return read_texts(Path(file))
    if file is None and sys.stdin.isatty():
        raise InputError("no text given: pass TEXT arguments, --file FILE, or pipe one text per line to stdin")
    return split_pairs(sys.stdin.read().splitlines(), "stdin")


@click.command("predict")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--candidate", default=None, metavar="ID",
              help="With a report.json: this candidate instead of the chosen one.")
@click.option("-f", "--file", "file", default=None, metavar="FILE",
              help="Texts to classify: .tsv/.csv/.jsonl with a text column (or a sentence pair, e.g. premise + "
                   "hypothesis; the columns --eval-data accepts), any other file one text per line ('-': stdin).")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Tokenizer folder [default: the checkpoint folder recorded at build time, or its parent].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Rows per engine call, a multiple of N [default: the candidate's benchmark batch].")
@click.option("--no-truncate", is_flag=True,
              help="Refuse inputs longer than the compiled length instead of truncating them.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads [default: those the artifact was measured with].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input on stdout.")
@handle_errors
def predict_cmd(source: Path, texts: tuple[str, ...], candidate: str | None, file: str | None,
                tokenizer: Path | None, batch_size: int | None, no_truncate: bool, threads: int | None,
                as_json: bool) -> None:
    """Classify TEXT (or --file, or stdin) with the artifact SOURCE measured.

    SOURCE is a build's OUT/report.json (its chosen candidate, or --candidate ID), a candidate folder
    OUT/candidates/ID, or an export folder. The artifact is loaded by the backend that built it, with the
    settings it was measured under; texts are tokenized by the checkpoint's own tokenizer exactly as the build
    measured accuracy (padded and truncated to the compiled length). In arguments and plain-text lines a tab
    separates the two sentences of a pair.

    Prints, per input, the label name (id2label), its probability and the text (a regression head: its value);
    --json prints one object per line, with ``line``: the input's line in the file or stdin (its position among
    the TEXT arguments). Blank lines are skipped; their count and the number of truncated inputs go to stderr.
    """
    from prumux_compile.predict import predict
    from prumux_compile.sources import open_source

    rows = _texts(texts, file)
    measured = open_source(source, candidate=candidate, threads=threads)
    result = predict(measured, rows.texts, rows.pairs, tokenizer=tokenizer, batch_size=batch_size,
                     truncate=not no_truncate)
    for i, row in enumerate(result.rows(rows.texts, rows.pairs)):
        if rows.lines:
            row["line"] = rows.lines[i]
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
            continue
        text = row["text"] + (f"\t{row['text_pair']}" if "text_pair" in row else "")
        if result.task == "regression":
            click.echo(f"{row['value']:.4f}\t{text}")
        else:
            click.echo(f"{row['label']}\t{row['score']:.4f}\t{text}")
    art = measured.artifact
    n_trunc = int(result.truncated.sum())
    click.echo(f"{len(rows.texts)} input(s) through {measured.id} ({art.backend}, {Path(art.path).name}, "
               f"N={measured.num_instances}, {result.seq_len} tokens, batches of {result.batch_size}); "
               + (f"{n_trunc} truncated to {result.seq_len} tokens" if n_trunc else "none truncated")
               + (f"; {rows.blank} blank line(s) skipped (--json gives each output its input line)"
                  if rows.blank else ""), err=True)
