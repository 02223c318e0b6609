"""The 1-D-latent autoencoder (docs/design.md, pipeline step 3): filters → one number in [0, 1] → filters.

Centred unit-norm k x k filters are encoded by 4 layers to a single latent squashed to [0, 1] by a sigmoid and
decoded by 4 layers back to k x k. Decoding evenly spaced latents then traces the learned 1-D manifold of filter
shapes, which gives the candidate keys.

Sign symmetry (masterkey's default; ``symmetric=False`` and ``loss="signed-cosine"`` are the paper's plain model): a
key and its negative are the same key (the affine fit chooses the sign of ``a``). The model is made sign-invariant
by construction rather than by canonicalising signs, since any rule that picks one sign per filter (the sign of the
largest weight, of a projection ...) flips filters discontinuously near its boundary and tears the manifold apart:

* the encoder's first layer is symmetrised, ``h(x) = act(W x + c) + act(-W x + c)``, so ``encode(x) == encode(-x)``
  exactly and both signs of a filter share one latent;
* the loss is sign-invariant: ``1 - |cos(x, x̂)|`` (``loss="cosine"``, the default; the decoded filter is centred
  first, as candidates are) or ``min(||x - x̂||², ||x + x̂||²)`` (``loss="mse"``); the decoder is free to output
  either sign.

Training (:mod:`masterkey.discover.training`) runs several autoencoders as one batched model, samples filters with
per-source weights (each source contributes equally however many filters it has), is seeded (the same seed on the
same device gives bitwise identical weights on CPU), stops once the candidates stop improving, and checkpoints
atomically so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from masterkey.discover.chunks import blocks, row_chunks
from masterkey.discover.settings import ACTIVATIONS, LOSSES, AutoencoderConfig
from masterkey.errors import MasterkeyError

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "AutoencoderConfig",
    "KeyAutoencoder",
    "TrainedAutoencoder",
    "cumulative_weights",
    "draw_indices",
    "reconstruction_loss",
    "sign_invariant_loss",
    "uniform_latent_penalty",
]

#: The hidden layers' activation functions by name (:data:`masterkey.discover.settings.ACTIVATIONS`).
ACTIVATION_FUNCTIONS = {"silu": nn.functional.silu, "relu": nn.functional.relu}
_MODULES = {"silu": nn.SiLU, "relu": nn.ReLU}


class KeyAutoencoder(nn.Module):
    """4 encoder layers (the first sign-symmetrised unless ``symmetric=False``) → 1 latent in [0, 1] → 4 decoder
    layers → k*k weights."""

    def __init__(self, kernel_size: int, hidden: int = 64, symmetric: bool = True, activation: str = "silu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise MasterkeyError(f"autoencoder activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        d = kernel_size * kernel_size
        act = _MODULES[activation]
        self.kernel_size = kernel_size
        self.symmetric = symmetric
        self.activation = activation
        self.enc_in = nn.Linear(d, hidden)
        self.encoder = nn.Sequential(act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, hidden))
        self.enc_out = nn.Sequential(act(), nn.Linear(hidden, 1))
        self.decoder = nn.Sequential(
            nn.Linear(1, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, hidden), act(),
            nn.Linear(hidden, d),
        )  # fmt: skip

    def linears(self) -> list[nn.Linear]:
        """The 8 linear layers in order (encoder then decoder)."""
        return [m for m in self.modules() if isinstance(m, nn.Linear)]

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Initialise every linear layer from ``generator`` (PyTorch's default scheme, but seeded locally)."""
        for module in self.linears():
            bound = 1.0 / math.sqrt(module.in_features)
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 2 * bound - bound)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 2 * bound - bound)

    def encode(self, x: Tensor) -> Tensor:
        """Latents in [0, 1], shape [N], of filters ``x`` ([N, k, k] or [N, k*k]); with ``symmetric``,
        ``encode(-x) == encode(x)``."""
        h = self.enc_in(x.reshape(x.shape[0], -1))
        if self.symmetric:
            # act(Wx + c) + act(-Wx + c): an even function of x, so both signs of a filter share one latent.
            act = ACTIVATION_FUNCTIONS[self.activation]
            h = act(h) + act(2 * self.enc_in.bias - h)
        return torch.sigmoid(self.enc_out(self.encoder(h)))[:, 0]

    def decode(self, z: Tensor) -> Tensor:
        """Filters [N, k, k] decoded from latents ``z`` [N] (not normalised)."""
        out = self.decoder(z.reshape(-1, 1).to(self.decoder[0].weight.dtype))
        return out.reshape(-1, self.kernel_size, self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def reconstruction_loss(x: Tensor, recon: Tensor, loss: str = "cosine", mask: Tensor | None = None) -> Tensor:
    """Per-filter reconstruction loss over the last dimension.

    ``x`` are centred unit-norm filters [..., d]; ``"cosine"``: ``1 - |cos(x, centred recon)|``; ``"mse"``:
    ``min(||x - recon||², ||x + recon||²)`` (both ignore the sign of ``recon``); ``"signed-cosine"``:
    ``1 - cos(x, recon)``, the paper's loss, which does not. ``mask`` [..., d] (1 where a weight exists, 0 on
    padding) restricts every sum and mean to the filter's own weights; ``x`` is zero on the padding.
    """
    if mask is not None:
        recon = recon * mask
    if loss == "cosine":
        # Not masterkey.normalize: a loss inside autograd, over padded filters of several sizes at once (the mean
        # over each filter's own weights), and the clamps keep a flat reconstruction's gradient finite.
        size = mask.sum(dim=-1, keepdim=True) if mask is not None else recon.shape[-1]
        centred = recon - recon.sum(dim=-1, keepdim=True) / size
        if mask is not None:
            centred = centred * mask
        cos = (x * centred).sum(dim=-1) / centred.norm(dim=-1).clamp_min(1e-8) / x.norm(dim=-1).clamp_min(1e-8)
        return 1 - cos.abs()
    if loss == "signed-cosine":
        cos = (x * recon).sum(dim=-1) / recon.norm(dim=-1).clamp_min(1e-8) / x.norm(dim=-1).clamp_min(1e-8)
        return 1 - cos
    if loss == "mse":
        return torch.minimum((x - recon).pow(2).sum(dim=-1), (x + recon).pow(2).sum(dim=-1))
    raise MasterkeyError(f"autoencoder loss {loss!r}: expected one of {', '.join(LOSSES)}")


def sign_invariant_loss(x: Tensor, recon: Tensor, loss: str = "cosine") -> Tensor:
    """:func:`reconstruction_loss` of filters [N, d] (or [N, k, k]) and their reconstructions."""
    return reconstruction_loss(x.reshape(x.shape[0], -1), recon.reshape(recon.shape[0], -1), loss)


def uniform_latent_penalty(z: Tensor) -> Tensor:
    """Squared 1-D Wasserstein distance between a batch of latents (the last dimension) and the uniform
    distribution on [0, 1]; one value per batch (a scalar for ``z`` [B]).

    Without it the encoder parks whole clusters of filters in the saturated ends of the sigmoid, where gradients
    vanish and distinct filter types collapse onto one latent. Pulling the sorted latents towards evenly spaced
    quantiles keeps every cluster in the live range and gives each a latent interval proportional to its share,
    so evenly spaced latents then decode to candidates where the filters are.
    """
    n = z.shape[-1]
    target = (torch.arange(n, device=z.device, dtype=z.dtype) + 0.5) / n
    return (torch.sort(z, dim=-1).values - target).square().mean(dim=-1)


@dataclass
class TrainedAutoencoder:
    """A trained model, the loss curve (``(step, mean loss)`` every few steps), the config it was trained with,
    and when and why training stopped."""

    model: KeyAutoencoder
    config: AutoencoderConfig
    losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: int = 0  #: the step the run resumed from (0 for a fresh run)
    steps: int = 0  #: the steps it trained for
    stopped_early: bool = False  #: whether the candidates' score stopped improving before ``config.steps``
    scores: list[tuple[int, float]] = field(default_factory=list)  #: ``(step, candidates' score)`` at each check

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


def cumulative_weights(weights: Tensor) -> Tensor:
    """The normalised cumulative sum of sampling ``weights`` [N] (float64), for :func:`draw_indices`."""
    cumulative = torch.cumsum(weights.to(torch.float64) / weights.sum(), 0)
    return cumulative / cumulative[-1]


def draw_indices(cumulative: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """``size`` indices drawn with replacement with the probabilities behind ``cumulative`` (inverse-CDF sampling).

    The same draws, and the same generator state after, as ``torch.multinomial(probs, size, replacement=True,
    generator=generator)``, which rebuilds the cumulative sum at every call (O(N) per batch) and refuses more than
    2^24 filters.
    """
    return torch.searchsorted(cumulative, torch.rand(size, dtype=torch.float64, generator=generator))
