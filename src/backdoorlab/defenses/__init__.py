"""Defences, by what they return (DESIGN.md, "The four roles").

- input transforms: ``transform(x)`` — :class:`Flip`, :class:`ShrinkPad`, :class:`GaussianNoise`,
  :class:`ColorJitter`, :class:`AutoEncoderDefense`; :class:`DefendedModel` puts one in front of a model;
- model repair: :class:`FinePruning` (``repair``), :func:`unlearn` (Neural Cleanse's patching);
- model detection: :class:`NeuralCleanse` (``inspect -> Verdict``).
"""

from backdoorlab.defenses.autoencoder import AutoEncoderDefense
from backdoorlab.defenses.base import Verdict
from backdoorlab.defenses.fine_pruning import FinePruning, FinePruningResult
from backdoorlab.defenses.neural_cleanse import NeuralCleanse, NeuralCleanseResult, mad_anomaly_index, unlearn
from backdoorlab.defenses.preprocessing import (
    ColorJitter,
    Compose,
    DefendedModel,
    Flip,
    GaussianNoise,
    ShrinkPad,
    make_defense,
)

__all__ = [
    "AutoEncoderDefense",
    "ColorJitter",
    "Compose",
    "DefendedModel",
    "FinePruning",
    "FinePruningResult",
    "Flip",
    "GaussianNoise",
    "NeuralCleanse",
    "NeuralCleanseResult",
    "ShrinkPad",
    "Verdict",
    "mad_anomaly_index",
    "make_defense",
    "unlearn",
]
