"""The 1-D-latent autoencoder (docs/design.md, pipeline step 3): filters → one number in [0, 1] → filters.

Centred unit-norm k x k filters are encoded by 4 layers to a single latent squashed to [0, 1] by a sigmoid and
decoded by 4 layers back to k x k. Decoding evenly spaced latents then traces the learned 1-D manifold of filter
shapes, which gives the candidate keys.

Sign symmetry: a key and its negative are the same key (the affine fit chooses the sign of ``a``). The model is
made sign-invariant by construction rather than by canonicalising signs, since any rule that picks one sign per
filter (the sign of the largest weight, of a projection ...) flips filters discontinuously near its boundary and tears
the manifold apart:

* the encoder's first layer is symmetrised, ``h(x) = act(W x + c) + act(-W x + c)``, so ``encode(x) == encode(-x)``
  exactly and both signs of a filter share one latent;
* the loss is sign-invariant: ``1 - |cos(x, x̂)|`` (``loss="cosine"``, the default; the decoded filter is centred
  first, as candidates are) or ``min(||x - x̂||², ||x + x̂||²)`` (``loss="mse"``); the decoder is free to output
  either sign.

Training samples filters with per-source weights (each source contributes equally however many filters it has),
is seeded (the same seed on the same device gives bitwise identical weights on CPU), and checkpoints atomically
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from masterkey.discover.chunks import ONE_PASS, blocks, row_chunks
from masterkey.discover.settings import LOSSES, AutoencoderConfig
from masterkey.errors import MasterkeyError
from masterkey.files import atomic_write
from masterkey.progress import progress_bar


class KeyAutoencoder(nn.Module):
    """4 encoder layers (the first sign-symmetrised) → 1 latent in [0, 1] → 4 decoder layers → k*k weights."""

    def __init__(self, kernel_size: int, hidden: int = 64) -> None:
        super().__init__()
        d = kernel_size * kernel_size
        self.kernel_size = kernel_size
        self.enc_in = nn.Linear(d, hidden)
        self.encoder = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.enc_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 1))
        self.decoder = nn.Sequential(
            nn.Linear(1, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, d),
        )

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Initialise every linear layer from ``generator`` (PyTorch's default scheme, but seeded locally)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.in_features)
                with torch.no_grad():
                    module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 2 * bound - bound)
                    module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 2 * bound - bound)

    def encode(self, x: Tensor) -> Tensor:
        """Latents in [0, 1], shape [N], of filters ``x`` ([N, k, k] or [N, k*k]); ``encode(-x) == encode(x)``."""
        flat = x.reshape(x.shape[0], -1)
        pre = self.enc_in(flat)
        bias = self.enc_in.bias
        # act(Wx + c) + act(-Wx + c): an even function of x, so both signs of a filter share one latent.
        h = nn.functional.silu(pre) + nn.functional.silu(2 * bias - pre)
        return torch.sigmoid(self.enc_out(self.encoder(h)))[:, 0]

    def decode(self, z: Tensor) -> Tensor:
        """Filters [N, k, k] decoded from latents ``z`` [N] (not normalised)."""
        out = self.decoder(z.reshape(-1, 1).to(self.decoder[0].weight.dtype))
        return out.reshape(-1, self.kernel_size, self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def sign_invariant_loss(x: Tensor, recon: Tensor, loss: str = "cosine") -> Tensor:
    """Per-filter reconstruction loss that does not care about the sign of ``recon``.

    ``x`` are centred unit-norm filters [N, d] (or [N, k, k]); ``"cosine"``: ``1 - |cos(x, centred recon)|``;
    ``"mse"``: ``min(||x - recon||², ||x + recon||²)``.
    """
    x = x.reshape(x.shape[0], -1)
    recon = recon.reshape(recon.shape[0], -1)
    if loss == "cosine":
        centred = recon - recon.mean(dim=1, keepdim=True)
        cos = (x * centred).sum(dim=1) / centred.norm(dim=1).clamp_min(1e-8) / x.norm(dim=1).clamp_min(1e-8)
        return 1 - cos.abs()
    if loss == "mse":
        return torch.minimum((x - recon).pow(2).sum(dim=1), (x + recon).pow(2).sum(dim=1))
    raise MasterkeyError(f"autoencoder loss {loss!r}: expected one of {', '.join(LOSSES)}")


def uniform_latent_penalty(z: Tensor) -> Tensor:
    """Squared 1-D Wasserstein distance between a batch of latents and the uniform distribution on [0, 1].

    Without it the encoder parks whole clusters of filters in the saturated ends of the sigmoid, where gradients
    vanish and distinct filter types collapse onto one latent. Pulling the sorted latents towards evenly spaced
    quantiles keeps every cluster in the live range and gives each a latent interval proportional to its share,
    so evenly spaced latents then decode to candidates where the filters are.
    """
    target = (torch.arange(z.shape[0], device=z.device, dtype=z.dtype) + 0.5) / z.shape[0]
    return (torch.sort(z).values - target).square().mean()


@dataclass
class TrainedAutoencoder:
    """A trained model, the loss curve (``(step, mean loss)`` every few steps) and the config it was trained with."""

    model: KeyAutoencoder
    config: AutoencoderConfig
    losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: int = 0  #: the step the run resumed from (0 for a fresh run)

    @torch.no_grad()
    def encode(self, filters: Tensor, batch: int | None = None) -> Tensor:
        """Latents (CPU, float32) of centred unit-norm filters, ``batch`` filters at a time (default: all of a bank
        of one chunk, blocks of a larger one; see :mod:`masterkey.discover.chunks`)."""
        device = next(self.model.parameters()).device
        self.model.eval()
        n = len(filters)
        parts = row_chunks(n, batch) if batch else blocks(n)
        latents = torch.empty(n, dtype=torch.float32)
        for rows in parts:
            latents[rows] = self.model.encode(filters[rows].to(device)).cpu()
        return latents

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Decoded filters [M, k, k] (CPU, float32, not normalised) for latents [M]."""
        device = next(self.model.parameters()).device
        self.model.eval()
        return self.model.decode(latents.to(device=device, dtype=torch.float32)).cpu()


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (``None``: unchanged), restoring the setting afterwards.

    The autoencoder's matrices are tiny: a second thread gains nothing on them, and when the cores are shared,
    OpenMP threads that wait for each other made each step 7-15x slower in measurements on the 2-core sandbox.
    """
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def _load_checkpoint(path: Path, fingerprint: str, config: AutoencoderConfig) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it was written for the same data and config; None otherwise."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None  # a damaged checkpoint (it is written atomically, so only by hand) is ignored and rewritten
    if state.get("fingerprint") != fingerprint or state.get("config") != asdict(config):
        return None
    return state


def _lr_at(step: int, config: AutoencoderConfig) -> float:
    warmup = max(1, config.steps // 20)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def cumulative_weights(weights: Tensor) -> Tensor:
    """The normalised cumulative sum of sampling ``weights`` [N] (float64), for :func:`draw_indices`."""
    cumulative = torch.cumsum(weights.to(torch.float64) / weights.sum(), 0)
    return cumulative / cumulative[-1]


def draw_indices(cumulative: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """``size`` indices drawn with replacement with the probabilities behind ``cumulative`` (inverse-CDF sampling).

    The same draws, and the same generator state after, as ``torch.multinomial(probs, size, replacement=True,
    generator=generator)``, which rebuilds the cumulative sum at every call (O(N) per batch: 3-5 ms for a million
    filters on the 2-core sandbox) and refuses more than 2^24 filters.
    """
    return torch.searchsorted(cumulative, torch.rand(size, dtype=torch.float64, generator=generator))


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
    """Train a :class:`KeyAutoencoder` on centred unit-norm ``filters`` [N, k, k].

    ``weights`` [N] (non-negative) set how often each filter is sampled, e.g. ``1 / size of its source`` so every
    source counts equally; uniform by default. With ``checkpoint`` the state (model, optimiser, sampler, step) is
    written there atomically every ``config.checkpoint_every`` steps and at the end, and a run with the same data
    and config resumes from it; a checkpoint of other data or another config is ignored (and overwritten).
    """
    config = config or AutoencoderConfig()
    with cpu_threads(config.cpu_threads if torch.device(device).type == "cpu" else None):
        return _train(filters, weights, config, device, checkpoint, progress, desc, on_checkpoint)


def _train(
    filters: Tensor,
    weights: Tensor | None,
    config: AutoencoderConfig,
    device: str | torch.device,
    checkpoint: str | Path | None,
    progress: bool,
    desc: str,
    on_checkpoint: Callable[[int], None] | None,
) -> TrainedAutoencoder:
    if filters.ndim != 3 or filters.shape[1] != filters.shape[2]:
        raise MasterkeyError(f"autoencoder: expected filters of shape [N, k, k], got {tuple(filters.shape)}")
    n, k = int(filters.shape[0]), int(filters.shape[-1])
    if n < 2:
        raise MasterkeyError(f"autoencoder: need at least 2 filters to train on, got {n}")
    if not all(bool(torch.isfinite(filters[rows]).all()) for rows in row_chunks(n, ONE_PASS)):
        raise MasterkeyError("autoencoder: the filters hold NaN or Inf values; exclude non-finite filters first")
    if weights is None:
        weights = torch.ones(n, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.shape != (n,) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise MasterkeyError(f"autoencoder: sampling weights must be {n} finite non-negative numbers")
    if not float(weights.sum()) > 0:
        raise MasterkeyError("autoencoder: the sampling weights are all zero")
    device = torch.device(device)
    fingerprint = data_fingerprint(filters, weights)

    model = KeyAutoencoder(k, config.hidden)
    model.reset_parameters(torch.Generator().manual_seed(config.seed))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sampler = torch.Generator().manual_seed(config.seed + 1)
    losses: list[tuple[int, float]] = []
    start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None:
        state = _load_checkpoint(path, fingerprint, config)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            sampler.set_state(state["sampler"])
            losses = [tuple(x) for x in state["losses"]]  # type: ignore[misc]
            start = int(state["step"])

    def save(step: int) -> None:
        if path is None:
            return
        _save_checkpoint(
            path,
            {
                "fingerprint": fingerprint,
                "config": asdict(config),
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "sampler": sampler.get_state(),
                "losses": losses,
            },
        )
        if on_checkpoint is not None:
            on_checkpoint(step)

    data = filters.to(device=device, dtype=torch.float32).reshape(n, -1)
    cumulative = cumulative_weights(weights)
    model.train()
    running, count = 0.0, 0
    bar = progress_bar(range(start, config.steps), desc=desc, unit="step", enabled=progress)
    for step in bar:
        index = draw_indices(cumulative, config.batch_size, sampler)
        x = data[index.to(device)]
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        z = model.encode(x)
        loss = sign_invariant_loss(x, model.decode(z), config.loss).mean()
        if config.spread > 0:
            loss = loss + config.spread * uniform_latent_penalty(z)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += float(loss.detach())
        count += 1
        if (step + 1) % 50 == 0 or step + 1 == config.steps:
            losses.append((step + 1, running / count))
            bar.set_postfix(loss=f"{running / count:.4f}")
            running, count = 0.0, 0
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            save(step + 1)
    model.eval()
    if start < config.steps:
        save(config.steps)
    return TrainedAutoencoder(model, config, losses, resumed_from=start)
