"""``prumux-compile inspect CKPT``: what a checkpoint holds and what compiling it removes."""
from __future__ import annotations

import json

import click

from prumux_compile.cli.common import fancy_output, handle_errors


@click.command("inspect")
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for scripts).")
@click.option("--seq-len", type=click.IntRange(min=1), default=128, show_default=True,
              help="Sequence length for FLOPs (compiled length).")
@handle_errors
def inspect_cmd(checkpoint: str, as_json: bool, seq_len: int) -> None:
    """Show family, N, variants, per-layer kept heads / FFN dims / hidden dims, params, FLOPs and sparsity.

    "Before" is the unpruned model that config.json describes (its original sizes), also for a compressed
    checkpoint whose file already holds the pruned weights; "after" is the compiled model."""
    from prumux_compile.checkpoint import load, unread_config_fields
    from prumux_compile.passes import compile_ir
    from prumux_compile.report.stats import summary

    ir = load(checkpoint, seq_len=seq_len)
    stored = ir
    if ir.masks is not None:  # what the file stores: the full model, its masks not applied
        stored = ir.clone()
        stored.masks = None
    after, reports = compile_ir(ir, stage="pruning")
    info = summary(stored, after)  # "before" = the unpruned geometry of config.json
    info["checkpoint"] = checkpoint
    info["config_fields_unread"] = unread_config_fields(ir.config)  # read by no upstream code (F22 in docs/field-faults.md)
    info["passes"] = [r.to_dict() for r in reports if r.changed]
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    _print(info, fancy_output())


def _print(info: dict, fancy: bool) -> None:
    head = (f"{info['checkpoint']}: family {info['family']}, N={info['num_instances']}, "
            f"mux {info['muxing_variant'] or '-'}, demux {info['demuxing_variant'] or '-'}, "
            f"hidden dims kept {info['hidden']['kept']}/{info['hidden']['total']}, "
            f"sparsity {info['sparsity']:.3f}")
    rows = [(str(r["layer"]), f"{r['heads']}/{r['heads_total']}", f"{r['ffn']}/{r['ffn_total']}",
             ", ".join(r["removed"]) or "-") for r in info["layers"]]
    p, f, g = info["params"], info["flops_per_sequence"], info["geometry"]
    b, a = g["before"], g["after"]
    foot = [f"unpruned (config.json) -> compiled: {b['layers']} -> {a['layers']} layers, {b['hidden']} -> "
            f"{a['hidden']} hidden dims, {b['heads']} -> {a['heads']} heads, {b['ffn']:,} -> {a['ffn']:,} FFN dims",
            f"params: {p['before']:,} -> {p['after']:,}",
            f"GFLOPs per sequence: {f['before'] / 1e9:.3f} -> {f['after'] / 1e9:.3f}",
            f"layers computed: {info['layers_computed']}"]
    if info["stored"]["params"] != p["before"]:
        foot.append(f"stored in the checkpoint: {info['stored']['params']:,} params (already pruned)"
                    if info["stored"]["params"] < p["before"] else
                    f"stored in the checkpoint: {info['stored']['params']:,} params")
    if fancy:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        console.print(head)
        t = Table("layer", "heads kept", "FFN dims kept", "removed")
        for r in rows:
            t.add_row(*r)
        console.print(t)
        for line in foot:
            console.print(line)
        return
    click.echo(head)
    click.echo(f"{'layer':>5}  {'heads kept':>10}  {'FFN dims kept':>13}  removed")
    for r in rows:
        click.echo(f"{r[0]:>5}  {r[1]:>10}  {r[2]:>13}  {r[3]}")
    for line in foot:
        click.echo(line)
