"""Field faults F20–F22, F25, F26, F28 (docs/fault-classes.md), front end: checkpoint reading, config fields,
reference and kernels, example inputs, feeds, external-data export. Each kind is a table of several instances."""
from __future__ import annotations

import json

import pytest
import torch

from prumux_compile.checkpoint import read_raw
from prumux_compile.errors import CheckpointError
from prumux_compile.synthetic import SynthSpec, break_file, write_checkpoint

SMALL = dict(vocab=256, max_pos=40, num_layers=2, hidden=16, heads=2, ffn=24)


def _write(tmp_path, name="ckpt", **fields):
    fields = {**SMALL, **fields}
    write_checkpoint(tmp_path / name, SynthSpec(**fields))
    return tmp_path / name


# ------------------------------------------------------------------------------------------------------------------
# F28: a weights file that is not a checkpoint is named for what it is
# ------------------------------------------------------------------------------------------------------------------
F28_CASES = [
    # (id, SynthSpec fields, text the error must contain)
    ("bin-lfs", dict(family="bert", broken_file="lfs-pointer"), "a Git LFS pointer"),
    ("safetensors-lfs", dict(family="bert", safetensors=True, broken_file="lfs-pointer"), "a Git LFS pointer"),
    ("zs-lfs", dict(family="cofi_masked", broken_file="lfs-pointer", broken_target="zs"), "a Git LFS pointer"),
    ("bin-empty", dict(family="bert", broken_file="empty"), "empty (0 bytes)"),
    ("safetensors-empty", dict(family="bert", safetensors=True, broken_file="empty"), "empty (0 bytes)"),
    ("zs-empty", dict(family="prumux_masked", broken_file="empty", broken_target="zs"), "empty (0 bytes)"),
    ("bin-text", dict(family="bert", broken_file="text"), "a text file"),
    ("safetensors-text", dict(family="bert", safetensors=True, broken_file="text"), "a text file"),
    ("zs-text", dict(family="cofi_masked", broken_file="text", broken_target="zs"), "a text file"),
    ("bin-random", dict(family="bert", broken_file="random"), "not a PyTorch file"),
    ("zs-random", dict(family="cofi_masked", broken_file="random", broken_target="zs"), "not a PyTorch file"),
    ("bin-plain-pickle", dict(family="bert", broken_file="plain-pickle"), "a plain pickle"),
    ("bin-code-pickle", dict(family="bert", broken_file="code-pickle"), "needs arbitrary code"),
    ("zs-code-pickle", dict(family="cofi_masked", broken_file="code-pickle", broken_target="zs"),
     "needs arbitrary code"),
    ("bin-truncated", dict(family="bert", broken_file="truncated"), "truncated"),
    ("safetensors-truncated", dict(family="bert", safetensors=True, broken_file="truncated"), "truncated"),
]


@pytest.mark.parametrize("fields,expected", [c[1:] for c in F28_CASES], ids=[c[0] for c in F28_CASES])
def test_f28_not_a_checkpoint(tmp_path, fields, expected, capsys):
    path = _write(tmp_path, **fields)
    with pytest.raises(CheckpointError) as err:
        read_raw(path)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg
    assert (expected == "needs arbitrary code") == ("needs arbitrary code" in msg)
    if expected == "a Git LFS pointer":
        assert "git lfs pull" in msg
    assert "code ran while unpickling" not in capsys.readouterr().out


def test_f28_code_in_a_torch_archive_and_misnamed_safetensors(tmp_path, capsys):
    from prumux_compile.synthetic import _CallsPrint

    path = _write(tmp_path, family="bert")
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    torch.save({**sd, "extra": _CallsPrint()}, path / "pytorch_model.bin")  # a real torch archive with code
    with pytest.raises(CheckpointError, match="needs arbitrary code.*print"):
        read_raw(path)
    assert "code ran" not in capsys.readouterr().out
    from safetensors.torch import save_file

    save_file(sd, str(path / "pytorch_model.bin"))
    with pytest.raises(CheckpointError, match="a safetensors file under a PyTorch name"):
        read_raw(path)


def test_f28_lfs_pointer_is_130_bytes_like_git_writes(tmp_path):
    path = _write(tmp_path, family="bert", broken_file="lfs-pointer")
    text = (path / "pytorch_model.bin").read_text()
    assert text.startswith("version https://git-lfs.github.com/spec/v1\noid sha256:")
    assert 120 <= len(text) <= 140
