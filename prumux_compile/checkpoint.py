"""Checkpoint reader: every upstream family into one :class:`~prumux_compile.ir.ModelIR`.

Two levels:

* :func:`read_raw` reads a checkpoint directory into a :class:`RawCheckpoint` — the config dict, the
  state dict with canonical key names (legacy ``gamma``/``beta`` renamed, demux aliases resolved,
  tied word embeddings recovered) and the ``zs.pt`` masks — and detects the family from the state
  dict (``docs/checkpoint-formats.md`` §1.1). The reference (:mod:`prumux_compile.reference`) works on
  this level only.
* :func:`load` turns a ``RawCheckpoint`` into the IR, taking every width from weight shapes
  (docs/checkpoint-formats.md §1.4), never from ``config.json`` (field faults F4 in docs/field-faults.md, F5, F7).

Safety: pickled files are read with ``torch.load(..., weights_only=True)``; ``l0_module.pt`` is never
unpickled (docs/checkpoint-formats.md Q16). Errors are :class:`~prumux_compile.errors.CheckpointError` with a one-line
message naming the file and the fix.

Field faults (docs/field-faults.md): a file that is not a checkpoint is named for what it is (Git LFS pointer,
empty, text, unknown bytes, plain pickle; F28 in docs/field-faults.md, :func:`sniff_file`); sharded checkpoints are read through their HF
index, every shard hashed (F25 in docs/field-faults.md); a uniform wrapper prefix such as ``module.`` is removed and a bare encoder gets
"no classifier head" (F21 in docs/field-faults.md, :func:`strip_wrapper_prefix`); every ``config.json`` value that changes the forward
pass is implemented or refused (F22 in docs/field-faults.md, :data:`CONFIG_FIELDS`, :func:`check_config`), and :func:`from_raw` refuses
tensors that nothing reads (:func:`_unread_on_purpose` lists the ones ignored by design).
"""
from __future__ import annotations

import hashlib
import dataclasses
import json
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prumux_compile.errors import CheckpointError

#: Families of docs/checkpoint-formats.md §1.1.
FAMILIES = (
    "prumux_compressed",  # A
    "prumux_masked",  # B: full weights + zs.pt
    "muxplm",  # C
    "cofi_compressed",  # D
    "cofi_masked",  # E: full weights + zs.pt, N = 1
    "bert",  # F
)
MUX_VARIANTS = ("gaussian_hadamard", "binary_hadamard", "random_ortho")
DEMUX_VARIANTS = ("index_pos", "index", "mlp")
MASK_KEYS = ("head_z", "head_layer_z", "intermediate_z", "mlp_z", "hidden_z")

_WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")
#: Index files of sharded checkpoints as HF ``save_pretrained`` writes them (field fault F25 in docs/field-faults.md).
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SHARD_NAME = re.compile(r"^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$")
_DEMUX_ALIAS_PREFIXES = ("demultiplexer.demux_module.", "retrieval_head.demux_module.")


@dataclass
class RawCheckpoint:
    """A checkpoint directory as stored, with canonical key names.

    Attributes:
        path: the directory.
        config: ``config.json`` as a dict (original, unpruned sizes).
        state_dict: name -> float32 CPU tensor. Canonical names: ``LayerNorm.weight/bias`` (never
            ``gamma``/``beta``); demux-module tensors under ``demux_module.*`` whichever alias the file
            used; ``bert.embeddings.word_embeddings.weight`` present even when only the tied
            ``retrieval_head.decoder.weight`` was saved.
        zs: the masks of ``zs.pt`` (keys of docs/checkpoint-formats.md §1.5, float32) or ``None``.
        family: one of :data:`FAMILIES`.
        files: file name -> sha256 hex of each file read (provenance).
        key_prefix: the uniform wrapper prefix removed from every key (``"module."`` ...), ``""`` if none.
    """

    path: Path
    config: dict
    state_dict: dict[str, torch.Tensor]
    zs: dict[str, torch.Tensor] | None
    family: str
    files: dict[str, str] = field(default_factory=dict)
    key_prefix: str = ""

    @property
    def num_instances(self) -> int:
        """Multiplexing width N (1 for CoFi / plain BERT)."""
        if "instance_embedding" not in self.state_dict:
            return 1
        return int(self.state_dict["instance_embedding"].shape[0])

    @property
    def is_muxed(self) -> bool:
        """True for the PruMUX / MUX-PLM families (A, B, C)."""
        return "instance_embedding" in self.state_dict

    @property
    def head_size(self) -> int:
        """Per-head width dh = original hidden_size / original num_attention_heads (stays fixed)."""
        return int(self.config["hidden_size"]) // int(self.config["num_attention_heads"])

    @property
    def num_layers(self) -> int:
        """Encoder depth, from the state dict (any layer with any parameter)."""
        ids = {int(k.split(".")[3]) for k in self.state_dict if k.startswith("bert.encoder.layer.")}
        return max(ids) + 1 if ids else 0

    @property
    def muxing_variant(self) -> str | None:
        return self.config.get("muxing_variant", "gaussian_hadamard") if self.is_muxed else None

    @property
    def demuxing_variant(self) -> str | None:
        return self.config.get("demuxing_variant", "index_pos") if self.is_muxed else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: First line of a Git LFS pointer file (what a clone without ``git lfs`` leaves instead of the weights).
_LFS_HEADER = b"version https://git-lfs.github.com/spec/v1"
#: Opening bytes of torch's legacy (pre-1.6, non-zip) format: a protocol-2 pickle of torch's magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8"
_ZIP_MAGIC = b"PK\x03\x04"
_SNIFF_BYTES = 4096


def sniff_file(path: Path) -> str:
    """What a weights file holds, judged from its first bytes (never unpickled).

    Returns one of ``"empty"``, ``"lfs-pointer"``, ``"zip"`` (torch.save's archive format),
    ``"torch-legacy"`` (torch.save's pre-1.6 pickle format), ``"pickle"`` (a pickle that is not torch's
    format), ``"safetensors"``, ``"text"`` or ``"unknown"``.
    """
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head:
        return "empty"
    if head.startswith(_LFS_HEADER):
        return "lfs-pointer"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch-legacy"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) > 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= 100_000_000:
            return "safetensors"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError as exc:
            if len(head) == _SNIFF_BYTES and exc.start >= len(head) - 3:  # a character cut by the sniff window
                return "text"
    return "unknown"


def _not_a_checkpoint(path: Path, kind: str, expected: str) -> CheckpointError | None:
    """The error for a file that is not a checkpoint at all (field fault F28 in docs/field-faults.md), or None when it may be one."""
    size = path.stat().st_size
    if kind == "empty":
        return CheckpointError(f"{path}: empty (0 bytes), not {expected}; copy the file again from its source")
    if kind == "lfs-pointer":
        return CheckpointError(
            f"{path}: a Git LFS pointer ({size} bytes), not the file itself: run `git lfs pull` in the repository "
            "the checkpoint was cloned from (or download the real file)"
        )
    if kind == "text":
        with open(path, "rb") as f:
            first = f.read(60).decode("utf-8", "replace").splitlines()
        start = first[0] if first else ""
        return CheckpointError(f"{path}: a text file ({size} bytes, starts {start!r}), not {expected}")
    if kind == "unknown":
        with open(path, "rb") as f:
            head = f.read(4).hex(" ")
        return CheckpointError(
            f"{path}: not a PyTorch file (unrecognised first bytes {head}; {size} bytes), not {expected}"
        )
    return None


def _pickle_globals(path: Path) -> list[str]:
    """``module.name`` of every global a plain pickle refers to, read with ``pickletools`` (nothing executed).

    Raises:
        CheckpointError: the pickle stream is truncated or malformed.
    """
    import pickletools

    found: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(str(arg))
                elif op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    found.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
                elif op.name == "STOP":
                    break
    except Exception as exc:  # pickletools raises ValueError and friends on malformed streams
        raise CheckpointError(f"{path}: a truncated or corrupt pickle ({str(exc)[:120]}); copy it again") from None
    return found


def _safe_torch_load(path: Path):
    """``torch.load`` with ``weights_only=True`` after checking what the file is (field fault F28 in docs/field-faults.md).

    Raises:
        CheckpointError: the file is empty, a Git LFS pointer, text, unrecognised bytes, a plain pickle, a
            safetensors file under a PyTorch name, a pickle that needs arbitrary code (named global), or a
            truncated / corrupt torch archive.
    """
    kind = sniff_file(path)
    bad = _not_a_checkpoint(path, kind, "a PyTorch checkpoint")
    if bad is not None:
        raise bad
    if kind == "safetensors":
        raise CheckpointError(
            f"{path}: a safetensors file under a PyTorch name; rename it to model.safetensors (or to the name its "
            "index lists)"
        )
    if kind == "pickle":
        code = _pickle_globals(path)
        if code:
            raise CheckpointError(
                f"{path}: refusing to load: the file needs arbitrary code to unpickle (it calls {code[0]}). "
                "Re-save it as plain tensors (torch.save of a dict of tensors) or as model.safetensors."
            )
        raise CheckpointError(
            f"{path}: a plain pickle, not a PyTorch checkpoint (torch.save writes a zip archive); re-save it with "
            "torch.save of a dict of tensors"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" in text:
            what = text.split("Unsupported global:", 1)[1].split(" was not", 1)[0].replace("GLOBAL", "").strip()
            raise CheckpointError(
                f"{path}: refusing to load: the file needs arbitrary code to unpickle (it calls {what}). "
                "Re-save it as plain tensors (torch.save of a dict of tensors) or as model.safetensors."
            ) from None
        raise CheckpointError(
            f"{path}: cannot read: the PyTorch archive is corrupt ({text.splitlines()[0][:120]}); copy it again"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
            "the file is truncated or not a PyTorch checkpoint. Copy it again from its source."
        ) from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file as a dict of tensors (F28 in docs/field-faults.md checks first)."""
    bad = _not_a_checkpoint(path, sniff_file(path), "a safetensors file")
    if bad is not None:
        raise bad
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: cannot read safetensors ({str(exc)[:160]}); the file is truncated or corrupt."
        ) from None


def _load_weights_file(p: Path) -> dict[str, torch.Tensor]:
    """One weights file (single or shard) as a dict of tensors."""
    if p.name.endswith(".safetensors"):
        sd = _load_safetensors(p)
    else:
        sd = _safe_torch_load(p)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{p}: expected a dict of tensors (a state dict)")
    return sd


def _read_sharded(ckpt_dir: Path, index_name: str, files: dict[str, str]) -> dict[str, torch.Tensor]:
    """Every shard named by an HF index file (``{"metadata": ..., "weight_map": {key: shard file}}``), merged.

    The index and every shard are hashed into ``files``. Each shard must hold exactly the keys the index assigns
    to it, and no key may appear in two shards.
    """
    idx = ckpt_dir / index_name
    files[index_name] = _sha256(idx)
    kind = sniff_file(idx)
    if kind != "text":
        raise _not_a_checkpoint(idx, kind, "an index file") or CheckpointError(f"{idx}: not a JSON index file")
    try:
        index = json.loads(idx.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{idx}: not valid JSON ({str(exc)[:120]})") from None
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not wm or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise CheckpointError(f"{idx}: no \"weight_map\" of tensor name -> shard file; not an HF index file")
    shards = sorted(set(wm.values()))
    for name in shards:
        if Path(name).name != name or name in (".", ".."):
            raise CheckpointError(f"{idx}: shard {name!r} is not a file name in the checkpoint directory")
    missing = [name for name in shards if not (ckpt_dir / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{idx}: {len(missing)} of {len(shards)} shard(s) listed in the index are missing "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); copy every shard into {ckpt_dir}"
        )
    sd: dict[str, torch.Tensor] = {}
    for name in shards:
        p = ckpt_dir / name
        files[name] = _sha256(p)
        part = _load_weights_file(p)
        want = {k for k, v in wm.items() if v == name}
        lacking, extra = sorted(want - set(part)), sorted(set(part) - want)
        if lacking or extra:
            what = (f"lacks {len(lacking)} tensor(s) the index assigns to it (first: {', '.join(lacking[:3])})"
                    if lacking else f"holds {len(extra)} tensor(s) the index does not list (first: "
                    f"{', '.join(extra[:3])})")
            raise CheckpointError(f"{p}: {what}; the shard and {index_name} belong to different saves")
        sd.update(part)
    return sd


def _read_state_dict(ckpt_dir: Path, files: dict[str, str]) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint directory: one weights file, or the shards of an HF index (fault class
    F25 in docs/field-faults.md). Files are looked for in the order of :data:`_WEIGHT_FILES`, then :data:`_INDEX_FILES`.

    Raises:
        CheckpointError: also when a single weights file lies next to a sharded index: two saves of possibly
            different weights (transformers would silently take one of them); the message names both.
    """
    singles = [name for name in _WEIGHT_FILES if (ckpt_dir / name).is_file()]
    indices = [name for name in _INDEX_FILES if (ckpt_dir / name).is_file()]
    if singles and indices:
        raise CheckpointError(
            f"{ckpt_dir}: both a single weights file ({', '.join(singles)}) and a sharded checkpoint's index "
            f"({', '.join(indices)}) are here; they may be two different saves and which one is meant cannot be "
            "told: delete the one that is stale (or move it elsewhere)")
    for name in _WEIGHT_FILES:
        p = ckpt_dir / name
        if p.is_file():
            files[name] = _sha256(p)
            return _load_weights_file(p)
    for name in _INDEX_FILES:
        if (ckpt_dir / name).is_file():
            return _read_sharded(ckpt_dir, name, files)
    shards = sorted(p.name for p in ckpt_dir.iterdir() if _SHARD_NAME.match(p.name))
    if shards:
        raise CheckpointError(
            f"{ckpt_dir}: shard files ({', '.join(shards[:2])}{', ...' if len(shards) > 2 else ''}) without their "
            f"index ({' or '.join(_INDEX_FILES)}); copy the index file that was saved with them"
        )
    raise CheckpointError(
        f"{ckpt_dir}: no weights file (expected one of {', '.join(_WEIGHT_FILES + _INDEX_FILES)}); "
        "point at the directory that holds the checkpoint (upstream keeps it in best/)."
    )


def _first_keys(keys, n: int = 5) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} keys)" if len(keys) > n else "")


#: What a bare BERT encoder's state dict (``BertModel``, no task head) holds at its top level.
_ENCODER_ROOTS = ("embeddings.", "encoder.", "pooler.")


def strip_wrapper_prefix(sd: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Remove a uniform wrapper prefix from every key (field fault F21 in docs/field-faults.md), e.g. ``module.`` (DataParallel /
    DistributedDataParallel) or ``model.`` (training frameworks that keep the model as an attribute).

    The wrapper is what precedes ``bert.embeddings.`` in the keys; it is removed only when every key starts
    with it. Returns ``(state dict, wrapper)`` (``""`` when there was none).

    Raises:
        CheckpointError: the BERT keys sit under different prefixes, or some keys lack the common one; a bare
            encoder (``embeddings.*`` / ``encoder.*`` without ``bert.`` and without ``classifier.*``) gets "no
            classifier head"; no BERT keys at all gets "not a BERT checkpoint". Each message lists the first keys.
    """
    keys = list(sd)
    anchors = sorted({"" if k.startswith("bert.") else k[: k.index(".bert.") + 1] for k in keys
                      if k.startswith("bert.") or ".bert." in k})
    if anchors == [""]:
        return sd, ""
    if len(anchors) == 1 and all(k.startswith(anchors[0]) for k in keys):
        w = anchors[0]
        return {k[len(w):]: v for k, v in sd.items()}, w
    if anchors:
        outside = [k for k in keys if not k.startswith(anchors[-1])]
        raise CheckpointError(
            f"{path}: the BERT keys sit under the prefix(es) {', '.join(repr(a or 'bert.') for a in anchors)}, "
            f"which not every key shares (e.g. {_first_keys(outside, 3)}); save the classifier's own state_dict. "
            f"First keys: {_first_keys(keys)}"
        )
    marker = "embeddings.word_embeddings.weight"
    bare = sorted({k[: -len(marker)] for k in keys if k.endswith(marker)})
    if len(bare) == 1 and all(k.startswith(bare[0]) for k in keys):
        rest = [k[len(bare[0]):] for k in keys]
        if not any(k.startswith("classifier.") for k in rest):
            raise CheckpointError(
                f"{path}: no classifier head: the weights are a bare BERT encoder (keys {', '.join(_ENCODER_ROOTS)} "
                "without 'bert.' and without classifier.*), not a fine-tuned classifier; compile the "
                f"BertForSequenceClassification / PruMUX checkpoint instead. First keys: {_first_keys(keys)}"
            )
        raise CheckpointError(
            f"{path}: the encoder keys lack the 'bert.' prefix the classifier families use (docs/checkpoint-formats.md §1.4); re-save the "
            f"model with its standard names. First keys: {_first_keys(keys)}"
        )
    raise CheckpointError(f"{path}: no BERT word embeddings in the weights; not a BERT checkpoint. First keys: "
                          f"{_first_keys(keys)}")


def _canonical(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key
        if k.endswith(".gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith(".beta"):
            k = k[: -len("beta")] + "bias"
        for prefix in _DEMUX_ALIAS_PREFIXES:
            if k.startswith(prefix):
                k = "demux_module." + k[len(prefix) :]
        if k in out and k.startswith("demux_module."):
            if out[k].shape != value.shape or not torch.equal(out[k], value.detach().to(out[k].dtype)):
                raise CheckpointError(
                    f"{path}: {key} differs from another alias of the shared demux tensor {k}; upstream stores one "
                    "tensor under every alias, so the file is inconsistent"
                )
            continue  # the same shared tensor seen under another alias
        if value.is_floating_point():
            value = value.detach().to(torch.float32)
        out[k] = value
    we = "bert.embeddings.word_embeddings.weight"
    if we not in out and "retrieval_head.decoder.weight" in out:
        out[we] = out["retrieval_head.decoder.weight"]
    if we not in out:
        raise CheckpointError(f"{path}: no word embeddings ({we}); not a BERT checkpoint. First keys: "
                              f"{_first_keys(sd)}")
    for k, v in out.items():
        if v.is_floating_point() and not k.startswith("retrieval_head.") and not torch.isfinite(v).all():
            raise CheckpointError(
                f"{path}: tensor {k} holds NaN or Inf values; the checkpoint is corrupt (retrain or re-export it)"
            )
    return out


def _read_zs(ckpt_dir: Path, files: dict[str, str]) -> dict[str, torch.Tensor] | None:
    zs_path = ckpt_dir / "zs.pt"
    if not zs_path.is_file():
        if (ckpt_dir / "l0_module.pt").is_file():
            raise CheckpointError(
                f"{ckpt_dir}: l0_module.pt found without zs.pt. l0_module.pt is a full pickle that needs the "
                "upstream code to load and is never unpickled here; write zs.pt from it where the upstream code "
                "runs (torch.save(l0_module.forward(training=False), 'zs.pt')) and retry."
            )
        return None
    files["zs.pt"] = _sha256(zs_path)
    zs = _safe_torch_load(zs_path)
    if zs is None:
        raise CheckpointError(
            f"{zs_path}: holds None (upstream then falls back to l0_module.pt, which is never unpickled here); "
            "write the masks with torch.save(l0_module.forward(training=False), 'zs.pt')."
        )
    if not isinstance(zs, dict):
        raise CheckpointError(f"{zs_path}: expected a dict of mask tensors, got {type(zs).__name__}")
    unknown = sorted(str(k) for k, v in zs.items() if k not in MASK_KEYS and v is not None)
    if unknown:
        raise CheckpointError(
            f"{zs_path}: mask(s) {', '.join(unknown[:5])} are not implemented (known: {', '.join(MASK_KEYS)}); "
            "ignoring them would change the model silently"
        )
    out = {}
    for k, v in zs.items():
        if v is None:
            continue
        t = torch.as_tensor(v).detach().to(torch.float32).cpu()
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{zs_path}: mask {k} holds NaN or Inf values")
        out[k] = t
    return out


def detect_family(sd: dict[str, torch.Tensor], has_zs: bool) -> str:
    """Family from the state dict (docs/checkpoint-formats.md §1.1), not from ``config.architectures``."""
    if "instance_embedding" in sd:
        if has_zs:
            return "prumux_masked"
        return "prumux_compressed" if "bert.pooler.dense.weight" in sd else "muxplm"
    if has_zs:
        return "cofi_masked"
    return "cofi_compressed" if _looks_pruned(sd) else "bert"


def _looks_pruned(sd: dict[str, torch.Tensor]) -> bool:
    """True if any trunk weight is narrower than the widest layer (a physically pruned CoFi model)."""
    d = sd["bert.embeddings.word_embeddings.weight"].shape[1]
    pooler = sd.get("bert.pooler.dense.weight")
    if pooler is not None and pooler.shape[0] != d:
        return True
    widths = {v.shape[0] for k, v in sd.items() if k.endswith("attention.self.query.weight")}
    ffn = {v.shape[0] for k, v in sd.items() if k.endswith("intermediate.dense.weight")}
    layers = {k.split(".")[3] for k in sd if k.startswith("bert.encoder.layer.")}
    att_layers = {k.split(".")[3] for k in sd if k.endswith("attention.output.dense.weight")}
    ffn_layers = {k.split(".")[3] for k in sd if k.endswith("output.dense.weight") and "attention" not in k}
    return len(widths) > 1 or len(ffn) > 1 or att_layers != layers or ffn_layers != layers


# ---------------------------------------------------------------------------------------------- config.json
#: How each ``config.json`` field that upstream code (transformers' BERT, CoFi, PruMUX / MUX-PLM) reads is treated
#: (field fault F22 in docs/field-faults.md). "implemented" fields are honoured by BOTH the reference and the compiled model; values they do
#: not implement are refused at load (exit 2, naming field and value). "no effect" fields do not change the logits
#: of a classifier in eval mode. Fields not listed are read by none of that code, so they cannot change its forward
#: pass; they are reported by :func:`unread_config_fields` and otherwise ignored.
CONFIG_FIELDS: dict[str, str] = {
    # maths: implemented (values outside the implemented set are refused)
    "hidden_act": "implemented: FFN activation, one of prumux_compile.ir.ACTIVATIONS (demux: erf GELU, pooler: tanh)",
    "layer_norm_eps": "implemented: epsilon of every LayerNorm (embeddings, encoder, demultiplexer); > 0",
    "position_embedding_type": "implemented: 'absolute' only (relative_key / relative_key_query refused; null "
                               "makes old transformers add no position embeddings at all: refused)",
    "is_decoder": "implemented: false only (a decoder adds a causal mask)",
    "add_cross_attention": "implemented: false only (cross-attention needs encoder states)",
    "model_type": "implemented: 'bert' only (RoBERTa/ELECTRA/... embed differently)",
    "hidden_size": "implemented: original width; head size = hidden_size / num_attention_heads",
    "num_attention_heads": "implemented: original head count; head size = hidden_size / num_attention_heads",
    "intermediate_size": "implemented: original FFN width (masks of full + zs checkpoints)",
    "num_hidden_layers": "implemented: original depth (reports); layers present come from the weights",
    "pad_token_id": "implemented: multiplexed models pad sequences with [PAD] = 0 internally (bert-base-uncased, "
                    "whose [CLS] = 101 upstream hard-codes): other values refused; N = 1: embedding init only",
    "problem_type": "implemented: how logits are read (ModelIR.problem_type); the loss only otherwise; values "
                    "outside transformers' three refused",
    "num_instances": "implemented: N; must equal the rows of instance_embedding",
    "muxing_variant": "implemented: one of MUX_VARIANTS",
    "demuxing_variant": "implemented: one of DEMUX_VARIANTS",
    "num_hidden_demux_layers": "implemented (index_pos): Kd, 2 when absent; an integer >= 2 (legacy: >= 1)",
    "legacy_demuxing": "implemented (index_pos): true/false",
    "pruned_heads": "cross-check only: never re-applied (docs/checkpoint-formats.md Q13)",
    # sizes: the weights are authoritative (docs/checkpoint-formats.md §1.4)
    "vocab_size": "sizes come from the weights", "max_position_embeddings": "sizes come from the weights",
    "type_vocab_size": "sizes come from the weights (token type ids are checked against the table)",
    "embedding_size": "not read by BERT (ELECTRA / ALBERT only)",
    # no effect at inference
    "hidden_dropout_prob": "no effect: dropout is the identity in eval mode",
    "attention_probs_dropout_prob": "no effect: dropout is the identity in eval mode",
    "classifier_dropout": "no effect: dropout is the identity in eval mode",
    "chunk_size_feed_forward": "no effect: chunking the FFN over positions computes the same values",
    "initializer_range": "no effect: initialisation only",
    "use_cache": "no effect: decoder key/value cache",
    "output_attentions": "no effect on logits", "output_hidden_states": "no effect on logits",
    "return_dict": "no effect on logits", "use_return_dict": "no effect on logits",
    "torchscript": "no effect on logits", "tie_word_embeddings": "no effect on a classifier",
    "torch_dtype": "storage dtype; weights are read as float32", "dtype": "storage dtype; weights are read as float32",
    "gradient_checkpointing": "training only", "use_bfloat16": "no effect (TF only)",
    "_attn_implementation": "eager and SDPA attention compute the same function",
    "attn_implementation": "eager and SDPA attention compute the same function",
    "is_encoder_decoder": "not read by BERT's forward", "tie_encoder_decoder": "not read by BERT's forward",
    "cross_attention_hidden_size": "only with add_cross_attention (refused)",
    "id2label": "label names (class order)", "label2id": "label names (class order)",
    "num_labels": "classifier width comes from the weights", "finetuning_task": "metadata",
    "architectures": "informational (the family comes from the weights)", "_name_or_path": "metadata",
    "transformers_version": "metadata", "tokenizer_class": "tokenizer only", "prefix": "generation only",
    "bos_token_id": "generation only", "eos_token_id": "generation only", "sep_token_id": "generation only",
    "decoder_start_token_id": "generation only", "task_specific_params": "generation only",
    # multiplexing / pruning training fields (docs/checkpoint-formats.md §1.3)
    "gaussian_hadamard_norm": "only regenerates instance vectors; the stored tensor is used",
    "binary_hadamard_epsilon": "only regenerates instance vectors; the stored tensor is used",
    "learn_muxing": "training only", "retrieval_loss_coeff": "training only", "task_loss_coeff": "training only",
    "retrieval_percentage": "training only", "retrieval_pretraining": "training only",
    "do_layer_distill": "training only (layer_transformation.* is ignored)", "head_temperature": "training only",
    "hierarchical_softmax_buckets": "training only (retrieval head)",
    "use_hierarchical_softmax": "training only (retrieval head)",
}


def unread_config_fields(config: dict) -> list[str]:
    """Fields of ``config`` that no upstream code reads (not in :data:`CONFIG_FIELDS`, nor generation settings)."""
    return sorted(k for k in config if k not in CONFIG_FIELDS)


def check_config(config: dict, cfg_path: Path, sd: dict[str, torch.Tensor]) -> None:
    """Refuse every ``config.json`` value that changes the forward pass and is not implemented by both the reference
    and the compiled model (field fault F22 in docs/field-faults.md; :data:`CONFIG_FIELDS`).

    Raises:
        CheckpointError: ``"<path>: config.json <field>=<value>: <why>"`` for the first such field.
    """
    from prumux_compile.ir import ACTIVATIONS, PROBLEM_TYPES

    def refuse(name: str, why: str):
        raise CheckpointError(f"{cfg_path}: config.json {name}={config.get(name)!r}: {why}")

    act = config.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        refuse("hidden_act", f"not implemented by the compiled model and the reference; implemented: "
                             f"{', '.join(ACTIVATIONS)}")
    eps = config.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        refuse("layer_norm_eps", "must be a positive number")
    if "position_embedding_type" in config and config["position_embedding_type"] != "absolute":
        refuse("position_embedding_type", "only 'absolute' position embeddings are implemented")
    for name in ("is_decoder", "add_cross_attention"):
        if config.get(name, False) is not False:
            refuse(name, "only the bidirectional encoder of a classifier is implemented")
    if config.get("model_type", "bert") != "bert":
        refuse("model_type", "only BERT checkpoints are implemented (their embeddings differ)")
    if config.get("problem_type") is not None and config["problem_type"] not in PROBLEM_TYPES:
        refuse("problem_type", f"expected one of {', '.join(PROBLEM_TYPES)}")
    for name in ("num_hidden_layers", "intermediate_size"):
        value = config.get(name)
        if name in config and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            refuse(name, "must be a positive integer (the original size)")
    heads = config.get("pruned_heads") or {}
    if not isinstance(heads, dict) or not all(
            _int_key(k) is not None and isinstance(v, list) and all(_int_key(h) is not None for h in v)
            for k, v in heads.items()):
        refuse("pruned_heads", "expected {layer id: [head ids]} with integer ids")
    _check_id2label(config, cfg_path, sd)
    muxed = "instance_embedding" in sd
    n_cfg = config.get("num_instances")
    if muxed:
        rows = int(sd["instance_embedding"].shape[0])
        if n_cfg is not None and (isinstance(n_cfg, bool) or n_cfg != rows):
            refuse("num_instances", f"the instance_embedding has {rows} rows")
        if config.get("pad_token_id", 0) not in (0, None):
            refuse("pad_token_id", "multiplexed models pad sequences with [PAD] = 0 (the bert-base-uncased vocabulary "
                                   "whose [CLS] = 101 upstream hard-codes)")
        if config.get("demuxing_variant", "index_pos") == "index_pos":
            legacy = config.get("legacy_demuxing", False)
            if not isinstance(legacy, bool):
                refuse("legacy_demuxing", "expected true or false")
            if "num_hidden_demux_layers" in config:
                kd = config["num_hidden_demux_layers"]
                if isinstance(kd, bool) or not isinstance(kd, int) or kd < (1 if legacy else 2):
                    refuse("num_hidden_demux_layers", "the index_pos demultiplexer needs an integer >= 2 (it uses "
                                                      "dense_1 .. dense_{K-1}; upstream's default 2 applies only "
                                                      "when the field is absent)")
    elif isinstance(n_cfg, int) and not isinstance(n_cfg, bool) and n_cfg > 1:
        refuse("num_instances", "the weights have no instance_embedding (not a multiplexed model)")


def _int_key(key) -> int | None:
    """A JSON object key or list item as an integer id (``"3"`` or ``3``), or None when it is not one."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    return None


def _check_id2label(config: dict, cfg_path: Path, sd: dict[str, torch.Tensor]) -> None:
    """``id2label`` must name exactly the classifier's outputs 0..C-1 (C = rows of ``classifier.weight``).

    Labels of an evaluation file are mapped to class ids through it: an id the head never outputs (a gap such as
    ``{0, 2, 3}`` for 3 outputs) or a map of another size would score accuracy against the wrong classes
    (transformers cannot load such a checkpoint either: its head would get ``len(id2label)`` outputs).

    Raises:
        CheckpointError: keys that are not integer ids, or ids other than 0..C-1; the message names both.
    """
    id2label = config.get("id2label")
    if id2label in (None, {}):
        return
    outputs = int(sd["classifier.weight"].shape[0])
    if not isinstance(id2label, dict):
        raise CheckpointError(f"{cfg_path}: config.json id2label is a {type(id2label).__name__}; expected "
                              "{class id: name}")
    ids = [_int_key(k) for k in id2label]
    if None in ids or sorted(ids) != list(range(outputs)):
        shown = ", ".join(repr(k) for k in list(id2label)[:8]) + (", ..." if len(id2label) > 8 else "")
        raise CheckpointError(
            f"{cfg_path}: config.json id2label has the keys {shown}, but the classifier has {outputs} output(s): "
            f"its keys must be the class ids 0..{outputs - 1}, one each (labels are mapped to outputs through it); "
            "fix id2label (and label2id) in config.json")


def read_raw(path: str | Path) -> RawCheckpoint:
    """Read a checkpoint directory (docs/checkpoint-formats.md §1) into a :class:`RawCheckpoint`.

    Args:
        path: directory holding ``config.json`` and ``pytorch_model.bin`` or ``model.safetensors``, or the
            shards of an HF index (``model.safetensors.index.json`` / ``pytorch_model.bin.index.json`` with the
            ``model-0000k-of-0000n.*`` files it names; every shard and the index are hashed into ``files``),
            and ``zs.pt`` for the full + masks families B and E.

    Raises:
        CheckpointError: missing/unreadable files (a missing shard is named), a file that is not a checkpoint
            (Git LFS pointer, empty, text, unknown bytes; field fault F28 in docs/field-faults.md), a pickle needing code, NaN/Inf in
            weights or masks, an unknown ``muxing_variant``/``demuxing_variant``.
    """
    ckpt_dir = Path(path)
    if not ckpt_dir.exists():
        raise CheckpointError(f"{ckpt_dir}: no such checkpoint directory")
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir}: not a directory; pass the checkpoint directory, not a file")
    cfg_path = ckpt_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing; a checkpoint directory needs its config.json")
    files: dict[str, str] = {"config.json": _sha256(cfg_path)}
    kind = sniff_file(cfg_path)
    if kind in ("empty", "lfs-pointer"):  # F28 in docs/field-faults.md: named for what it is, not "invalid JSON"
        raise _not_a_checkpoint(cfg_path, kind, "a JSON configuration")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(config).__name__}")
    for key in ("hidden_size", "num_attention_heads"):
        if key not in config:
            raise CheckpointError(f"{cfg_path}: missing {key!r} (needed for the per-head width)")
        if not isinstance(config[key], int) or config[key] < 1:
            raise CheckpointError(f"{cfg_path}: {key} must be a positive integer, got {config[key]!r}")
    sd, wrapper = strip_wrapper_prefix(_read_state_dict(ckpt_dir, files), ckpt_dir)
    sd = _canonical(sd, ckpt_dir)
    if "classifier.weight" not in sd:
        raise CheckpointError(
            f"{ckpt_dir}: no classifier head (classifier.weight is missing); compile a fine-tuned sequence "
            f"classifier. First keys: {_first_keys(sd)}"
        )
    check_config(config, cfg_path, sd)
    zs = _read_zs(ckpt_dir, files)
    family = detect_family(sd, zs is not None)
    raw = RawCheckpoint(ckpt_dir, config, sd, zs, family, files, wrapper)
    if raw.is_muxed:
        if raw.muxing_variant not in MUX_VARIANTS:
            raise CheckpointError(
                f"{cfg_path}: unknown muxing_variant {raw.muxing_variant!r}; supported: {', '.join(MUX_VARIANTS)}"
            )
        if raw.demuxing_variant not in DEMUX_VARIANTS:
            raise CheckpointError(
                f"{cfg_path}: unknown demuxing_variant {raw.demuxing_variant!r}; supported: {', '.join(DEMUX_VARIANTS)}"
            )
    if int(config["hidden_size"]) % int(config["num_attention_heads"]):
        raise CheckpointError(f"{cfg_path}: hidden_size is not a multiple of num_attention_heads")
    return raw


# ---------------------------------------------------------------------------------------------- IR
def load(path: str | Path, *, seq_len: int = 128) -> "ModelIR":
    """Read a checkpoint directory into the IR (widths from weight shapes, docs/checkpoint-formats.md §1.4).

    Args:
        path: checkpoint directory (any family of docs/checkpoint-formats.md §1.1).
        seq_len: compiled sequence length for multiplexed families (docs/checkpoint-formats.md Q2); ignored for N = 1 families.

    Returns:
        A :class:`~prumux_compile.ir.ModelIR`; for families B/E its ``masks`` holds the ``zs.pt`` masks
        (run the default pass pipeline to fold and prune them).

    Raises:
        CheckpointError: as :func:`read_raw`, plus contradictory widths (Q/K/V widths not a multiple of the
            head size, tensors of disagreeing widths) and masks whose shape does not match the weights.
    """
    return from_raw(read_raw(path), seq_len=seq_len)


def _get(raw: RawCheckpoint, key: str, shape: tuple | None = None) -> torch.Tensor:
    t = raw.state_dict.get(key)
    if t is None:
        raise CheckpointError(f"{raw.path}: missing tensor {key!r} ({raw.family} checkpoint)")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise CheckpointError(
            f"{raw.path}: tensor {key} has shape {tuple(t.shape)}, expected {tuple(shape)} "
            "(contradictory widths; the checkpoint is inconsistent)"
        )
    return t.clone()


def _check_masks(raw: RawCheckpoint, L: int, H: int, F: int, d: int) -> dict[str, torch.Tensor]:
    expected = {"head_z": (L, 1, H, 1, 1), "head_layer_z": (L,), "intermediate_z": (L, 1, 1, F),
                "mlp_z": (L,), "hidden_z": (d,)}
    masks = {}
    for key, value in (raw.zs or {}).items():
        if value.numel() == 0:
            continue
        want = expected[key]
        if value.numel() != int(torch.tensor(want).prod()) or value.reshape(want).shape != want:
            raise CheckpointError(
                f"{raw.path / 'zs.pt'}: mask {key} has shape {tuple(value.shape)}, expected {want} "
                f"for {L} layers, {H} heads, {F} FFN dims, {d} hidden dims; the masks belong to another model"
            )
        if (value < 0).any():
            raise CheckpointError(f"{raw.path / 'zs.pt'}: mask {key} holds negative values")
        if key == "hidden_z" and not (value != 0).any():
            raise CheckpointError(f"{raw.path / 'zs.pt'}: mask hidden_z keeps no hidden dim (all zeros); "
                                  "nothing of the model would remain")
        masks[key] = value.reshape(want).clone()
    return masks


class _ReadRecorder(dict):
    """A state dict that records which keys were read (``get`` / ``[]``); ``in`` tests are not reads."""

    def __init__(self, sd: dict):
        super().__init__(sd)
        self.read: set[str] = set()

    def get(self, key, default=None):
        if key in self:
            self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


#: Keys no inference path reads, by design (docs/checkpoint-formats.md §1.4 "Ignore (training-only)").
_TRAINING_ONLY_PREFIXES = ("retrieval_head.", "layer_transformation.", "mha_layer_transformation.",
                           "emb_transformation.")
#: Integer buffers some transformers versions save with the embeddings.
_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")


def _unread_on_purpose(raw: RawCheckpoint, key: str, layers) -> bool:
    """True for a key the compiled model legitimately never reads (the list is docs/checkpoint-formats.md §1.4):

    * training-only modules: ``retrieval_head.*`` (MLM retrieval head, with its tied decoder),
      ``layer_transformation.*``, ``mha_layer_transformation.*``, ``emb_transformation.*`` (distillation);
    * the integer ``position_ids`` / ``token_type_ids`` buffers of the embeddings;
    * ``bert.pooler.*`` of the multiplexed families (randomly initialised and unused, docs/checkpoint-formats.md §2.5);
    * the parts of the shared index_pos demux module that only the retrieval head uses: ``layer_norm_k`` (k <= Kd;
      ``layer_norm_1`` is read in legacy mode) and ``dense_k`` beyond the classifier's ``Kd - 1`` (k <= Kd);
    * the LayerNorm of a removed sublayer (a compressed checkpoint keeps it, docs/checkpoint-formats.md Q14).

    NOT on this list, so an error when present: MLM / NSP heads (``cls.*``), relative-position tables
    (``distance_embedding``), cross-attention, another wrapper's keys, demux tensors beyond Kd — parts of a model the
    compiler does not implement, whose silent omission would change the outputs or hide a wrong config.
    """
    if key.startswith(_TRAINING_ONLY_PREFIXES) or key in _BUFFERS:
        return True
    if raw.is_muxed and key.startswith("bert.pooler."):
        return True
    if raw.is_muxed and raw.demuxing_variant == "index_pos":
        m = re.fullmatch(r"demux_module\.(dense|layer_norm)_(\d+)\.(weight|bias)", key)
        if m:
            kd = raw.config.get("num_hidden_demux_layers", 2)
            return 1 <= int(m.group(2)) <= kd
    m = re.fullmatch(r"bert\.encoder\.layer\.(\d+)\.(attention\.output|output)\.LayerNorm\.(weight|bias)", key)
    if m:
        layer = layers.get(int(m.group(1)))
        sub = None if layer is None else (layer.attention if m.group(2) == "attention.output" else layer.ffn)
        return sub is None
    return False


def from_raw(raw: RawCheckpoint, *, seq_len: int = 128) -> "ModelIR":
    """Build the IR from a :class:`RawCheckpoint` (see :func:`load`).

    Raises:
        CheckpointError: as :func:`load`, and for tensors that nothing reads (neither the IR nor the list of
            :func:`_unread_on_purpose`): they are parts of a model the compiler does not implement (field fault F22 in docs/field-faults.md).
    """
    recorder = _ReadRecorder(raw.state_dict)
    ir = _build_ir(dataclasses.replace(raw, state_dict=recorder), seq_len)
    layers = {layer.index: layer for layer in ir.layers}
    unread = [k for k in raw.state_dict if k not in recorder.read and not _unread_on_purpose(raw, k, layers)]
    if unread:
        raise CheckpointError(
            f"{raw.path}: {len(unread)} tensor(s) that nothing reads: {_first_keys(unread)}. They belong to a part of "
            "the model the compiler does not implement (or the config disagrees with the weights); dropping them "
            "would change the outputs silently"
        )
    return ir


def _build_ir(raw: RawCheckpoint, seq_len: int) -> "ModelIR":
    from prumux_compile.ir import FFN, Attention, Demux, Embeddings, Layer, ModelIR, Mux, check_invariants

    sd = raw.state_dict
    cfg = raw.config
    dh = raw.head_size
    word = _get(raw, "bert.embeddings.word_embeddings.weight")
    d = int(word.shape[1])
    n_layers = raw.num_layers
    H = int(cfg["num_attention_heads"])
    F_orig = int(cfg.get("intermediate_size", 4 * int(cfg["hidden_size"])))
    pre = "bert.encoder.layer."
    pruned_heads = {int(k): sorted(int(h) for h in v) for k, v in (cfg.get("pruned_heads") or {}).items()}

    embeddings = Embeddings(
        word=word,
        position=_get(raw, "bert.embeddings.position_embeddings.weight", None),
        token_type=_get(raw, "bert.embeddings.token_type_embeddings.weight", None),
        ln_weight=_get(raw, "bert.embeddings.LayerNorm.weight", (d,)),
        ln_bias=_get(raw, "bert.embeddings.LayerNorm.bias", (d,)),
    )
    for name in ("position", "token_type"):
        t = getattr(embeddings, name)
        if t.dim() != 2 or t.shape[1] != d:
            raise CheckpointError(
                f"{raw.path}: {name} embeddings have shape {tuple(t.shape)}; expected [*, {d}] like the word embeddings"
            )

    layers = []
    for i in range(n_layers):
        p = f"{pre}{i}."
        att = None
        if p + "attention.output.dense.weight" in sd:
            wo = _get(raw, p + "attention.output.dense.weight")
            if wo.dim() != 2 or wo.shape[0] != d or wo.shape[1] % dh:
                raise CheckpointError(
                    f"{raw.path}: layer {i} attention output has shape {tuple(wo.shape)}: its input width is not a "
                    f"multiple of the head size {dh} (or its output is not {d} wide)"
                )
            h = wo.shape[1] // dh
            w = h * dh
            ids = list(range(H)) if h == H else [x for x in range(H) if x not in pruned_heads.get(i, [])]
            if len(ids) != h:
                ids = list(range(h))  # pruned_heads is metadata only (Q13 in docs/checkpoint-formats.md); never re-applied
            att = Attention(
                head_ids=ids, head_size=dh,
                wq=_get(raw, p + "attention.self.query.weight", (w, d)), bq=_get(raw, p + "attention.self.query.bias", (w,)),
                wk=_get(raw, p + "attention.self.key.weight", (w, d)), bk=_get(raw, p + "attention.self.key.bias", (w,)),
                wv=_get(raw, p + "attention.self.value.weight", (w, d)), bv=_get(raw, p + "attention.self.value.bias", (w,)),
                wo=wo, bo=_get(raw, p + "attention.output.dense.bias", (d,)),
                ln_weight=_get(raw, p + "attention.output.LayerNorm.weight", (d,)),
                ln_bias=_get(raw, p + "attention.output.LayerNorm.bias", (d,)),
            )
        elif p + "attention.self.query.weight" in sd:
            raise CheckpointError(f"{raw.path}: layer {i} has attention.self weights but no attention.output.dense")
        ffn = None
        if p + "output.dense.weight" in sd:
            w2 = _get(raw, p + "output.dense.weight")
            if w2.dim() != 2 or w2.shape[0] != d:
                raise CheckpointError(f"{raw.path}: layer {i} output.dense has shape {tuple(w2.shape)}; expected [{d}, f]")
            f = int(w2.shape[1])
            ffn = FFN(
                dim_ids=list(range(f)),
                w1=_get(raw, p + "intermediate.dense.weight", (f, d)), b1=_get(raw, p + "intermediate.dense.bias", (f,)),
                w2=w2, b2=_get(raw, p + "output.dense.bias", (d,)),
                ln_weight=_get(raw, p + "output.LayerNorm.weight", (d,)),
                ln_bias=_get(raw, p + "output.LayerNorm.bias", (d,)),
            )
        layers.append(Layer(index=i, attention=att, ffn=ffn))

    mux = demux = pooler = None
    if raw.is_muxed:
        v = _get(raw, "instance_embedding")
        N = int(v.shape[0])
        variant = raw.muxing_variant
        want = (N, d, d) if variant == "random_ortho" else (N, d)
        if tuple(v.shape) != want:
            raise CheckpointError(
                f"{raw.path}: instance_embedding has shape {tuple(v.shape)}, expected {want} for {variant} with "
                f"{d} hidden dims (widths come from the word embeddings)"
            )
        mux = Mux(variant=variant, num_instances=N, instance_embedding=v)
        demux = _load_demux(raw, N, d)
    else:
        pooler = (_get(raw, "bert.pooler.dense.weight"), _get(raw, "bert.pooler.dense.bias"))
        if pooler[0].dim() != 2 or pooler[0].shape[1] != d:
            raise CheckpointError(f"{raw.path}: pooler weight has shape {tuple(pooler[0].shape)}; expected [*, {d}]")
    cw = _get(raw, "classifier.weight")
    classifier = (cw, _get(raw, "classifier.bias", (cw.shape[0],)))

    masks = None
    if raw.zs is not None:
        masks = _check_masks(raw, n_layers, H, F_orig, d)
        for layer in layers:
            if layer.attention is not None and layer.attention.heads != H:
                raise CheckpointError(f"{raw.path}: zs.pt masks given but layer {layer.index} is already pruned")
            if layer.ffn is not None and layer.ffn.dims != F_orig:
                raise CheckpointError(
                    f"{raw.path}: zs.pt intermediate_z expects {F_orig} FFN dims, layer {layer.index} has {layer.ffn.dims}"
                )

    id2label = {int(k): str(v) for k, v in (cfg.get("id2label") or {}).items()}
    if len(id2label) != classifier[0].shape[0]:
        id2label = {i: f"LABEL_{i}" for i in range(classifier[0].shape[0])}
    ir = ModelIR(
        family=raw.family, config=dict(cfg), head_size=dh,
        original={"layers": int(cfg.get("num_hidden_layers", n_layers)), "hidden": int(cfg["hidden_size"]),
                  "heads": H, "ffn": F_orig},
        eps=float(cfg.get("layer_norm_eps", 1e-12)), embeddings=embeddings, layers=layers,
        hidden_ids=list(range(d)), classifier=classifier, mux=mux, demux=demux, pooler=pooler,
        masks=masks, seq_len=seq_len if raw.is_muxed else None, id2label=id2label, provenance=dict(raw.files),
        activation=str(cfg.get("hidden_act", "gelu")),
    )
    if ir.original["layers"] < n_layers:
        ir.original["layers"] = n_layers
    if raw.is_muxed:
        # the special tokens the model writes itself (docs/checkpoint-formats.md §2.1): [CLS] = 101; index prefixes up to 680
        top = 680 if demux.variant == "index" else 101
        if word.shape[0] <= top:
            raise CheckpointError(
                f"{raw.path}: the {demux.variant} demultiplexer writes token id {top} itself (upstream's "
                f"bert-base-uncased ids), but the vocabulary has {word.shape[0]} rows"
            )
        need = seq_len + (ir.num_instances + 1 if demux.variant == "index" else 0)
        if embeddings.position.shape[0] < need:
            raise CheckpointError(
                f"{raw.path}: --seq-len {seq_len} needs {need} positions; the checkpoint has "
                f"{embeddings.position.shape[0]}"
            )
    check_invariants(ir, where=f"{raw.path} (as loaded)")
    return ir


def _load_demux(raw: RawCheckpoint, N: int, d: int):
    from prumux_compile.ir import Demux

    cfg = raw.config
    variant = raw.demuxing_variant
    sd = raw.state_dict
    t: dict[str, torch.Tensor] = {}
    if variant == "index_pos":
        kd = int(cfg.get("num_hidden_demux_layers", 2))  # upstream's default 2 when absent (check_config)
        legacy = cfg.get("legacy_demuxing", False) is True
        if kd < 2 and not legacy:
            raise CheckpointError(
                f"{raw.path / 'config.json'}: num_hidden_demux_layers={kd}; the index_pos demultiplexer needs >= 2 "
                "(it uses dense_1 .. dense_{K-1})"
            )
        t["demux_instance_embedding"] = _get(raw, "demux_module.demux_instance_embedding", (N, d))
        w1 = _get(raw, "demux_module.dense_1.weight")
        if w1.dim() != 2 or w1.shape[1] != 2 * d:
            raise CheckpointError(
                f"{raw.path}: demux dense_1 weight has shape {tuple(w1.shape)}; expected [D, {2 * d}] (instance "
                f"embedding ⊕ hidden, both {d} wide)"
            )
        D = int(w1.shape[0])
        t["dense_1.weight"] = w1
        t["dense_1.bias"] = _get(raw, "demux_module.dense_1.bias", (D,))
        n_dense = 1 if legacy else max(kd - 1, 1)
        for k in range(2, n_dense + 1):
            t[f"dense_{k}.weight"] = _get(raw, f"demux_module.dense_{k}.weight", (D, D))
            t[f"dense_{k}.bias"] = _get(raw, f"demux_module.dense_{k}.bias", (D,))
        if legacy:
            t["layer_norm_1.weight"] = _get(raw, "demux_module.layer_norm_1.weight", (D,))
            t["layer_norm_1.bias"] = _get(raw, "demux_module.layer_norm_1.bias", (D,))
        t["pre_decoder.weight"] = _get(raw, "demultiplexer.pre_decoder.weight", (D, D))
        t["pre_decoder.bias"] = _get(raw, "demultiplexer.pre_decoder.bias", (D,))
        t["pre_decoder_layer_norm.weight"] = _get(raw, "demultiplexer.pre_decoder_layer_norm.weight", (D,))
        t["pre_decoder_layer_norm.bias"] = _get(raw, "demultiplexer.pre_decoder_layer_norm.bias", (D,))
        return Demux(variant=variant, num_layers=n_dense, legacy=legacy, tensors=t)
    if variant == "mlp":
        for n in range(N):
            w = _get(raw, f"demux_module.dense_{n}.weight")
            if w.dim() != 2 or w.shape[1] != d:
                raise CheckpointError(f"{raw.path}: demux dense_{n} weight has shape {tuple(w.shape)}; expected [D, {d}]")
            D = int(w.shape[0])
            t[f"dense_{n}.weight"] = w
            t[f"dense_{n}.bias"] = _get(raw, f"demux_module.dense_{n}.bias", (D,))
            t[f"layer_norm_{n}.weight"] = _get(raw, f"demux_module.layer_norm_{n}.weight", (D,))
            t[f"layer_norm_{n}.bias"] = _get(raw, f"demux_module.layer_norm_{n}.bias", (D,))
        t["dense_before_out_proj.weight"] = _get(raw, "demultiplexer.dense_before_out_proj.weight", (D, D))
        t["dense_before_out_proj.bias"] = _get(raw, "demultiplexer.dense_before_out_proj.bias", (D,))
        t["layernorm.weight"] = _get(raw, "demultiplexer.layernorm.weight", (D,))
        t["layernorm.bias"] = _get(raw, "demultiplexer.layernorm.bias", (D,))
        return Demux(variant=variant, num_layers=1, legacy=False, tensors=t)
    # index
    w = _get(raw, "demultiplexer.dense.weight")
    if w.dim() != 2 or w.shape[1] != 2 * d:
        raise CheckpointError(f"{raw.path}: demultiplexer.dense weight has shape {tuple(w.shape)}; expected [D, {2 * d}]")
    D = int(w.shape[0])
    t["dense.weight"] = w
    t["dense.bias"] = _get(raw, "demultiplexer.dense.bias", (D,))
    t["layer_norm.weight"] = _get(raw, "demultiplexer.layer_norm.weight", (D,))
    t["layer_norm.bias"] = _get(raw, "demultiplexer.layer_norm.bias", (D,))
    return Demux(variant=variant, num_layers=1, legacy=False, tensors=t)
