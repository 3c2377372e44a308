"""The models and data sets the web tool can inspect: stored runs' models, uploads, and cached data sets.

A model is known by the sha256 of its weights as written in its safetensors header by
:func:`backdoorlab.models.save_model` (and re-checked against the weights by :func:`~backdoorlab.models.load_model`
whenever it is loaded). Ids arriving in requests are only ever looked up in the table built here; no path is
ever made from a request. Two sources fill the table:

- **runs**: every run in ``<home>/store.sqlite`` whose victim (and clean reference) weights exist under
  ``<home>`` (``record.artifacts["victim"] + "/model.safetensors"``, see
  :func:`backdoorlab.experiments.runner.run_experiment`); the ground truth is known (a victim of a run with an
  attack is poisoned, everything else is clean), which lets a user study like Sun et al.'s Table 2 be scored;
- **uploads**: safetensors files posted to the tool, checked by :func:`load_model` (pickles, zips, corrupt
  files, files without a backdoorlab header and hash mismatches are refused) and kept as
  ``<home>/ui/models/<sha256>.safetensors``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError, UnsafeFileError, unknown_name
from backdoorlab.models.io import FORMAT, HEADER_KEY, PICKLE_MESSAGE, ModelCard, load_model

MODEL_ID = r"^[0-9a-f]{64}$"
_MODEL_ID = re.compile(MODEL_ID)
MODEL_NAME = r"^[\w .,:()+#@-]{1,80}$"
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a safetensors JSON header larger than this is not one of ours
# the data set a model most likely belongs to, by input shape (a guess the user can change)
DEFAULT_DATA = {(1, 28, 28): "mnist5k", (3, 32, 32): "shapes"}
HIDDEN_DATASETS = ("folder",)  # needs a folder path, which the tool never takes from a request


class NotFound(BackdoorLabError):
    """An id that is well formed but names nothing the tool knows."""


@dataclass(frozen=True)
class ModelEntry:
    """A model the tool can load: where it comes from, what it says about itself, and its ground truth."""

    id: str
    name: str
    source: str  # "run" or "upload"
    path: Path = field(repr=False)
    arch: str
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    truth: str | None = None  # "poisoned", "clean" or None (unknown)
    data: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    runs: tuple[str, ...] = ()
    role: str = "upload"  # victim, clean or upload
    created: float = 0.0

    def public(self, blind: bool = False, number: int | None = None) -> dict[str, Any]:
        """The JSON the page sees; ``blind`` hides names, runs and the ground truth (a user study)."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "arch": self.arch,
            "classes": list(self.classes),
            "input_shape": list(self.input_shape),
            "data": self.data,
            "truth": self.truth,
            "runs": list(self.runs),
            "role": self.role,
        }
        if blind:
            out.update(
                name=f"model {number if number is not None else self.id[:8]}", truth=None, runs=[], role=""
            )
            out["source"] = "hidden"
        return out


def read_header(path: Path) -> dict[str, Any]:
    """The backdoorlab header of a safetensors file, read without loading the weights (for listing only:
    :func:`load_model` re-checks everything, the hash included, before a model is used)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UnsafeFileError(f"{path.name}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise UnsafeFileError(f"{path.name}: safetensors header of {n} bytes is implausibly large")
        try:
            meta = json.loads(fh.read(n)).get("__metadata__") or {}
            header = json.loads(meta[HEADER_KEY])
        except (ValueError, KeyError, AttributeError, TypeError, UnicodeDecodeError):
            raise UnsafeFileError(f"{path.name}: no backdoorlab header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UnsafeFileError(f"{path.name}: not a backdoorlab model file")
    return header


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


class ModelRegistry:
    """The table of known models (rebuilt from disk on each listing) and a small cache of loaded ones."""

    def __init__(self, home: Path, *, cache_size: int = 6) -> None:
        self.home = Path(home)
        self.upload_dir = self.home / "ui" / "models"
        self._headers: dict[tuple[str, int, int], dict[str, Any]] = {}
        self._entries: dict[str, ModelEntry] = {}
        self._loaded: OrderedDict[str, tuple[nn.Module, ModelCard]] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.RLock()
        self.cache_size = cache_size

    # -- listing ---------------------------------------------------------------------------------------------
    def _header(self, path: Path) -> dict[str, Any] | None:
        try:
            st = path.stat()
            key = (str(path), st.st_mtime_ns, st.st_size)
            if key not in self._headers:
                self._headers[key] = read_header(path)
            return self._headers[key]
        except (OSError, BackdoorLabError):
            return None

    def scan(self) -> dict[str, ModelEntry]:
        """Rebuild the table from the run store and the upload folder; returns it (id → entry)."""
        entries: dict[str, ModelEntry] = {}
        for entry in self._run_entries():
            old = entries.get(entry.id)
            if old is None:
                entries[entry.id] = entry
            else:  # the same weights in several runs (a cache hit): one model, every run listed
                entries[entry.id] = ModelEntry(**{**old.__dict__, "runs": (*old.runs, *entry.runs)})
        for entry in self._upload_entries():
            entries.setdefault(entry.id, entry)
        with self._lock:
            self._entries = entries
        return entries

    def _run_entries(self) -> list[ModelEntry]:
        store_path = self.home / "store.sqlite"
        if not store_path.is_file():
            return []
        from backdoorlab.experiments.store import RunStore

        out = []
        try:
            records = RunStore(store_path).list()
        except Exception:  # a store from another version: list no runs rather than fail the page
            return []
        for rec in reversed(records):  # oldest first: the first run of a model names it
            data = rec.config.get("data") if isinstance(rec.config, dict) else None
            data = data if isinstance(data, dict) else {}
            options = data.get("options") if isinstance(data.get("options"), dict) else {}
            poisoned_run = bool(rec.config.get("attack")) if isinstance(rec.config, dict) else False
            for role in ("victim", "clean"):
                folder = rec.artifacts.get(role) if isinstance(rec.artifacts, dict) else None
                if not isinstance(folder, str):
                    continue
                path = Path(folder) / "model.safetensors"
                if not _inside(path, self.home):
                    continue
                header = self._header(path)
                if header is None:
                    continue
                truth = "poisoned" if role == "victim" and poisoned_run else "clean"
                out.append(
                    self._entry(
                        header,
                        path,
                        name=f"{rec.name} · {role} · run {rec.id}",
                        source="run",
                        truth=truth,
                        data=data.get("name") if isinstance(data.get("name"), str) else None,
                        data_options=dict(options),
                        runs=(rec.id,),
                        role=role,
                        created=rec.created,
                    )
                )
        return [e for e in out if e is not None]

    def _upload_entries(self) -> list[ModelEntry]:
        if not self.upload_dir.is_dir():
            return []
        out = []
        for path in sorted(self.upload_dir.glob("*.safetensors")):
            sha = path.stem
            if not _MODEL_ID.match(sha):
                continue
            header = self._header(path)
            if header is None or header.get("sha256") != sha:
                continue
            meta = self._upload_meta(sha)
            extra = header.get("extra") if isinstance(header.get("extra"), dict) else {}
            truth = extra.get("poisoned")
            data = extra.get("data")
            entry = self._entry(
                header,
                path,
                name=str(meta.get("name") or f"upload {sha[:8]}"),
                source="upload",
                truth=None if not isinstance(truth, bool) else ("poisoned" if truth else "clean"),
                data=data if isinstance(data, str) else None,
                data_options={},
                runs=(),
                role="upload",
                created=float(meta.get("uploaded", 0.0)),
            )
            if entry is not None:
                out.append(entry)
        return out

    def _upload_meta(self, sha: str) -> dict[str, Any]:
        try:
            meta = json.loads((self.upload_dir / f"{sha}.json").read_text())
            return meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _entry(header: dict[str, Any], path: Path, **kw: Any) -> ModelEntry | None:
        try:
            shape = tuple(int(d) for d in header["input_shape"])
            sha = str(header["sha256"])
            classes = tuple(str(c) for c in header["classes"])
            arch = str(header["spec"].get("name", "?"))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if not _MODEL_ID.match(sha) or len(shape) != 3:
            return None
        data = kw.pop("data", None) or DEFAULT_DATA.get(shape)
        return ModelEntry(id=sha, path=path, arch=arch, classes=classes, input_shape=shape, data=data, **kw)

    def list(self) -> list[ModelEntry]:
        entries = self.scan()
        return sorted(entries.values(), key=lambda e: (-e.created, e.name))

    def get(self, model_id: str) -> ModelEntry:
        """The entry of ``model_id`` (a 64-hex sha256); a named error when malformed or unknown."""
        if not isinstance(model_id, str) or not _MODEL_ID.match(model_id):
            raise BackdoorLabError(
                "model_id: not a model id (64 lowercase hex characters); pick a model from the list"
            )
        with self._lock:
            entry = self._entries.get(model_id)
        if entry is None:
            entry = self.scan().get(model_id)
        if entry is None:
            raise NotFound(
                f"model_id: no model {model_id[:12]}… in this workspace; upload it or pick one from the list"
            )
        return entry

    # -- loading ---------------------------------------------------------------------------------------------
    def lock(self, model_id: str) -> threading.Lock:
        """The lock that serialises computations on the shared, cached instance of one model."""
        with self._lock:
            return self._locks.setdefault(model_id, threading.Lock())

    def load(self, model_id: str) -> tuple[nn.Module, ModelCard]:
        """The model (eval mode, CPU) and its card; cached. Use it under :meth:`lock`, or :meth:`copy` it."""
        entry = self.get(model_id)
        with self._lock:
            hit = self._loaded.get(model_id)
            if hit is not None:
                self._loaded.move_to_end(model_id)
                return hit
        model, card = load_model(entry.path)  # verifies the weights' sha256 against the header
        if card.sha256 != model_id:
            raise UnsafeFileError(f"model_id: the weights of {entry.name} changed on disk; reload the page")
        with self._lock:
            self._loaded[model_id] = (model, card)
            while len(self._loaded) > self.cache_size:
                self._loaded.popitem(last=False)
        return model, card

    def copy(self, model_id: str) -> tuple[nn.Module, ModelCard]:
        """A private copy of the model for a background job (its own memory format, its own mode)."""
        model, card = self.load(model_id)
        with self.lock(model_id):
            return copy.deepcopy(model), card

    # -- uploads ---------------------------------------------------------------------------------------------
    def add_upload(self, data: bytes, name: str | None = None) -> ModelEntry:
        """Check an uploaded file (safetensors with a backdoorlab header only) and keep it; returns its entry.

        Pickle and zip checkpoints are refused from their first bytes before anything is written; everything
        else is written to a temporary file and loaded with :func:`load_model` (no unpickling, sha256 checked).
        """
        if not data:
            raise BackdoorLabError("file: the upload is empty; choose a .safetensors model file")
        if data[:2] == b"PK" or data[:1] == b"\x80":
            raise UnsafeFileError(f"file: refused: {PICKLE_MESSAGE}")
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=self.upload_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            try:
                model, card = load_model(tmp)
            except BackdoorLabError as exc:
                msg = str(exc).replace(f"refused {tmp}: ", "").replace(str(tmp), "the upload")
                raise UnsafeFileError(
                    f"file: refused: {msg} (only backdoorlab safetensors model files are accepted)"
                ) from None
            final = self.upload_dir / f"{card.sha256}.safetensors"
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        meta = {"name": name or f"upload {card.sha256[:8]}", "uploaded": time.time()}
        (self.upload_dir / f"{card.sha256}.json").write_text(json.dumps(meta))
        with self._lock:
            self._loaded[card.sha256] = (model, card)
        entry = self.scan().get(card.sha256)
        if entry is None:  # pragma: no cover - the file was just written
            raise BackdoorLabError("file: the upload could not be stored; check the workspace folder")
        return entry


class DataCache:
    """Data sets loaded once per process (a few at most), by name and loader options."""

    def __init__(self, size: int = 3) -> None:
        self._cache: OrderedDict[str, tuple[ImageTensors, ImageTensors]] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    @staticmethod
    def names() -> list[dict[str, Any]]:
        from backdoorlab.data.registry import list_datasets

        return [
            {
                "name": d.name,
                "shape": list(d.shape),
                "classes": d.num_classes,
                "description": d.description,
                "source": d.source,
            }
            for d in list_datasets()
            if d.name not in HIDDEN_DATASETS
        ]

    def get(self, name: str, options: dict[str, Any] | None = None) -> tuple[ImageTensors, ImageTensors]:
        """``(train, test)`` of a registered data set; ``options`` only ever come from a stored run's config."""
        valid = [d["name"] for d in self.names()]
        if name not in valid:
            raise unknown_name("dataset", str(name), valid)
        key = json.dumps([name, options or {}], sort_keys=True, default=str)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        from backdoorlab.data.registry import load_dataset

        try:
            pair = load_dataset(name, **(options or {}))
        except BackdoorLabError as exc:
            raise BackdoorLabError(f"dataset: {exc}") from None
        with self._lock:
            self._cache[key] = pair
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return pair


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


__all__ = [
    "DEFAULT_DATA",
    "MODEL_ID",
    "MODEL_NAME",
    "DataCache",
    "ModelEntry",
    "ModelRegistry",
    "NotFound",
    "read_header",
]
