"""The declarative ONNX interface of a compiled model (names, dtypes, dynamic axes, example shapes).

This module says *what* the exported graph looks like; :mod:`prumux_compile.export.onnx_export` says *how*
it is produced (the split of optimum's ``OnnxConfig`` idea). One interface serves every checkpoint family
(field fault F11 in docs/field-faults.md: the spec is declared here, never guessed by a generic exporter):

======================  =========  ==================  ================================================
name                    dtype      shape               meaning
======================  =========  ==================  ================================================
``input_ids``           int64      ``[batch, sequence]``  WordPiece ids, [CLS] = 101 first
``attention_mask``      int64      ``[batch, sequence]``  1 = token, 0 = padding
``token_type_ids``      int64      ``[batch, sequence]``  segment ids in [0, type_vocab_size)
``logits``              float32    ``[batch, num_labels]`` one row per input row
======================  =========  ==================  ================================================

Multiplexed families (``prumux_compressed``, ``prumux_masked``, ``muxplm``) ignore ``attention_mask`` and
``token_type_ids`` exactly as upstream does (docs/checkpoint-formats.md §2, Q2, Q3); the inputs are
still graph inputs so that every family has the same interface. Their sequence axis is dynamic up to the
compiled length ``seq_len`` (the graph pads to it internally); N = 1 families accept any length up to their
position table. The batch axis is dynamic for every family (padding to a multiple of N happens in the graph,).

Example shapes used for export are never 0 or 1 on a dynamic axis (field fault F15 in docs/field-faults.md) and the example batch
``2N + 1`` is not a multiple of N, so nothing about N-divisibility can be specialised by the exporter.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from prumux_compile.errors import InputError

#: Families whose encoder uses ``attention_mask`` / ``token_type_ids`` (docs/checkpoint-formats.md §4 table).
_SINGLE_FAMILIES = ("cofi_compressed", "cofi_masked", "bert")
#: Families with a multiplexer: only ``input_ids`` influences the logits (docs/checkpoint-formats.md Q2, Q3).
_MUXED_FAMILIES = ("prumux_compressed", "prumux_masked", "muxplm")
SUPPORTED_FAMILIES = _MUXED_FAMILIES + _SINGLE_FAMILIES

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
SEQUENCE_AXIS = "sequence"
#: Lowest opset accepted (``LayerNormalization`` is a standard op from 17 on).
MIN_OPSET = 17
#: Prefix of every ``metadata_props`` key written by the exporter.
META_PREFIX = "prumux."

_INPUT_DOCS = {
    "input_ids": "int64 [batch, sequence] WordPiece token ids ([CLS]=101 first, [SEP]=102, [PAD]=0).",
    "attention_mask": "int64 [batch, sequence] 1 for tokens, 0 for padding.",
    "token_type_ids": "int64 [batch, sequence] segment ids (0 = first sentence, 1 = second).",
}
_IGNORED_DOC = (" IGNORED by this family (multiplexed encoders attend every position and use token type 0, "
                "as upstream; docs/checkpoint-formats.md Q2/Q3); accepted so that every family shares one interface.")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    Attributes:
        name: the ONNX value name.
        dtype: numpy dtype name (``"int64"`` or ``"float32"``).
        axes: one entry per axis: a symbolic name (dynamic axis) or an int (static size).
        used: False for an input the family ignores (still a graph input).
        doc: the value's ``doc_string`` in the ONNX graph.
    """

    name: str
    dtype: str
    axes: tuple[str | int, ...]
    used: bool = True
    doc: str = ""

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> symbolic name for the dynamic axes."""
        return {i: a for i, a in enumerate(self.axes) if isinstance(a, str)}


@dataclass(frozen=True)
class ExportSpec:
    """Everything the exporter, the checks, the engines and the validator need to know about the interface.

    Attributes:
        family: checkpoint family (one of :data:`SUPPORTED_FAMILIES`).
        num_instances: N (1 for the unmultiplexed families).
        num_labels: C, width of ``logits``.
        id2label: class index -> label name.
        seq_len: compiled sequence length of a multiplexed model (tokens), else None.
        max_seq_len: longest input sequence accepted (tokens): ``seq_len`` for multiplexed models, the
            position-table size for N = 1 models.
        vocab_size: rows of the word-embedding table (ids must lie in ``[0, vocab_size)``).
        layer_heads: ``(original layer index, heads)`` of every layer that keeps an attention sublayer, in
            order (what ONNX Runtime's attention fusion must reproduce per layer; field fault F6 in docs/field-faults.md).
        head_size: per-head width dh.
        inputs / outputs: the graph interface (:class:`TensorSpec`).
        example_batch / example_seq: example shapes for tracing (never 0 or 1, F15 in docs/field-faults.md).
        type_vocab_size: rows of the token-type table (``token_type_ids`` must lie in ``[0, type_vocab_size)``
            where the family uses them; field fault F20 in docs/field-faults.md). Models exported before this field default to 2.
    """

    family: str
    num_instances: int
    num_labels: int
    id2label: dict[int, str]
    seq_len: int | None
    max_seq_len: int
    vocab_size: int
    layer_heads: tuple[tuple[int, int], ...]
    head_size: int
    inputs: tuple[TensorSpec, ...] = field(default=())
    outputs: tuple[TensorSpec, ...] = field(default=())
    example_batch: int = 3
    example_seq: int = 8
    type_vocab_size: int = 2

    # ------------------------------------------------------------------ derived views
    @property
    def muxed(self) -> bool:
        """True for the multiplexed families."""
        return self.family in _MUXED_FAMILIES

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def ignored_inputs(self) -> tuple[str, ...]:
        """Inputs that are graph inputs but do not influence the logits for this family."""
        return tuple(t.name for t in self.inputs if not t.used)

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{value name: {axis index: symbolic name}}`` for inputs and outputs (torch.onnx style)."""
        return {t.name: t.dynamic_axes for t in self.inputs + self.outputs if t.dynamic_axes}

    # ------------------------------------------------------------------ metadata round trip
    def metadata(self, tool_version: str) -> dict[str, str]:
        """The ``metadata_props`` written into ``model.onnx`` (all values are strings).

        Keys: ``prumux.num_instances``, ``prumux.seq_len`` (only for a compiled length), ``prumux.family``,
        ``prumux.num_labels``, ``prumux.id2label`` (JSON object), ``prumux.tool_version``, plus
        ``prumux.max_seq_len``, ``prumux.vocab_size``, ``prumux.type_vocab_size``, ``prumux.head_size``,
        ``prumux.layer_heads`` (JSON list of ``[layer, heads]``) and ``prumux.ignored_inputs`` (JSON list) used by
        the engines.
        """
        meta = {
            "num_instances": str(self.num_instances),
            "family": self.family,
            "num_labels": str(self.num_labels),
            "id2label": json.dumps({str(k): v for k, v in sorted(self.id2label.items())}),
            "tool_version": tool_version,
            "max_seq_len": str(self.max_seq_len),
            "vocab_size": str(self.vocab_size),
            "type_vocab_size": str(self.type_vocab_size),
            "head_size": str(self.head_size),
            "layer_heads": json.dumps([list(x) for x in self.layer_heads]),
            "ignored_inputs": json.dumps(list(self.ignored_inputs)),
        }
        if self.seq_len is not None:
            meta["seq_len"] = str(self.seq_len)
        return {META_PREFIX + k: v for k, v in meta.items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "ExportSpec":
        """Rebuild the spec from ``metadata_props`` written by :meth:`metadata`.

        Raises:
            InputError: a required ``prumux.*`` key is missing or malformed (not a model exported here).
        """
        def get(key: str) -> str:
            full = META_PREFIX + key
            if full not in meta:
                raise InputError(f"ONNX model metadata lacks {full!r}: it was not exported by prumux-compile")
            return meta[full]

        try:
            seq = meta.get(META_PREFIX + "seq_len")
            return make_spec(
                family=get("family"), num_instances=int(get("num_instances")), num_labels=int(get("num_labels")),
                id2label={int(k): v for k, v in json.loads(get("id2label")).items()},
                seq_len=int(seq) if seq is not None else None, max_seq_len=int(get("max_seq_len")),
                vocab_size=int(get("vocab_size")), head_size=int(get("head_size")),
                layer_heads=[tuple(x) for x in json.loads(get("layer_heads"))],
                type_vocab_size=int(meta.get(META_PREFIX + "type_vocab_size", 2)),  # absent in older exports
            )
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise InputError(f"ONNX model metadata is malformed ({exc})") from None


def _example_length(limit: int) -> int:
    """An example length on a dynamic sequence axis: never 0 or 1 (F15 in docs/field-faults.md), below ``limit`` when possible."""
    return max(2, min(16, limit - 1))


def make_spec(*, family: str, num_instances: int, num_labels: int, id2label: dict[int, str],
              seq_len: int | None, max_seq_len: int, vocab_size: int, head_size: int,
              layer_heads, type_vocab_size: int = 2) -> ExportSpec:
    """Build the :class:`ExportSpec` of one model from its sizes (the declarative part of the export).

    Raises:
        InputError: unknown family (lists the supported ones; F11 in docs/field-faults.md), ``N < 1``, a sequence limit < 2, or a
            multiplexed model without a compiled length.
    """
    if family not in SUPPORTED_FAMILIES:
        raise InputError(f"family {family!r} has no export spec; supported: {', '.join(SUPPORTED_FAMILIES)}")
    muxed = family in _MUXED_FAMILIES
    if num_instances < 1 or (muxed and seq_len is None):
        raise InputError(f"{family}: needs N >= 1 and, when multiplexed, a compiled seq_len")
    if max_seq_len < 2:
        raise InputError(f"{family}: the sequence limit is {max_seq_len}; an exported model needs >= 2 tokens")
    if int(type_vocab_size) < 1:
        raise InputError(f"{family}: type_vocab_size {type_vocab_size}; the token-type table needs >= 1 row")
    inputs = []
    for name in INPUT_NAMES:
        used = name == "input_ids" or not muxed
        inputs.append(TensorSpec(name, "int64", (BATCH_AXIS, SEQUENCE_AXIS), used,
                                 _INPUT_DOCS[name] + ("" if used else _IGNORED_DOC)))
    outputs = (TensorSpec(OUTPUT_NAME, "float32", (BATCH_AXIS, int(num_labels)), True,
                          "float32 [batch, num_labels] classification logits, one row per input row."),)
    return ExportSpec(
        family=family, num_instances=int(num_instances), num_labels=int(num_labels), id2label=dict(id2label),
        seq_len=None if seq_len is None else int(seq_len), max_seq_len=int(max_seq_len),
        vocab_size=int(vocab_size), layer_heads=tuple((int(a), int(b)) for a, b in layer_heads),
        head_size=int(head_size), inputs=tuple(inputs), outputs=outputs,
        example_batch=2 * int(num_instances) + 1, example_seq=_example_length(int(max_seq_len)),
        type_vocab_size=int(type_vocab_size),
    )


def spec_for_ir(ir) -> ExportSpec:
    """The export spec of a compiled :class:`~prumux_compile.ir.ModelIR` (widths from its tensors).

    ``max_seq_len`` is ``ir.seq_len`` for multiplexed models and the number of position embeddings otherwise.

    Raises:
        InputError: as :func:`make_spec`.
    """
    positions = int(ir.embeddings.position.shape[0])
    layer_heads = [(layer.index, layer.attention.heads_kept) for layer in ir.layers
                   if layer.attention is not None and layer.attention.heads_kept > 0]
    return make_spec(
        family=ir.family, num_instances=ir.num_instances, num_labels=ir.num_labels, id2label=ir.id2label,
        seq_len=ir.seq_len if ir.is_muxed else None,
        max_seq_len=int(ir.seq_len) if ir.is_muxed else positions,
        vocab_size=int(ir.embeddings.word.shape[0]), head_size=int(ir.head_size), layer_heads=layer_heads,
        type_vocab_size=int(ir.embeddings.token_type.shape[0]),
    )
