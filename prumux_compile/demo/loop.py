"""Plain PyTorch training and evaluation loops of the demo recipe (:mod:`prumux_compile.demo.train`).

Batching follows the compiled model's input preparation: sentences are tokenized like
:func:`prumux_compile.bench.data.load_eval_data` (``[CLS] ... [SEP]``, truncated to ``seq_len``). N = 1 batches
are padded to their longest row with an attention mask (the masked forward is length-invariant: positions with
mask 0 get weight exp(-10000) = 0 in fp32); multiplexed batches are padded to exactly ``seq_len`` by the model
itself, every N consecutive rows of a batch forming one mux group, so the model trains on the function it is
compiled to. Everything random is drawn from ``torch.Generator`` objects seeded by the caller, and dropout from
the global generator seeded at the start of every stage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from prumux_compile.errors import InputError

__all__ = ["Encoded", "encode", "batches", "collate", "StageConfig", "StageResult", "train_stage", "predict",
           "accuracy"]


@dataclass
class Encoded:
    """Tokenized sentences.

    Attributes:
        ids: one int64 tensor [length] per sentence (``[CLS] ... [SEP]``, at most ``seq_len`` tokens).
        labels: int64 [n] class ids.
    """

    ids: list[torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx) -> "Encoded":
        idx = [int(i) for i in idx]
        return Encoded([self.ids[i] for i in idx], self.labels[idx])


def encode(tokenizer, texts: list[str], labels: list[int], seq_len: int) -> Encoded:
    """Tokenize ``texts`` as the build's eval data are (``truncation=True, max_length=seq_len``, no padding)."""
    enc = tokenizer(list(texts), truncation=True, max_length=seq_len, padding=False)
    return Encoded([torch.tensor(x, dtype=torch.int64) for x in enc["input_ids"]],
                   torch.tensor(list(labels), dtype=torch.int64))


def batches(data: Encoded, batch: int, n: int, generator: torch.Generator, *, bucket: int = 0,
            steps: int | None = None) -> list[torch.Tensor]:
    """Index batches for one pass (or ``steps`` batches, cycling through seeded permutations).

    Every batch holds ``batch`` rows (a multiple of ``n``; the last, partial batch of a permutation is dropped).
    With ``bucket`` > 0 (N = 1 only), each run of ``bucket`` consecutive batches of the permutation is sorted by
    length before it is cut, and the batches are shuffled again: less padding, still random.
    """
    if batch < n or batch % n:
        raise InputError(f"batch {batch} must be a positive multiple of N={n}")
    if len(data) < batch:
        raise InputError(f"{len(data)} training sentences, fewer than one batch of {batch}")
    out: list[torch.Tensor] = []
    lengths = torch.tensor([len(x) for x in data.ids])
    while True:
        perm = torch.randperm(len(data), generator=generator)
        usable = (len(perm) // batch) * batch
        perm = perm[:usable]
        if bucket > 0:
            chunks = []
            for start in range(0, usable, batch * bucket):
                chunk = perm[start:start + batch * bucket]
                chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
                chunks.extend(chunk.split(batch))
            order = torch.randperm(len(chunks), generator=generator)
            cut = [chunks[int(i)] for i in order]
        else:
            cut = list(perm.split(batch))
        out.extend(cut)
        if steps is None:
            return out
        if len(out) >= steps:
            return out[:steps]


def collate(data: Encoded, idx: torch.Tensor, multiple: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [B, S] right-padded with 0 to the longest row rounded up to a multiple of ``multiple``,
    attention_mask [B, S], labels [B]). Few distinct shapes keep CPU kernels' first-call costs rare."""
    rows = [data.ids[int(i)] for i in idx]
    s = -(-max(len(r) for r in rows) // multiple) * multiple
    ids = torch.zeros(len(rows), s, dtype=torch.int64)
    mask = torch.zeros(len(rows), s, dtype=torch.int64)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = r
        mask[j, : len(r)] = 1
    return ids, mask, data.labels[idx]


@dataclass(frozen=True)
class StageConfig:
    """One fine-tuning stage.

    Attributes:
        steps: optimizer steps.
        batch: sentences per step (a multiple of N: batch / N mux groups).
        lr: peak learning rate of AdamW (linear warm-up over ``warmup`` of the steps, then linear decay to 0).
        head_lr: peak learning rate of the parameters whose names start with one of ``head_prefixes``
            (new, randomly initialised heads); None: ``lr``.
        warmup: fraction of steps of linear warm-up.
        weight_decay: AdamW decoupled weight decay (not applied to biases and LayerNorm weights).
        kd_weight: weight of the distillation loss ``T^2 KL(softmax(t/T) || softmax(s/T))`` (Hinton et al.,
            2015); the label cross-entropy gets ``1 - kd_weight``.
        temperature: T.
        bucket: length bucketing of N = 1 batches (see :func:`batches`).
        clip: gradient-norm clip.
        task_weight: weight of the classification loss (0: a pure retrieval warm-up).
        retrieval_weight: weight of DataMUX's retrieval loss (N > 1; the model needs ``retrieval=True``).
        retrieval_positions: positions per mux group the retrieval loss is computed on.
        heads_only: train only the parameters of ``head_prefixes`` (the encoder is frozen: no gradient is
            computed through it), e.g. to fit a fresh demultiplexer and classifier before end-to-end training.
        feature_weight: weight of the feature distillation loss: mean squared error between the classifier
            input (demultiplexed features; pooler output for N = 1) and the teacher's pooler output of the same
            sentence (CoFi / PruMUX distil hidden representations too; here only the classifier input).
    """

    steps: int
    batch: int
    lr: float
    head_lr: float | None = None
    warmup: float = 0.1
    weight_decay: float = 0.01
    kd_weight: float = 0.0
    temperature: float = 1.0
    bucket: int = 0
    clip: float = 1.0
    task_weight: float = 1.0
    retrieval_weight: float = 0.0
    retrieval_positions: int = 16
    feature_weight: float = 0.0
    heads_only: bool = False


@dataclass
class StageResult:
    """What a stage did: steps, mean loss of the last 10 % of steps, wall seconds, sentences seen, and the mean
    retrieval token accuracy of the last 10 % of steps (None without retrieval loss)."""

    steps: int
    final_loss: float
    seconds: float
    sentences: int
    retrieval_accuracy: float | None = None


def _param_groups(model, cfg: StageConfig, head_prefixes: tuple[str, ...]):
    groups: dict[tuple[float, float], list] = {}
    named = list(model.params.items()) + [(k, p) for k, p in getattr(model, "training_only", {}).items()]
    for name, p in named:
        if not p.requires_grad:
            continue
        key = name.replace("__", ".")
        head = key.startswith(head_prefixes) or key in getattr(model, "training_only", {})
        lr = cfg.head_lr if cfg.head_lr is not None and head else cfg.lr
        no_decay = key.endswith(".bias") or "LayerNorm" in key or "layer_norm" in key
        groups.setdefault((lr, 0.0 if no_decay else cfg.weight_decay), []).append(p)
    return [{"params": ps, "lr": lr, "initial_lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def train_stage(model, data: Encoded, cfg: StageConfig, *, seed: int, teacher_logits: torch.Tensor | None = None,
                teacher_features: torch.Tensor | None = None,
                head_prefixes: tuple[str, ...] = (), extra_loss: Callable | None = None,
                on_step: Callable[[int, dict], None] | None = None) -> StageResult:
    """Fine-tune ``model`` (a :class:`~prumux_compile.demo.model.DemoModel`) in place.

    Loss per step: ``(1 - kd_weight) * CE(logits, labels) + kd_weight * T^2 * KL`` against ``teacher_logits``
    [n, C] (rows aligned with ``data``), plus ``extra_loss(model, ids, groups)`` when given (the retrieval
    warm-up). Multiplexed models run the encoder once per step for both the classification and the retrieval
    loss (:meth:`~prumux_compile.demo.model.DemoModel.retrieval_loss`, weight ``retrieval_weight``).
    ``on_step(step, {"loss", "retrieval_accuracy"})`` after every optimizer step. Dropout is seeded with
    ``torch.manual_seed(seed)``; batches and retrieval positions come from a generator seeded with ``seed``.

    Raises:
        InputError: distillation asked for without teacher logits, or too little data for one batch.
    """
    import time

    if cfg.kd_weight > 0 and teacher_logits is None:
        raise InputError("distillation needs teacher logits")
    if cfg.feature_weight > 0 and teacher_features is None:
        raise InputError("feature distillation needs teacher features")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    frozen_now = []
    if cfg.heads_only:
        for name, p in model.params.items():
            if p.requires_grad and not name.replace("__", ".").startswith(head_prefixes):
                p.requires_grad_(False)
                frozen_now.append(p)
    try:
        return _train(model, data, cfg, seed, gen, teacher_logits, teacher_features, head_prefixes, extra_loss,
                      on_step)
    finally:
        for p in frozen_now:
            p.requires_grad_(True)


def _train(model, data, cfg, seed, gen, teacher_logits, teacher_features, head_prefixes, extra_loss, on_step):
    import time

    n = model.n
    plan = batches(data, cfg.batch, n, gen, bucket=cfg.bucket if n == 1 else 0, steps=cfg.steps)
    opt = torch.optim.AdamW(_param_groups(model, cfg, head_prefixes), betas=(0.9, 0.999), eps=1e-6)
    warm = max(1, int(round(cfg.warmup * cfg.steps)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warm))

    model.train()
    losses: list[float] = []
    r_accs: list[float] = []
    t0 = time.perf_counter()
    for step, idx in enumerate(plan):
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * factor(step)
        ids, mask, labels = collate(data, idx)
        if model.n > 1:
            states = model.muxed_encoder(ids)
            feats = model.demux(states)[: len(idx)]
        else:
            states, feats = None, model.features(ids, mask)
        logits = model.classify(feats) if cfg.task_weight > 0 else None
        loss = torch.zeros(())
        if cfg.feature_weight > 0:
            loss = loss + cfg.feature_weight * F.mse_loss(feats, teacher_features[idx], reduction="sum") / len(idx)
        if logits is not None:
            task = F.cross_entropy(logits, labels) * (1.0 - cfg.kd_weight)
            if cfg.kd_weight > 0:
                t = cfg.temperature
                target = F.log_softmax(teacher_logits[idx] / t, dim=-1)
                kl = F.kl_div(F.log_softmax(logits / t, dim=-1), target, log_target=True, reduction="batchmean")
                task = task + cfg.kd_weight * t * t * kl
            loss = loss + cfg.task_weight * task
        if cfg.retrieval_weight > 0 and states is not None:
            r_loss, r_acc = model.retrieval_loss(ids, states, cfg.retrieval_positions, gen)
            loss = loss + cfg.retrieval_weight * r_loss
            r_accs.append(r_acc)
        if extra_loss is not None:
            loss = loss + extra_loss(model, ids, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.clip)
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, {"loss": losses[-1], "retrieval_accuracy": r_accs[-1] if r_accs else None})
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    r_tail = [a for a in r_accs[-max(1, len(r_accs) // 10):] if a == a]
    return StageResult(len(plan), float(sum(tail) / len(tail)), time.perf_counter() - t0, len(plan) * cfg.batch,
                       float(sum(r_tail) / len(r_tail)) if r_tail else None)


def predict(model, data: Encoded, batch: int = 64) -> torch.Tensor:
    """Eval-mode logits [n, C] of every sentence, ``batch`` rows at a time (rounded down to a multiple of N,
    consecutive rows sharing a mux group, the last group padded as the compiled model pads it)."""
    model.eval()
    step = max(model.n, (batch // model.n) * model.n)
    # N = 1: rows are independent, so run them sorted by length (less padding) and restore the order
    order = (torch.argsort(torch.tensor([len(x) for x in data.ids]), stable=True) if model.n == 1
             else torch.arange(len(data)))
    out = []
    with torch.inference_mode():
        for start in range(0, len(data), step):
            ids, mask, _ = collate(data, order[start:start + step])
            out.append(model(ids, mask).float())
    logits = torch.empty(len(data), out[0].shape[1]) if out else torch.zeros(0, 2)
    if out:
        logits[order] = torch.cat(out)
    return logits


def logits_and_features(model, data: Encoded, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode logits [n, C] and classifier inputs [n, D] (pooler output) of an N = 1 model in one pass, rows in
    ``data`` order (computed sorted by length, which changes nothing for N = 1: rows are independent)."""
    if model.n != 1:
        raise InputError("logits_and_features() is for the N = 1 teacher")
    model.eval()
    order = torch.argsort(torch.tensor([len(x) for x in data.ids]), stable=True)
    feats, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(data), batch):
            ids, mask, _ = collate(data, order[start:start + batch])
            f = model.features(ids, mask)
            feats.append(f.float())
            logits.append(model.classify(f).float())
    out_f = torch.empty(len(data), feats[0].shape[1])
    out_l = torch.empty(len(data), logits[0].shape[1])
    out_f[order] = torch.cat(feats)
    out_l[order] = torch.cat(logits)
    return out_l, out_f


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float((logits.argmax(dim=1) == labels).double().mean()) if len(labels) else math.nan


#: Offset that keeps the probe-initialised demultiplexer's units in the near-linear range of gelu (gelu(z) ~ z for
#: z > 2.5), and the gate that switches another instance's units off (gelu(z - 30) = 0).
PROBE_OFFSET = 3.0
PROBE_GATE = 30.0


def probe_demux(model, data: Encoded, *, rows: int = 2048, lambdas=(1.0, 10.0, 100.0, 1e3, 1e4),
                scales=(0.5, 1.0, 2.0, 4.0, 8.0)) -> dict:
    """Initialise the index_pos demultiplexer and the classifier of a multiplexed model whose instances own
    disjoint hidden dims (binary_hadamard towers, :func:`prumux_compile.demo.grid.tower_trunk`) with a linear probe
    (ridge regression) of the label on each instance's chunk of the encoder state at position 0 — the classifier
    position — so that training starts from a demultiplexer that reads instance n from chunk n.

    Construction (docs/checkpoint-formats.md §2.6: ``y = gelu(dense_1([e_n ; h_0]))``, ``y += gelu(dense_2(y))``,
    ``z = LN(gelu(pre_decoder(y))) + y``, logits = classifier(z)): ``e_n`` = one-hot(n); ``dense_1`` maps chunk
    t of h_0 standardised (mean and standard deviation over ``rows`` training sentences, deviations floored at their
    median) into units of chunk t, plus :data:`PROBE_OFFSET`, and subtracts :data:`PROBE_GATE` from the units of
    every other chunk (so only instance n's units are on); ``dense_2`` is off (zero weights, bias −gate) and the
    pre-decoder LayerNorm's scale and shift are 0, so z = y; the classifier holds the probe's weights in every
    chunk and removes the offset in its bias. The probe is one ridge fit over all instances (the towers are
    copies), its λ the best of ``lambdas`` on the last 20 % of the rows (rows are instance-major: instance 0 of
    every group, then instance 1, ...; held out are sentences the fit did not see); the logit scale the best of
    ``scales`` by log-loss there. The offset keeps gelu near-linear for standardised values above about −0.5, so
    below that the demultiplexer approximates the probe. Training sentences only; the model is changed in place.

    Returns:
        ``{"probe_accuracy": held-out accuracy of the probe, "lambda": λ, "scale": logit scale, "rows": rows used}``.

    Raises:
        InputError: N = 1, a model whose instance vectors are not disjoint 0/1 chunks, or fewer than 2N rows.
    """
    n = model.n
    v = model._p("instance_embedding").detach()
    if n == 1 or v.dim() != 2 or not bool(((v == 0) | (v == 1)).all()) or not bool((v.sum(0) == 1).all()):
        raise InputError("probe_demux: needs a multiplexed model whose instance vectors are disjoint 0/1 chunks "
                         "(binary_hadamard)")
    chunks = [torch.nonzero(v[t]).flatten() for t in range(n)]
    width = min(len(c) for c in chunks)
    chunks = [c[:width] for c in chunks]  # the towers use the first c dims of every chunk (the rest is zero)
    groups = min(len(data), rows) // n
    if groups < 2:
        raise InputError(f"probe_demux: {len(data)} sentences, fewer than 2 mux groups of N={n}")
    model.eval()
    states = []
    with torch.inference_mode():
        step = max(1, 64 // n) * n
        for start in range(0, groups * n, step):
            ids, _, _ = collate(data, torch.arange(start, min(start + step, groups * n)))
            states.append(model.muxed_encoder(ids)[:, 0].double())
    h = torch.cat(states)  # [groups, d]
    x = torch.cat([h[:, c] for c in chunks])  # instance t of every group, t-major
    y = data.labels[: groups * n].view(groups, n).t().reshape(-1).double() * 2 - 1
    mu = x.mean(0)
    sd = x.std(0)
    sd = sd.clamp(min=float(sd.median()) if float(sd.median()) > 0 else 1.0)
    xs = torch.cat([(x - mu) / sd, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    cut = max(1, int(0.8 * len(xs)))
    fit, held = slice(0, cut), slice(cut, None) if cut < len(xs) else slice(0, cut)

    def ridge(lam: float, part: slice) -> torch.Tensor:
        a = xs[part]
        return torch.linalg.solve(a.T @ a + lam * torch.eye(a.shape[1], dtype=torch.float64), a.T @ y[part])

    scores = {lam: float(((xs[held] @ ridge(lam, fit) > 0).double() * 2 - 1 == y[held]).double().mean())
              for lam in lambdas}
    lam = max(lambdas, key=lambda k: (scores[k], -lambdas.index(k)))
    w = ridge(lam, slice(0, len(xs)))
    z = xs[held] @ w
    scale = min(scales, key=lambda a: float(F.binary_cross_entropy_with_logits(a * z, (y[held] + 1) / 2)))
    d = h.shape[1]
    e = torch.zeros(n, d)
    w1 = torch.zeros(d, 2 * d)
    b1 = torch.full((d,), -PROBE_GATE)
    wc = torch.zeros(model._p("classifier.weight").shape)
    if wc.shape[0] != 2:
        raise InputError(f"probe_demux: a 2-label classifier is needed, got {wc.shape[0]} labels")
    for t, c in enumerate(chunks):
        e[t, t] = 1.0
        w1[c, :n] = -PROBE_GATE
        w1[c, t] = 0.0
        w1[c, d + c] = (1.0 / sd).float()
        b1[c] = (-mu / sd + PROBE_OFFSET).float()
        wc[1, c] = (scale * w[:-1] / 2).float()
        wc[0, c] = (-scale * w[:-1] / 2).float()
    half = float(scale * (w[-1] - PROBE_OFFSET * w[:-1].sum()) / 2)
    new = {"demux_module.demux_instance_embedding": e, "demux_module.dense_1.weight": w1,
           "demux_module.dense_1.bias": b1, "demux_module.dense_2.weight": torch.zeros(d, d),
           "demux_module.dense_2.bias": torch.full((d,), -PROBE_GATE),
           "demultiplexer.pre_decoder_layer_norm.weight": torch.zeros(d),
           "demultiplexer.pre_decoder_layer_norm.bias": torch.zeros(d),
           "classifier.weight": wc, "classifier.bias": torch.tensor([-half, half])}
    with torch.no_grad():
        for key, val in new.items():
            p = model._p(key)
            if p.shape != val.shape:
                raise InputError(f"probe_demux: {key} has shape {list(p.shape)}, expected {list(val.shape)}")
            p.copy_(val.to(p.dtype))
    return {"probe_accuracy": scores[lam], "lambda": lam, "scale": scale, "rows": groups * n}
