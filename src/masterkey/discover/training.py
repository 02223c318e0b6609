"""Training the autoencoders: several at once as one batched model (:class:`AutoencoderStack`), seeded,
checkpointed, stopping each once its candidates stop improving (:func:`train_autoencoders`).

Why batched: a training step of these small models is almost all fixed per-operation cost (Python, autograd,
allocation), not arithmetic. One batched product per layer for all members costs little more than one member's
product, so the main job's three kernel sizes train in about the time of one. Each member's arithmetic stays its
own: its weights, batch, loss and Adam moments never mix with another's (inputs and outputs are zero-padded to the
largest kernel; the padded weights start at zero, get zero gradients and stay zero).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import pickle
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from masterkey.discover.autoencoder import (
    ACTIVATION_FUNCTIONS,
    KeyAutoencoder,
    TrainedAutoencoder,
    cumulative_weights,
    draw_indices,
    reconstruction_loss,
    uniform_latent_penalty,
)
from masterkey.discover.candidates import normalise_candidates
from masterkey.discover.chunks import ONE_PASS, row_chunks
from masterkey.discover.settings import AutoencoderConfig
from masterkey.errors import MasterkeyError
from masterkey.files import atomic_write
from masterkey.progress import progress_bar

__all__ = ["MONITOR_CANDIDATES", "MONITOR_FILTERS", "AutoencoderStack", "train_autoencoder", "train_autoencoders"]

log = logging.getLogger("masterkey")

#: Stopping watches this many of a member's filters (a fixed seeded sample) ...
MONITOR_FILTERS = 4096
#: ... against this many candidates decoded at evenly spaced latents (the default candidate count).
MONITOR_CANDIDATES = 50


class AutoencoderStack:
    """Several :class:`KeyAutoencoder` s of one architecture (kernel sizes may differ) as one batched model.

    Layer ``i`` of every member is one tensor ``weight[i]`` [G, in, out] (and ``bias[i]`` [G, 1, out]); the first
    layer's inputs and the last layer's outputs are zero-padded to ``width`` (default: the largest member's ``k*k``;
    ``mask`` marks each member's own weights). A member's arithmetic depends on the width, not on the other members:
    stacks of one width train each member to the same bits, however the members are grouped."""

    def __init__(
        self, members: Sequence[KeyAutoencoder], device: str | torch.device = "cpu", width: int | None = None
    ) -> None:
        if not members:
            raise MasterkeyError("autoencoder stack: no members")
        self.symmetric, self.activation = members[0].symmetric, members[0].activation
        self.sizes = [m.kernel_size**2 for m in members]
        self.width = max(self.sizes) if width is None else width
        if self.width < max(self.sizes):
            raise MasterkeyError(f"autoencoder stack: width {self.width} is below a member's {max(self.sizes)}")
        layers = [m.linears() for m in members]
        self.weight: list[Tensor] = []
        self.bias: list[Tensor] = []
        for i in range(len(layers[0])):
            inner = {(lin[i].in_features if i else 0, lin[i].out_features if i < 7 else 0) for lin in layers}
            if len(inner) != 1 or {(m.symmetric, m.activation) for m in members} != {(self.symmetric, self.activation)}:
                raise MasterkeyError("autoencoder stack: members must share one architecture")
            fan_in = self.width if i == 0 else layers[0][i].in_features
            fan_out = self.width if i == 7 else layers[0][i].out_features
            w = torch.zeros(len(members), fan_in, fan_out)
            b = torch.zeros(len(members), 1, fan_out)
            for g, lin in enumerate(layers):
                w[g, : lin[i].in_features, : lin[i].out_features] = lin[i].weight.detach().T
                b[g, 0, : lin[i].out_features] = lin[i].bias.detach()
            self.weight.append(w.to(device).requires_grad_())
            self.bias.append(b.to(device).requires_grad_())
        self.mask = torch.zeros(len(members), 1, self.width, device=device)
        for g, d in enumerate(self.sizes):
            self.mask[g, 0, :d] = 1.0

    def parameters(self) -> list[Tensor]:
        return [*self.weight, *self.bias]

    def _layer(self, i: int, h: Tensor) -> Tensor:
        w, b = self.weight[i], self.bias[i]
        if w.shape[0] == 1 and 1 in w.shape[1:]:
            # A lone member's product with a vector (this one, or its gradient) takes torch's matrix-vector path,
            # which rounds its sums otherwise than the batched product of two or more members; as a stack of two
            # (the copy without gradient) the member gets the bits it gets in any stack.
            return torch.baddbmm(torch.cat([b, b.detach()]), torch.cat([h, h.detach()]), torch.cat([w, w.detach()]))[:1]
        return torch.baddbmm(b, h, w)

    def encode(self, x: Tensor) -> Tensor:
        """Latents [G, B] of padded filters ``x`` [G, B, width] (:meth:`KeyAutoencoder.encode`, batched)."""
        act = ACTIVATION_FUNCTIONS[self.activation]
        h = self._layer(0, x)
        if self.symmetric:
            h = act(h) + act(2 * self.bias[0] - h)
        for i in (1, 2, 3):
            h = self._layer(i, act(h))
        return torch.sigmoid(h)[..., 0]

    def decode(self, z: Tensor) -> Tensor:
        """Padded decoded filters [G, B, width] of latents ``z`` [G, B] (:meth:`KeyAutoencoder.decode`, batched)."""
        act = ACTIVATION_FUNCTIONS[self.activation]
        h = self._layer(4, z[..., None])
        for i in (5, 6, 7):
            h = self._layer(i, act(h))
        return h

    def member(self, g: int, kernel_size: int, hidden: int) -> KeyAutoencoder:
        """Member ``g`` as a stand-alone :class:`KeyAutoencoder` (CPU; padding dropped)."""
        model = KeyAutoencoder(kernel_size, hidden, self.symmetric, self.activation)
        with torch.no_grad():
            for i, lin in enumerate(model.linears()):
                lin.weight.copy_(self.weight[i][g, : lin.in_features, : lin.out_features].T.cpu())
                lin.bias.copy_(self.bias[i][g, 0, : lin.out_features].cpu())
        return model.eval()

    def state(self) -> list[Tensor]:
        return [p.detach().cpu().clone() for p in self.parameters()]

    def load(self, state: Sequence[Tensor]) -> None:
        with torch.no_grad():
            for mine, saved in zip(self.parameters(), state, strict=True):
                mine.copy_(saved)


class _Adam:
    """Adam (Kingma & Ba; the update of ``torch.optim.Adam`` without amsgrad) over a few tensors, with foreach ops.

    Written out because ``torch.optim.Adam``'s constructor imports ``torch._dynamo``, which costs seconds of CPU,
    a sizeable part of the main job (docs/discover.md, "Autoencoder")."""

    def __init__(self, params: list[Tensor], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = params
        self.betas, self.eps = betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, lr: float, weight_decay: float) -> None:
        grads = [p.grad for p in self.params]
        if weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=weight_decay)
        beta1, beta2 = self.betas
        self.t += 1
        torch._foreach_lerp_(self.m, grads, 1 - beta1)
        torch._foreach_mul_(self.v, beta2)
        torch._foreach_addcmul_(self.v, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, math.sqrt(1 - beta2**self.t))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.m, denom, value=-lr / (1 - beta1**self.t))

    def state(self) -> dict[str, Any]:
        return {"m": [x.cpu() for x in self.m], "v": [x.cpu() for x in self.v], "t": self.t}

    def load(self, state: dict[str, Any]) -> None:
        device = self.params[0].device
        self.m = [x.to(device) for x in state["m"]]
        self.v = [x.to(device) for x in state["v"]]
        self.t = int(state["t"])


def data_fingerprint(filters: Tensor, weights: Tensor | None = None) -> str:
    """A short hash of the training data (and sampling weights), stored in checkpoints to refuse stale ones."""
    h = hashlib.sha256()
    h.update(str(tuple(filters.shape)).encode())
    # Hashed chunk by chunk from the tensor's own memory: the same digest as hashing all bytes at once, without
    # a copy of a large bank.
    for rows in row_chunks(int(filters.shape[0]), ONE_PASS):
        h.update(filters[rows].detach().cpu().contiguous().to(torch.float32).numpy())
    if weights is not None:
        h.update(weights.detach().cpu().contiguous().to(torch.float64).numpy())
    return h.hexdigest()[:32]


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it was written for the same data and config; None otherwise (a damaged one is
    named in a warning, then rebuilt)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        # It is written atomically, so only a disk error or a hand edit damages it.
        log.warning(f"{path}: damaged autoencoder checkpoint ({type(exc).__name__}: {exc}); training afresh")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        return None
    return state


def _lr_at(step: int, config: AutoencoderConfig) -> float:
    warmup = max(1, config.steps // 20)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _check_member(filters: Tensor, weights: Tensor | None) -> Tensor:
    if filters.ndim != 3 or filters.shape[1] != filters.shape[2]:
        raise MasterkeyError(f"autoencoder: expected filters of shape [N, k, k], got {tuple(filters.shape)}")
    n = int(filters.shape[0])
    if n < 2:
        raise MasterkeyError(f"autoencoder: need at least 2 filters to train on, got {n}")
    if not all(bool(torch.isfinite(filters[rows]).all()) for rows in row_chunks(n, ONE_PASS)):
        raise MasterkeyError("autoencoder: the filters hold NaN or Inf values; exclude non-finite filters first")
    weights = torch.ones(n, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if weights.shape != (n,) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise MasterkeyError(f"autoencoder: sampling weights must be {n} finite non-negative numbers")
    if not float(weights.sum()) > 0:
        raise MasterkeyError("autoencoder: the sampling weights are all zero")
    return weights


class _Member:
    """One autoencoder's data, sampler and stopping state during :func:`train_autoencoders`."""

    def __init__(self, filters: Tensor, weights: Tensor, config: AutoencoderConfig, device: torch.device) -> None:
        self.n, self.k = int(filters.shape[0]), int(filters.shape[-1])
        self.cumulative = cumulative_weights(weights)
        self.sampler = torch.Generator().manual_seed(config.seed + 1)
        self.data = filters.to(device=device, dtype=torch.float32).reshape(self.n, -1)
        self.fingerprint = data_fingerprint(filters, weights)
        picked = torch.randperm(self.n, generator=torch.Generator().manual_seed(config.seed + 2))[:MONITOR_FILTERS]
        self.monitor = picked.sort().values
        self.monitor_weights = weights[self.monitor].to(device)
        self.monitor = self.monitor.to(device)
        self.scores: list[tuple[int, float]] = []
        self.losses: list[tuple[int, float]] = []
        self.stopped_at: int | None = None
        self.snapshot: list[Tensor] | None = None  #: the member's weights when it stopped


def candidate_scores(stack: AutoencoderStack, members: Sequence[_Member]) -> list[float]:
    """What stopping watches, for every member: the weighted mean best cos² of a fixed seeded sample of its filters
    (:data:`MONITOR_FILTERS`) with :data:`MONITOR_CANDIDATES` candidates decoded at evenly spaced latents over the
    range the sample encodes to — the start of the greedy path, measured cheaply (one batched pass)."""
    device = stack.mask.device
    rows = max(len(m.monitor) for m in members)
    x = torch.zeros(len(members), rows, stack.width, device=device)
    for g, m in enumerate(members):
        x[g, : len(m.monitor), : m.data.shape[1]] = m.data[m.monitor]
    scores = []
    with torch.no_grad():
        z = stack.encode(x)
        grids = torch.stack(
            [torch.linspace(float(z[g, : len(m.monitor)].min()), float(z[g, : len(m.monitor)].max()),
                            MONITOR_CANDIDATES, device=device) for g, m in enumerate(members)]
        )  # fmt: skip
        decoded = stack.decode(grids)
        for g, m in enumerate(members):
            d = m.data.shape[1]
            cands, usable = normalise_candidates(decoded[g, :, :d].reshape(-1, m.k, m.k).cpu())
            flat = cands[usable].reshape(int(usable.sum()), d).double().to(device)
            best = (x[g, : len(m.monitor), :d].double() @ flat.T).square().amax(dim=1) if len(flat) else 0.0
            scores.append(float((best * m.monitor_weights).sum() / m.monitor_weights.sum()))
    return scores


def _check_stopping(stack: AutoencoderStack, members: Sequence[_Member], config: AutoencoderConfig, step: int) -> None:
    """Score every member's candidates; stop each active one whose best score of the last ``config.patience``
    checks is not ``config.stop_tol`` above its best before them (keeping a snapshot of its weights)."""
    if config.patience is None:
        return
    for m, score in zip(members, candidate_scores(stack, members), strict=True):
        if m.stopped_at is not None:
            continue
        m.scores.append((step, score))
        values = [s for _, s in m.scores]
        recent, before = values[-config.patience :], values[: -config.patience]
        if before and max(recent) < max(before) + config.stop_tol:
            m.stopped_at = step
            g = members.index(m)
            m.snapshot = [p[g].detach().clone() for p in stack.parameters()]


def train_autoencoders(
    data: Sequence[tuple[Tensor, Tensor | None]],
    config: AutoencoderConfig | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    progress: bool = False,
    desc: str = "autoencoders",
    on_checkpoint: Callable[[int], None] | None = None,
    width: int | None = None,
) -> list[TrainedAutoencoder]:
    """Train one :class:`KeyAutoencoder` per ``(filters [N, k, k], weights [N] or None)`` as one batched model
    (padded to ``width``, see :class:`AutoencoderStack`).

    Filters are centred and unit-norm; ``weights`` (non-negative) set how often each filter is sampled, e.g.
    ``1 / size of its source`` so every source counts equally (uniform when None). Each member is initialised and
    sampled from ``config.seed`` as if trained alone. A member stops when its candidates' score (see
    :class:`AutoencoderConfig`) stops improving: its weights at that step are kept while the others go on, and
    training ends when every member has stopped or after ``config.steps``. With ``checkpoint`` the state is written
    there atomically every ``config.checkpoint_every`` steps and at the end, and a run with the same data and config
    resumes from it; a checkpoint of other data or another config is ignored (and overwritten), a damaged one is
    named in a warning.
    """
    config = config or AutoencoderConfig()
    if not data:
        raise MasterkeyError("autoencoder: nothing to train")
    device = torch.device(device)
    members = [_Member(f, _check_member(f, w), config, device) for f, w in data]
    identity = [asdict(config), [m.fingerprint for m in members], *([width] if width is not None else [])]
    fingerprint = hashlib.sha256(repr(identity).encode()).hexdigest()[:32]
    models = []
    for m in members:
        model = KeyAutoencoder(m.k, config.hidden, config.symmetric, config.activation)
        model.reset_parameters(torch.Generator().manual_seed(config.seed))
        models.append(model)
    stack = AutoencoderStack(models, device, width)
    adam = _Adam(stack.parameters())
    start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    state = _load_checkpoint(path, fingerprint) if path is not None else None
    if state is not None:
        stack.load(state["stack"])
        adam.load(state["adam"])
        for m, saved in zip(members, state["members"], strict=True):
            m.sampler.set_state(saved["sampler"])
            m.scores = [tuple(s) for s in saved["scores"]]  # type: ignore[misc]
            m.losses = [tuple(s) for s in saved["losses"]]  # type: ignore[misc]
            m.stopped_at, m.snapshot = saved["stopped_at"], saved["snapshot"]
        start = int(state["step"])

    def save(step: int) -> None:
        if path is None:
            return
        saved = [
            {"sampler": m.sampler.get_state(), "scores": m.scores, "losses": m.losses, "stopped_at": m.stopped_at,
             "snapshot": m.snapshot}
            for m in members
        ]  # fmt: skip
        _save_checkpoint(
            path, {"fingerprint": fingerprint, "step": step, "stack": stack.state(), "adam": adam.state(),
                   "members": saved}
        )  # fmt: skip
        if on_checkpoint is not None:
            on_checkpoint(step)

    step = _train_steps(stack, adam, members, config, start, save, progress, desc)
    if step > start:
        save(step)
    out = []
    for g, m in enumerate(members):
        if m.snapshot is not None:
            with torch.no_grad():
                for p, saved in zip(stack.parameters(), m.snapshot, strict=True):
                    p[g] = saved
        stopped = m.stopped_at is not None and m.stopped_at < config.steps
        out.append(
            TrainedAutoencoder(stack.member(g, m.k, config.hidden), config, m.losses, start, m.stopped_at or step,
                               stopped, m.scores)
        )  # fmt: skip
    return out


def _train_steps(
    stack: AutoencoderStack,
    adam: _Adam,
    members: list[_Member],
    config: AutoencoderConfig,
    start: int,
    save: Callable[[int], None],
    progress: bool,
    desc: str,
) -> int:
    """Steps ``start`` .. until every member stopped or ``config.steps``; returns the steps done."""
    device = stack.mask.device
    running = torch.zeros(len(members), dtype=torch.float64)
    count = 0
    batch = torch.zeros(len(members), config.batch_size, stack.width, device=device)
    step = start
    bar = progress_bar(total=config.steps, initial=start, desc=desc, unit="step", enabled=progress)
    while step < config.steps and any(m.stopped_at is None for m in members):
        for g, m in enumerate(members):
            index = draw_indices(m.cumulative, config.batch_size, m.sampler)
            batch[g, :, : m.data.shape[1]] = m.data[index.to(device)]
        z = stack.encode(batch)
        per_member = reconstruction_loss(batch, stack.decode(z), config.loss, stack.mask).mean(dim=1)
        if config.spread > 0:
            per_member = per_member + config.spread * uniform_latent_penalty(z)
        for p in stack.parameters():
            p.grad = None
        per_member.sum().backward()
        adam.step(_lr_at(step, config), config.weight_decay)
        running += per_member.detach().double().cpu()
        count += 1
        step += 1
        bar.update(1)
        if step % config.check_every == 0 or step == config.steps:
            for g, m in enumerate(members):
                if m.stopped_at is None:
                    m.losses.append((step, float(running[g] / count)))
            bar.set_postfix(loss=f"{float(running.mean() / count):.4f}")
            running.zero_()
            count = 0
            _check_stopping(stack, members, config, step)
        if step % config.checkpoint_every == 0 and step < config.steps:
            save(step)
    bar.close()
    return step


def train_autoencoder(
    filters: Tensor,
    weights: Tensor | None = None,
    config: AutoencoderConfig | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    progress: bool = False,
    desc: str = "autoencoder",
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainedAutoencoder:
    """Train one :class:`KeyAutoencoder` on centred unit-norm ``filters`` [N, k, k] (see
    :func:`train_autoencoders`)."""
    return train_autoencoders([(filters, weights)], config, device, checkpoint, progress, desc, on_checkpoint)[0]
