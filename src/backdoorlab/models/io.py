"""Safe model files: safetensors weights plus a JSON header, and nothing that can run code.

A model file is a plain ``.safetensors`` file whose metadata holds one key, ``backdoorlab``, with a JSON
header: the architecture spec (see :func:`~backdoorlab.models.registry.create_model`), class names, input
shape, normalisation, the sha256 of the weights (:func:`model_hash`), the backdoorlab version and any extra
JSON the caller adds. Loading never unpickles: a pickle or ``torch.save`` zip checkpoint is refused with
:class:`UnsafeFileError` (detected from its first bytes, never parsed), and so are corrupt or truncated
files, missing headers, hash mismatches and unknown architectures.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from backdoorlab.errors import BackdoorLabError, UnsafeFileError
from backdoorlab.fileio import write_atomic
from backdoorlab.models.registry import check_input_shape, input_shape, model_from_spec

HEADER_KEY = "backdoorlab"
FORMAT = "backdoorlab-model"
FORMAT_VERSION = 1
PICKLE_MESSAGE = (
    "this looks like a pickle-based PyTorch checkpoint; backdoorlab only loads safetensors files "
    "(convert it with safetensors.torch.save_file in a trusted environment)"
)


@dataclass(frozen=True)
class ModelCard:
    """What a model file says about its model (everything but the weights)."""

    spec: dict
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    sha256: str
    extra: dict = field(default_factory=dict)
    version: str = ""

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("backdoorlab")
    except Exception:  # not installed as a distribution
        return "unknown"


def state_dict_hash(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes, in sorted key order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_hash(model: nn.Module) -> str:
    """sha256 of a model's state dict (parameters and buffers), independent of device."""
    return state_dict_hash(model.state_dict())


# -- saving ----------------------------------------------------------------------------------------------
def save_model(
    model: nn.Module, path: str | os.PathLike, *, classes: Sequence[str], extra: dict | None = None
) -> Path:
    """Save ``model`` (built by ``create_model``) as safetensors with a JSON header; returns the path.

    ``classes`` names the outputs (one per class); ``extra`` is any JSON-able dict (training recipe,
    attack, metrics …) kept in the header and returned in :attr:`ModelCard.extra`.
    """
    path = Path(path)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict):
        raise BackdoorLabError(
            f"cannot save {type(model).__name__}: it has no spec; "
            "build it with backdoorlab.models.create_model"
        )
    classes = [str(c) for c in classes]
    if len(classes) != spec["num_classes"]:
        raise BackdoorLabError(
            f"classes has {len(classes)} names but the model has {spec['num_classes']} outputs"
        )
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "classes": classes,
        "input_shape": list(input_shape(model)),
        "normalization": {"mean": spec["mean"], "std": spec["std"]},
        "sha256": state_dict_hash(state),
        "backdoorlab_version": _version(),
        "extra": dict(extra or {}),
    }
    try:
        text = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BackdoorLabError(f"extra must be a JSON-able dict (str keys, plain values): {exc}") from exc
    write_atomic(path, st_save(state, metadata={HEADER_KEY: text}))
    return path


# -- loading ---------------------------------------------------------------------------------------------
def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; refuses pickles, zips, corrupt and truncated files."""
    path = Path(path)
    if not path.exists():
        raise BackdoorLabError(f"model file not found: {path}")
    if not path.is_file():
        raise BackdoorLabError(f"model path is not a file: {path}")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        (n,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    except (SafetensorError, ValueError, struct.error, AttributeError, UnicodeDecodeError) as exc:
        if data[:2] == b"PK" or data[:1] == b"\x80":
            raise UnsafeFileError(f"refused {path}: {PICKLE_MESSAGE}") from None
        raise UnsafeFileError(
            f"refused {path}: not a valid safetensors file (corrupt or truncated: {exc})"
        ) from None
    return tensors, meta


def load_state_dict_file(path: str | os.PathLike, *, map_location: str | torch.device = "cpu"):
    """The raw state dict of a safetensors file (no header needed), e.g. weights from a third party.

    Returns ``dict[str, Tensor]`` on ``map_location``. Pickle-based checkpoints are refused, never parsed.
    """
    tensors, _ = read_safetensors(path)
    return {k: v.to(map_location) for k, v in tensors.items()}


def _header(path: Path, meta: Mapping[str, str]) -> dict:
    if HEADER_KEY not in meta:
        raise UnsafeFileError(
            f"refused {path}: safetensors file without a backdoorlab header (no architecture or classes); "
            "load raw weights with load_state_dict_file and build the model yourself"
        )
    try:
        header = json.loads(meta[HEADER_KEY])
    except ValueError as exc:
        raise UnsafeFileError(f"refused {path}: backdoorlab header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UnsafeFileError(f"refused {path}: malformed backdoorlab header (not a {FORMAT} header)")
    missing = [k for k in ("spec", "classes", "input_shape", "sha256") if k not in header]
    if missing:
        raise UnsafeFileError(f"refused {path}: malformed backdoorlab header (missing {', '.join(missing)})")
    return header


def load_model(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Load a file written by :func:`save_model`: the model (in eval mode, on ``map_location``) and its card.

    Raises :class:`UnsafeFileError` for pickles/zip checkpoints, corrupt or truncated files, a missing
    header, weights whose sha256 differs from the header, or an architecture this version does not know.
    """
    path = Path(path)
    tensors, meta = read_safetensors(path)
    header = _header(path, meta)
    digest = state_dict_hash(tensors)
    if digest != header["sha256"]:
        raise UnsafeFileError(
            f"refused {path}: weights sha256 {digest[:12]}… does not match the header's "
            f"{str(header['sha256'])[:12]}… (the file was modified or corrupted)"
        )
    spec = header["spec"]
    try:
        model = model_from_spec(spec)
    except BackdoorLabError as exc:
        raise UnsafeFileError(f"refused {path}: unknown or invalid architecture: {exc}") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UnsafeFileError(
            f"refused {path}: weights do not fit architecture {spec.get('name')!r}: {first}"
        ) from None
    model.to(map_location).eval()
    try:
        shape = tuple(int(d) for d in header["input_shape"])
        card = ModelCard(
            spec=spec,
            classes=tuple(str(c) for c in header["classes"]),
            input_shape=shape,  # type: ignore[arg-type]
            sha256=digest,
            extra=dict(header.get("extra") or {}),
            version=str(header.get("backdoorlab_version", "")),
        )
    except (TypeError, ValueError) as exc:
        raise UnsafeFileError(f"refused {path}: malformed backdoorlab header ({exc})") from None
    if len(card.classes) != spec["num_classes"] or shape != input_shape(model):
        raise UnsafeFileError(
            f"refused {path}: header lists {len(card.classes)} classes and input shape {shape} for a "
            f"model with {spec['num_classes']} outputs and input shape {input_shape(model)}"
        )
    return model, card


def load_pretrained(
    path: str | os.PathLike,
    field: str,
    data_shape: Sequence[int],
    *,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelCard]:
    """A user-given pretrained model (config ``field``) that must exist and fit ``data_shape`` images.

    Errors name ``field`` and what to give; the file is read as :func:`load_model` reads it (never unpickled).
    """
    path = Path(path)
    if not path.is_file():
        raise BackdoorLabError(
            f"{field}: {path} not found; give a backdoorlab safetensors model file (backdoorlab.models.save_model)"
        )
    model, card = load_model(path, map_location=map_location)
    check_input_shape(model, data_shape)
    return model.eval(), card
