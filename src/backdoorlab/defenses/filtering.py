"""Turner et al.'s label-probability data sanitisation (Turner, Tsipras & Madry 2019, §3 and Fig. 2 left).

The defender trains a classifier on a small set of clean inputs they trust — "1024 examples, which represents
images that have been thoroughly inspected or obtained from a trusted source" — and evaluates it on the whole
(possibly poisoned) training set, recording the probability it gives to each image's **own** label. A
dirty-label BadNets poison carries a label that does not match its content, so it gets a near-zero
probability; a human reviewer who inspects the training images in ascending order of that probability meets
the poisons early (Turner: over 20 of 100 poisons among the first 300 images inspected, Fig. 2 left).
Clean-label poisons (:class:`~backdoorlab.attacks.clean_label.CleanLabel`) are labelled plausibly and are
meant to pass this filter's human review.

Usage::

    flt = LabelProbabilityFilter(trusted=1024).fit(train, trusted_idx=clean_idx)
    order = flt.ranking(train)                 # most suspicious first
    poisons_found(order, poisoned.poison_idx, [100, 300, 1000])

The defender does not know which images are poisoned. By default ``fit`` takes a seeded random ``trusted``
images of the data it is given, which is only right if the caller asserts they are clean; a benchmark should
therefore pass ``trusted_idx`` chosen among the unpoisoned images (or fit on a separate clean split).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics import predict_logits
from backdoorlab.models import check_input_shape, create_model
from backdoorlab.training import TrainRecipe, fit

Progress = Callable[[int, int, dict], None]

# 1,024 images train in seconds: more passes than the library's default recipe, Adam for robustness to lr
DEFAULT_RECIPE = TrainRecipe(epochs=30, batch_size=64, optimizer="adam", lr=1e-3)


class LabelProbabilityFilter:
    """Rank training images by the probability a model trained on trusted clean data gives their own label.

    ``trusted`` is how many images :meth:`fit` draws (seeded by ``seed``) when no ``trusted_idx`` is given
    (Turner §3: 1,024). ``model_name`` is any :func:`~backdoorlab.models.create_model` architecture (LeNet by
    default); ``recipe`` its training recipe (:data:`DEFAULT_RECIPE` when ``None``). ``seed`` also fixes the
    model's initialisation and the batch order, so the same inputs give the same scores on CPU.

    After :meth:`fit`: ``model`` (the trained filter model, eval mode), ``trusted_idx`` (the indices it was
    trained on), ``history`` (per-epoch training rows); ``seconds`` is the wall time spent fitting and scoring
    so far (the defence's cost).
    """

    def __init__(
        self,
        trusted: int = 1024,
        recipe: TrainRecipe | None = None,
        model_name: str = "lenet",
        seed: int = 0,
        *,
        device: str | torch.device | None = "auto",
        batch_size: int = 512,
    ) -> None:
        if isinstance(trusted, bool) or not isinstance(trusted, int) or trusted < 1:
            raise BackdoorLabError(f"trusted must be a count of clean images ≥ 1, got {trusted!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BackdoorLabError(f"filter batch_size must be an integer ≥ 1, got {batch_size!r}")
        self.trusted = trusted
        self.recipe = DEFAULT_RECIPE if recipe is None else recipe
        self.model_name = model_name
        self.seed = int(seed)
        self.device = device
        self.batch_size = batch_size
        self.model: nn.Module | None = None
        self.trusted_idx: torch.Tensor | None = None
        self.history: list[dict] = []
        self.fit_seconds = 0.0
        self.score_seconds = 0.0

    @property
    def seconds(self) -> float:
        """Wall time spent in :meth:`fit` and :meth:`scores` so far."""
        return self.fit_seconds + self.score_seconds

    # -- training --------------------------------------------------------------------------------------------
    def fit(
        self,
        train: ImageTensors,
        trusted_idx: torch.Tensor | Sequence[int] | None = None,
        progress: Progress | None = None,
    ) -> LabelProbabilityFilter:
        """Train the filter model on the trusted clean images of ``train`` (Turner §3) and return ``self``.

        ``trusted_idx`` lists the indices of ``train`` the defender trusts; ``None`` draws ``trusted`` of them
        at random (seeded), which the caller thereby asserts are clean. ``progress(step, total, info)`` is
        passed to :func:`~backdoorlab.training.fit`.
        """
        t0 = time.perf_counter()
        idx = self._trusted_indices(train, trusted_idx)
        clean = train.subset(idx)
        c, h, w = train.shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = create_model(
                self.model_name, in_channels=c, num_classes=train.num_classes, input_size=(h, w)
            )
        self.history = fit(model, clean, self.recipe, seed=self.seed, device=self.device, progress=progress)
        model.eval()
        self.model = model
        self.trusted_idx = idx
        self.fit_seconds += time.perf_counter() - t0
        return self

    def _trusted_indices(
        self, train: ImageTensors, trusted_idx: torch.Tensor | Sequence[int] | None
    ) -> torch.Tensor:
        n = len(train)
        if trusted_idx is None:
            if self.trusted > n:
                raise BackdoorLabError(
                    f"trusted={self.trusted} clean images asked for but the data has only {n}; lower trusted"
                )
            perm = torch.randperm(n, generator=make_generator(self.seed))
            return perm[: self.trusted].sort().values
        idx = torch.as_tensor(trusted_idx, dtype=torch.long).cpu().reshape(-1)
        if len(idx) == 0:
            raise BackdoorLabError("trusted_idx is empty; pass the indices of at least one trusted image")
        if int(idx.min()) < 0 or int(idx.max()) >= n:
            raise BackdoorLabError(
                f"trusted_idx must lie in 0..{n - 1}, found {int(idx.min())}..{int(idx.max())}"
            )
        if len(torch.unique(idx)) != len(idx):
            raise BackdoorLabError("trusted_idx contains repeated indices")
        return idx.sort().values

    # -- scoring ---------------------------------------------------------------------------------------------
    def scores(self, data: ImageTensors) -> torch.Tensor:
        """Per image of ``data``: the probability the filter model gives to the image's own label (CPU float32).

        Low = suspicious (Turner §3: dirty-label poisons get near-zero probability).
        """
        model = self._require_model()
        check_input_shape(model, (len(data), *data.shape))
        t0 = time.perf_counter()
        logits = predict_logits(model, data, batch_size=self.batch_size).float().cpu()
        if len(data) == 0:
            self.score_seconds += time.perf_counter() - t0
            return torch.empty(0)
        if logits.shape[1] != data.num_classes:
            raise BackdoorLabError(
                f"the filter model has {logits.shape[1]} outputs but the data has {data.num_classes} classes"
            )
        probs = torch.softmax(logits, dim=1)
        out = probs.gather(1, data.labels.cpu()[:, None]).squeeze(1)
        self.score_seconds += time.perf_counter() - t0
        return out

    def ranking(self, data: ImageTensors) -> torch.Tensor:
        """Indices of ``data`` in the order a reviewer inspects them: ascending score, ties by index."""
        return torch.argsort(self.scores(data), stable=True)

    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise BackdoorLabError("the label-probability filter is not fitted; call fit(train) first")
        return self.model

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(trusted={self.trusted}, model_name={self.model_name!r}, seed={self.seed}, "
            f"fitted={self.model is not None})"
        )


def poisons_found(
    ranking: torch.Tensor, poison_idx: torch.Tensor | Sequence[int], n_inspected: Sequence[int]
) -> dict[int, int]:
    """How many poisons a reviewer meets among the first ``N`` images inspected, for each ``N`` (Fig. 2 left).

    ``ranking`` is the inspection order (e.g. :meth:`LabelProbabilityFilter.ranking`), ``poison_idx`` the
    indices of the poisoned images. An ``N`` beyond the data size counts the whole ranking.
    """
    order = torch.as_tensor(ranking, dtype=torch.long).cpu().reshape(-1)
    poisons = torch.as_tensor(poison_idx, dtype=torch.long).cpu().reshape(-1)
    hit = torch.isin(order, poisons)
    cum = torch.cumsum(hit.long(), 0)
    out: dict[int, int] = {}
    for n in n_inspected:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise BackdoorLabError(f"n_inspected must hold integers ≥ 0, got {n!r}")
        out[n] = 0 if n == 0 or len(order) == 0 else int(cum[min(n, len(order)) - 1])
    return out


__all__ = ["DEFAULT_RECIPE", "LabelProbabilityFilter", "poisons_found"]
