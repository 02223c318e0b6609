"""KeySet: a named set of centred, unit-norm k x k key filters with provenance.

Built-ins (see :func:`load_keys`): ``paper8`` (the published 7x7 keys, attribution in
``masterkey/assets/paper8_7x7.txt``), ``random:K[:SEED]``, ``impulse``, ``scalespace8``.
Key sets are saved as safetensors (tensor ``keys`` [K, k, k] plus one JSON metadata entry) and read from
safetensors or the text format of ``paper8_7x7.txt`` (``Filter N:`` then k rows of k numbers).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from masterkey.errors import MasterkeyError, option
from masterkey.files import KEYSET_FORMAT, KEYSET_TEXT_HEADER, atomic_write, safetensors_bytes
from masterkey.jsonio import dumps, loads
from masterkey.normalize import EXCLUDED, excluded_counts, filter_flags_array, unit_rows_array
from masterkey.reading import read_text, regular_file

if TYPE_CHECKING:
    from torch import Tensor

#: Bounds of a key set: keys, kernel size, and the largest text key file read (larger sets: use safetensors).
MAX_KEYS = 10_000
MAX_KERNEL_SIZE = 63
MAX_TEXT_BYTES = 64 << 20
PAPER8_ATTRIBUTION = (
    "Babaiee, Kiasari, Rus, Grosu, 'The Quest for Universal Master Key Filters in DS-CNNs', NeurIPS 2025 "
    "(arXiv 2509.11711); values from tonylindeberg/masterfiltmodel model-fitting/8Filters.txt, CC-BY-4.0, "
    "Copyright 2026 Tony Lindeberg (arXiv 2509.12746)"
)


class _KeyShape:
    """What a key set (torch: :class:`KeySet`, numpy: :class:`KeyValues`) tells about its shape and labels."""

    name: str
    keys: Any
    labels: tuple[str, ...] | None

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def kernel_size(self) -> int:
        return int(self.keys.shape[-1])

    def key_labels(self) -> list[str]:
        """Labels of the keys, ``1..K`` when none were given."""
        return list(self.labels) if self.labels is not None else [str(i + 1) for i in range(len(self))]

    def __repr__(self) -> str:
        return f"KeySet({self.name!r}, {len(self)} keys, {self.kernel_size}x{self.kernel_size})"


@dataclass(frozen=True, repr=False)  # the repr of _KeyShape
class KeySet(_KeyShape):
    """``keys`` is [K, k, k] float32, each key centred and unit-norm (enforced on construction)."""

    name: str
    keys: Tensor
    provenance: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        import torch

        keys = torch.as_tensor(self.keys).detach()
        device = keys.device  # checked and normalised on the CPU (:class:`KeyValues`), kept where they were given
        keys = keys.cpu() if keys.dtype in (torch.float32, torch.float64) else keys.cpu().to(torch.float64)
        values = KeyValues(self.name, keys.numpy(), self.provenance, self.labels)
        object.__setattr__(self, "keys", torch.from_numpy(values.keys).to(device))
        object.__setattr__(self, "labels", values.labels)

    @classmethod
    def of(cls, values: KeyValues) -> KeySet:
        """The key set of ``values`` (already checked and normalised, so kept bit for bit)."""
        return cls(values.name, values.keys, values.provenance, values.labels)

    # ------------------------------------------------------------------ resizing
    def resized(self, kernel_size: int) -> KeySet:
        """The keys centre-cropped (smaller) or zero-padded (larger) to ``kernel_size``, then re-normalised.

        A crop is not a re-fit: a 3x3 crop of a 7x7 key keeps only its centre. The provenance says so.
        """
        if kernel_size == self.kernel_size:
            return self
        values = KeyValues(self.name, self.keys.cpu().numpy(), self.provenance, self.labels).resized(kernel_size)
        return KeySet(values.name, self.keys.new_tensor(values.keys), values.provenance, values.labels)

    # ------------------------------------------------------------------ files
    def to_bytes(self) -> bytes:
        """The key set as a safetensors file (tensor ``keys`` plus one JSON metadata entry), bitwise stable."""
        meta = {
            "format": KEYSET_FORMAT,
            "name": self.name,
            "provenance": self.provenance,
            "labels": self.labels,
        }
        return safetensors_bytes({"keys": self.keys}, metadata={"masterkey": dumps(meta, indent=None, sort_keys=True)})

    def to_text(self) -> str:
        """The key set in the ``Filter N:`` text format (values rounded to 6 decimals)."""
        lines = [f"{KEYSET_TEXT_HEADER}{self.name}: {dumps(self.provenance, indent=None, sort_keys=True)}"]
        for i, key in enumerate(self.keys):
            lines.append(f"Filter {i + 1}:")
            lines.extend(" ".join(f"{v:.6f}" for v in row.tolist()) for row in key)
            lines.append("")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        """Write as safetensors (atomically; no output rule: for files inside an output being built)."""
        with atomic_write(path) as f:
            f.write(self.to_bytes())

    def save_text(self, path: str | Path) -> None:
        """Write in the ``Filter N:`` text format (atomically; no output rule, as :meth:`save`)."""
        with atomic_write(path, "w") as f:
            f.write(self.to_text())

    @classmethod
    def load(cls, path: str | Path) -> KeySet:
        """Read a key set from ``.safetensors`` or a text file; errors name the file and the problem."""
        return cls.of(KeyValues.load(path))


@dataclass(frozen=True, repr=False)
class KeyValues(_KeyShape):
    """The numbers of a key set, without torch: ``keys`` is a numpy [K, k, k] float32 array, each key centred and
    unit-norm (enforced on construction). :class:`KeySet` is built on it; reading, checking, normalising and
    resizing keys happen here, so that ``masterkey keys show`` prints a key set without importing torch."""

    name: str
    keys: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        keys = np.asarray(self.keys)
        if keys.ndim != 3 or keys.shape[1] != keys.shape[2] or keys.shape[0] == 0:
            raise MasterkeyError(f"key set '{self.name}': expected keys of shape [K, k, k], got {tuple(keys.shape)}")
        values = keys.astype(np.float64)
        bad = (filter_flags_array(values) & int(EXCLUDED)) != 0
        if bad.any():
            counts = {n: c for n, c in excluded_counts(filter_flags_array(values[bad])).items() if c}
            first = int(np.flatnonzero(bad)[0]) + 1
            raise MasterkeyError(
                f"key set '{self.name}': key {first} (of {len(keys)}) is unusable {counts}; keys must be finite "
                "and non-constant"
            )
        flat = values.reshape(len(values), -1)
        normalised = (np.abs(flat.mean(axis=1)) < 1e-6).all() and np.abs(np.linalg.norm(flat, axis=1) - 1).max() < 1e-5
        if normalised and keys.dtype == np.float32:
            # Already centred unit-norm float32 keys are kept bit for bit, so files round-trip exactly.
            out = keys.copy()
        else:
            out = unit_rows_array(flat).reshape(values.shape).astype(np.float32)
        object.__setattr__(self, "keys", np.ascontiguousarray(out))
        if self.labels is not None:
            labels = tuple(str(x) for x in self.labels)
            if len(labels) != len(keys):
                raise MasterkeyError(f"key set '{self.name}': {len(labels)} labels for {len(keys)} keys")
            object.__setattr__(self, "labels", labels)

    def resized(self, kernel_size: int) -> KeyValues:
        """As :meth:`KeySet.resized`: centre-cropped or zero-padded to ``kernel_size``, then re-normalised."""
        k = self.kernel_size
        if kernel_size == k:
            return self
        if kernel_size < 1 or (k - kernel_size) % 2:
            raise MasterkeyError(
                f"key set '{self.name}': cannot resize {k}x{k} keys to {kernel_size}x{kernel_size} "
                "(centre crop / pad needs sizes of the same parity)"
            )
        if kernel_size < k:
            m = (k - kernel_size) // 2
            keys = self.keys[:, m : m + kernel_size, m : m + kernel_size]
            how = f"centre-cropped from {k}x{k} (a crop, not a re-fit)"
        else:
            p = (kernel_size - k) // 2
            keys = np.pad(self.keys, ((0, 0), (p, p), (p, p)))
            how = f"zero-padded from {k}x{k}"
        try:
            return KeyValues(
                f"{self.name}@{kernel_size}x{kernel_size}",
                keys,
                {**self.provenance, "resized": how},
                self.labels,
            )
        except MasterkeyError as exc:
            raise MasterkeyError(f"{exc} after resizing to {kernel_size}x{kernel_size}") from None

    @classmethod
    def load(cls, path: str | Path) -> KeyValues:
        """Read a key set from ``.safetensors`` or a text file; errors name the file and the problem."""
        path = Path(path)
        if path.is_dir():
            hint = f"; did you mean {path / 'keys.safetensors'}?" if (path / "keys.safetensors").is_file() else ""
            raise MasterkeyError(f"{path}: a folder, not a key file{hint}")
        regular_file(path, "key file")  # never "no such file" for a FIFO, a device or a link loop
        if path.suffix == ".safetensors":
            return _load_safetensors(path)
        return _load_text(path)


def _check_size(path: Path, count: int, k: int) -> None:
    if count > MAX_KEYS:
        raise MasterkeyError(f"{path}: {count:,} keys; a key set holds at most {MAX_KEYS:,}")
    if k > MAX_KERNEL_SIZE:
        raise MasterkeyError(f"{path}: {k}x{k} keys; kernel sizes go up to {MAX_KERNEL_SIZE}")


def _keyset_metadata(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    """The validated ``masterkey`` metadata entry of a key file (empty for a foreign safetensors file)."""
    if "masterkey" not in raw:
        return {}
    try:
        meta = loads(raw["masterkey"], path)
    except MasterkeyError:
        meta = None
    if not isinstance(meta, dict):
        raise MasterkeyError(f"{path}: corrupt key-set metadata (not a JSON object)")
    checks = {
        "name": lambda v: v is None or isinstance(v, str),
        "provenance": lambda v: v is None or isinstance(v, dict),
        "labels": lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
        "format": lambda v: v is None or v == KEYSET_FORMAT,
    }
    for name, ok in checks.items():
        if not ok(meta.get(name)):
            raise MasterkeyError(f"{path}: corrupt key-set metadata ({name}={meta.get(name)!r})")
    return meta


#: safetensors dtypes that numpy cannot hold; such key files are read through torch.
_TORCH_ONLY_DTYPES = {"BF16", "F8_E4M3", "F8_E5M2"}


def _load_safetensors(path: Path) -> KeyValues:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            names = list(f.keys())
            meta = _keyset_metadata(path, f.metadata() or {})
            if "keys" in names:
                name = "keys"
            elif len(names) == 1:
                name = names[0]
            else:
                raise MasterkeyError(f"{path}: expected one tensor named 'keys', found {names[:10]}")
            shape = tuple(f.get_slice(name).get_shape())
            if len(shape) in (3, 4) and shape[-1] == shape[-2]:
                _check_size(path, shape[0], shape[-1])
            if f.get_slice(name).get_dtype() in _TORCH_ONLY_DTYPES:
                keys = _read_through_torch(path, name)
            else:
                keys = f.get_tensor(name)
    except MasterkeyError:
        raise
    except Exception as exc:
        raise MasterkeyError(f"{path}: not a readable safetensors key file ({str(exc).splitlines()[0]})") from None
    if keys.ndim == 4 and keys.shape[1] == 1:
        keys = keys[:, 0]
    if keys.ndim != 3 or keys.shape[1] != keys.shape[2]:
        raise MasterkeyError(f"{path}: keys must have shape [K, k, k] (or [K, 1, k, k]), got {tuple(keys.shape)}")
    if not (np.issubdtype(keys.dtype, np.floating) or keys.dtype in (np.int8, np.int16, np.int32, np.int64)):
        raise MasterkeyError(f"{path}: keys must be real numbers, got {keys.dtype}")
    if not np.isfinite(keys.astype(np.float64)).all():
        raise MasterkeyError(f"{path}: keys hold NaN or Inf values")
    try:
        return KeyValues(
            meta.get("name") or path.stem,
            keys.astype(np.float32),
            {**(meta.get("provenance") or {}), "file": str(path)},
            meta.get("labels"),
        )
    except MasterkeyError as exc:
        raise MasterkeyError(f"{path}: {exc}") from None


def _read_through_torch(path: Path, name: str) -> np.ndarray:
    """A tensor of a dtype numpy lacks (bfloat16, float8), as float32."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(name).float().numpy()


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_EXPECTED_TEXT = "expected 'Filter N:' blocks of k rows of k numbers"


def _load_text(path: Path) -> KeyValues:
    text = read_text(path, MAX_TEXT_BYTES, "text key file")  # bounded: use .safetensors for larger key sets
    blocks: list[list[list[float]]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"^(filter|key)\b.*:$", line, re.IGNORECASE):
            blocks.append([])
            continue
        parts = line.replace(",", " ").split()
        if not all(_FLOAT.match(p) or p.lower() in ("nan", "inf", "-inf") for p in parts):
            raise MasterkeyError(f"{path}:{lineno}: expected a row of numbers, got {line[:60]!r}")
        values = [float(p) for p in parts]
        if not all(map(_finite, values)):
            raise MasterkeyError(f"{path}:{lineno}: non-finite value in a key")
        if not blocks:
            blocks.append([])
        blocks[-1].append(values)
    blocks = [b for b in blocks if b]
    if not blocks:
        raise MasterkeyError(f"{path}: no keys found ({_EXPECTED_TEXT})")
    for i, block in enumerate(blocks, 1):
        widths = sorted({len(row) for row in block})
        if widths != [len(block)]:
            shown = ", ".join(map(str, widths))
            raise MasterkeyError(
                f"{path}: key {i} is {len(block)} row(s) of {shown} number(s); a key is square, k rows of k numbers"
            )
    k = len(blocks[0])
    for i, block in enumerate(blocks, 1):
        if len(block) != k:
            raise MasterkeyError(
                f"{path}: key {i} is {len(block)}x{len(block)} but key 1 is {k}x{k}; keys share one size"
            )
    if k < 2:
        raise MasterkeyError(f"{path}: keys are {k}x{k}; need k >= 2")
    _check_size(path, len(blocks), k)
    try:
        return KeyValues(path.stem, np.array(blocks, dtype=np.float64), {"file": str(path)})
    except MasterkeyError as exc:
        raise MasterkeyError(f"{path}: {exc}") from None


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


# ---------------------------------------------------------------------- built-ins
Builtin = Callable[[int | None, list[str]], KeyValues]
_BUILTINS: dict[str, tuple[Builtin, str, str]] = {}


def register_keyset(name: str, help: str, usage: str | None = None) -> Callable[[Builtin], Builtin]:
    """Register a built-in key set factory ``fn(kernel_size or None, args) -> KeySet``. ``usage`` shows the
    ``:``-separated arguments it takes, e.g. ``random:K[:SEED]`` (None: no arguments); more are refused."""

    def deco(fn: Builtin) -> Builtin:
        _BUILTINS[name] = (fn, help, usage or name)
        return fn

    return deco


def builtin_keysets() -> dict[str, str]:
    """Names of the built-in key sets and what they are."""
    return {name: help for name, (_, help, _) in sorted(_BUILTINS.items())}


@register_keyset("paper8", "the 8 published 7x7 master keys (Babaiee et al. 2025; values CC-BY-4.0 Lindeberg)")
def paper8(kernel_size: int | None = None, args: list[str] | None = None) -> KeyValues:
    path = Path(str(resources.files("masterkey") / "assets" / "paper8_7x7.txt"))
    loaded = _load_text(path)
    labels = (
        "1 shift-down",
        "2 shift-right",
        "3 shift-up",
        "4 shift-left",
        "5 d/dx",
        "6 d/dy",
        "7 centre-surround",
        "8 gaussian",
    )
    return KeyValues("paper8", loaded.keys, {"source": "paper8", "attribution": PAPER8_ATTRIBUTION}, labels)


def _int_part(spec: str, text: str, what: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d+", text):
        raise MasterkeyError(f"keys {spec!r}: {what} must be a whole number from {low:,} to {high:,}, got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise MasterkeyError(f"keys {spec!r}: {what} must be from {low:,} to {high:,}, got {value:,}")
    return value


@register_keyset(
    "random", "random:K[:SEED] — K Gaussian random keys (a reference with no structure)", "random:K[:SEED]"
)
def random_keys(kernel_size: int | None, args: list[str]) -> KeyValues:
    import torch  # the keys are torch's seeded Gaussian draws, as they always were

    spec = ":".join(["random", *args])
    if not args:
        raise MasterkeyError(f"keys {spec!r}: give the number of keys, as in random:8 or random:8:SEED")
    count = _int_part(spec, args[0], "the number of keys K", 1, MAX_KEYS)
    seed = _int_part(spec, args[1], "the seed", 0, 2**32 - 1) if len(args) > 1 else 0
    k = kernel_size or 7
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(count, k, k, generator=gen, dtype=torch.float64).numpy()
    return KeyValues(f"random:{count}:{seed}", keys, {"source": "random", "count": count, "seed": seed})


@register_keyset("impulse", "one centred impulse key (a pixel-copy baseline)")
def impulse(kernel_size: int | None, args: list[str]) -> KeyValues:
    k = kernel_size or 7
    key = np.zeros((1, k, k), dtype=np.float64)
    key[0, k // 2, k // 2] = 1.0
    return KeyValues("impulse", key, {"source": "impulse"}, ("impulse",))


@register_keyset("scalespace8", "the 8 keys modelled by discrete scale-space kernels (Lindeberg et al. 2026)")
def scalespace8(kernel_size: int | None, args: list[str]) -> KeyValues:
    from masterkey.kernels import PAPER8_SCALESPACE, scalespace8_kernels

    if kernel_size is not None and (kernel_size < 3 or kernel_size % 2 == 0):
        raise MasterkeyError(f"keys 'scalespace8' are made at odd kernel sizes >= 3, not {kernel_size}x{kernel_size}")
    kernels, labels = scalespace8_kernels(kernel_size or 7)
    columns = ("label", "family", "sigma_x", "sigma_y", "gamma", "sign", "cosine")
    provenance = {
        "source": "scalespace",
        "parameters": [
            {"key": i + 1, **dict(zip(columns, row, strict=True))} for i, row in enumerate(PAPER8_SCALESPACE)
        ],
        "fitted_to": "paper8 (7x7)",
        "model": "Lindeberg, Babaiee & Kiasari, JMIV 2026 (arXiv 2509.12746): differences of T(n; σ) = e^{-σ²} I_n(σ²)",
    }
    return KeyValues("scalespace8", kernels, provenance, labels)


_GENERATED = {"random", "impulse", "scalespace8"}


def check_kernel_size(kernel_size: int | None, what: str = "kernel size") -> None:
    """Refuse kernel sizes outside ``2..MAX_KERNEL_SIZE`` (``None`` means: the key set's own)."""
    if kernel_size is not None and not (isinstance(kernel_size, int) and 2 <= kernel_size <= MAX_KERNEL_SIZE):
        raise MasterkeyError(f"{what} {kernel_size!r}: expected an integer from 2 to {MAX_KERNEL_SIZE}")


def load_keys(spec: str | Path | KeySet, kernel_size: int | None = None, resize: bool = False) -> KeySet:
    """A key set from any key spec: a built-in (``paper8``, ``random:8:0``, ``impulse``, ``scalespace8``), a key
    file, a discover run directory or ``DIR:METHOD`` (see :func:`resolve_key_spec`). A run with keys for several
    kernel sizes gives the keys of ``kernel_size`` (or, with ``resize``, of the nearest size of the same parity);
    with no size asked for, its largest keys.

    ``kernel_size`` asks for keys of that size: generated built-ins are made at that size; fixed ones (``paper8``,
    files) must match it, or are centre-cropped / zero-padded when ``resize`` is true. Every size is bounded
    (:data:`MAX_KEYS`, :data:`MAX_KERNEL_SIZE`) before anything is made.
    """
    if not isinstance(spec, KeySet):
        return KeySet.of(load_key_values(spec, kernel_size, resize))
    check_kernel_size(kernel_size)
    return _sized(spec, kernel_size, resize)


def load_key_values(spec: str | Path, kernel_size: int | None = None, resize: bool = False) -> KeyValues:
    """:func:`load_keys` as numpy :class:`KeyValues`: the same specs, checks and messages, without torch (except
    for ``random:K``, whose keys are torch's seeded draws)."""
    check_kernel_size(kernel_size)
    resolved = resolve_key_spec(str(spec))
    if isinstance(resolved, dict):
        return _per_size_keys(str(spec), resolved, kernel_size, resize)
    text = str(resolved)
    name, *args = text.split(":")
    if not text.strip():
        raise MasterkeyError("keys '': empty; give a built-in key set or a key file")
    if name in _BUILTINS and not Path(text).is_file():
        factory, _, usage = _BUILTINS[name]
        if len(args) > usage.count(":"):
            takes = f"is written {usage}" if ":" in usage else "takes no arguments"
            raise MasterkeyError(f"keys {text!r}: {name} {takes}")
        values = factory(kernel_size if name in _GENERATED else None, args)
    elif os.path.lexists(text):  # a FIFO, a dangling link or a link loop too: KeyValues.load says which
        values = KeyValues.load(text)
    else:
        known = ", ".join(_BUILTINS)
        raise MasterkeyError(f"keys {text!r}: neither a key file nor a built-in key set ({known})")
    return _sized(values, kernel_size, resize)


def _sized(keyset: Any, kernel_size: int | None, resize: bool) -> Any:
    """``keyset`` (a :class:`KeySet` or :class:`KeyValues`) at ``kernel_size``: as it is, or resized when allowed."""
    if kernel_size is not None and keyset.kernel_size != kernel_size:
        if not resize:
            raise MasterkeyError(
                f"keys '{keyset.name}' are {keyset.kernel_size}x{keyset.kernel_size} but "
                f"{kernel_size}x{kernel_size} filters are asked for; pass "
                f"{option('resize', True, flag='--resize-keys')} to centre-crop / zero-pad"
            )
        keyset = keyset.resized(kernel_size)
    return keyset


def resolve_key_spec(spec: str | KeySet) -> KeySet | str | dict[int, str]:
    """What a ``--keys`` value names: a built-in spec or key file (returned as it is), or a discover run:
    ``DIR`` → its ``keys.safetensors`` (or ``{k: kK/keys.safetensors}``), ``DIR:METHOD`` → its
    ``baseline_keys/METHOD.safetensors`` (per kernel size likewise)."""
    if isinstance(spec, KeySet):
        return spec
    text = str(spec)
    if not text.strip() or (text.split(":")[0] in _BUILTINS and "/" not in text and os.sep not in text):
        return text  # a built-in wins over a folder of the same name (write ./NAME for the folder)
    path, method = Path(text), None
    if not path.exists() and ":" in text:
        head, _, tail = text.rpartition(":")
        if Path(head).is_dir():
            path, method = Path(head), tail
    if not path.is_dir():
        return text
    name = "keys.safetensors" if method is None else f"baseline_keys/{method}.safetensors"
    if (path / name).is_file():
        return str(path / name)
    per_size = {}
    for sub in sorted(path.glob("k*")):
        m = re.fullmatch(r"k(\d+)", sub.name)
        if m and (sub / name).is_file():
            per_size[int(m.group(1))] = str(sub / name)
    if per_size:
        return per_size
    what = "a discover run nor a key file" if method is None else f"a discover run with {method} baseline keys"
    methods = sorted({f.stem for f in [*path.glob("baseline_keys/*.safetensors"), *path.glob("k*/baseline_keys/*")]})
    hint = f"; its methods: {', '.join(methods)}" if method is not None and methods else ""
    inside = sorted(f.name for f in path.glob("*.safetensors"))
    if method is None and inside:
        hint = f"; key files in it: {', '.join(inside[:4])}{', ...' if len(inside) > 4 else ''}"
    raise MasterkeyError(f"keys '{text}': the folder {path} is not {what} (no {name}, nor k*/{name}){hint}")


def _per_size_keys(spec: str, paths: dict[int, str], kernel_size: int | None, resize: bool) -> KeyValues:
    """The keys of a discover run with one directory per kernel size (``{k: path}``) for ``kernel_size``."""
    if kernel_size is None:
        return load_key_values(paths[max(paths)])
    size = nearest_kernel_size(paths, kernel_size, resize, f"keys '{spec}'", "the run has")
    return load_key_values(paths[size], kernel_size=kernel_size, resize=size != kernel_size)


def nearest_kernel_size(sizes: Iterable[int], kernel_size: int, resize: bool, what: str, have_label: str) -> int:
    """Which of the key sets' ``sizes`` serves ``kernel_size`` filters: the same size, else (with ``resize``) the
    nearest size of the same parity (the smaller one on a tie), to be centre-cropped or zero-padded. Raises
    :class:`MasterkeyError` starting with ``what`` when none does."""
    sizes = sorted(set(sizes))
    if kernel_size in sizes:
        return kernel_size
    same_parity = sorted((abs(k - kernel_size), k) for k in sizes if (k - kernel_size) % 2 == 0)
    if not resize or not same_parity:
        have = ", ".join(f"{k}x{k}" for k in sizes)
        hint = (
            f"; pass {option('resize', True, flag='--resize-keys')} to centre-crop / zero-pad keys of another size"
            if same_parity
            else ""
        )
        raise MasterkeyError(f"{what}: no {kernel_size}x{kernel_size} keys ({have_label} {have}){hint}")
    return same_parity[0][1]


def key_spec_label(spec: str) -> str:
    """A short label for a key spec, fit for file and arm names: a built-in as written (``:`` → ``-``), a key
    file's stem, a discover run's folder name (``NAME-METHOD`` for ``DIR:METHOD``)."""
    path = Path(spec)
    if path.is_file():
        return path.stem
    if path.is_dir():
        return path.resolve().name
    head, _, method = spec.rpartition(":")
    if head and Path(head).is_dir():
        return f"{Path(head).resolve().name}-{method}"
    return spec.replace(":", "-")
