"""Named attacks: ``make_attack(name, **params)`` and ``list_attacks()``."""

from __future__ import annotations

import inspect
from typing import Any

from backdoorlab.attacks.advtrojan import AdvTrojan
from backdoorlab.attacks.badnets import BadNets
from backdoorlab.attacks.blended import Blended
from backdoorlab.attacks.clean_label import CleanLabel
from backdoorlab.errors import BackdoorLabError, unknown_name

_ATTACKS: dict[str, type] = {"badnets": BadNets, "blended": Blended, "clean-label": CleanLabel}
# attacks that change how the victim is trained (an ``objective``) instead of poisoning its data
_TRAINING_ATTACKS: dict[str, type] = {"advtrojan": AdvTrojan}
# Li et al. §4.2 enhanced variants: "<base>+" wraps the base attack in random flip + random ShrinkPad
_ENHANCED_PARAMS = ("max_shrink", "flip", "transform_benign")
# attacks built in Python only: what they need cannot come from an experiment config (yet)
PYTHON_ONLY: dict[str, str] = {
    "hidden-trigger": (
        "backdoorlab.attacks.HiddenTrigger(model, layer, trigger, source, target, count): Saha et al.'s poisons are "
        "made against the attacker's pretrained feature extractor and hit a victim that fine-tunes that network "
        "(backdoorlab.transfer.finetune), neither of which an experiment config describes; "
        "`backdoorlab reproduce saha2020` runs the whole protocol"
    ),
}


def list_attacks() -> list[str]:
    """The attack names :func:`make_attack` knows (each data-poisoning base also as an enhanced ``name+``)."""
    return sorted([*_ATTACKS, *(f"{n}+" for n in _ATTACKS), *_TRAINING_ATTACKS])


def controls_training(name: str) -> bool:
    """Whether attack ``name`` changes the training objective (AdvTrojan) rather than the data."""
    return name in _TRAINING_ATTACKS


def attack_parameters(name: str) -> list[str]:
    """The keyword parameters attack ``name`` accepts (the enhanced variants: their base's)."""
    cls = {**_ATTACKS, **_TRAINING_ATTACKS}.get(name.removesuffix("+"))
    if cls is None:
        raise _unknown(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _unknown(name: str) -> BackdoorLabError:
    if name in PYTHON_ONLY:
        return BackdoorLabError(f"attack {name!r} is built in Python, not by name: {PYTHON_ONLY[name]}")
    return unknown_name("attack", name, list_attacks())


def make_attack(name: str, **params: Any) -> Any:
    """An attack by name, e.g. ``make_attack("badnets", trigger={"kind": "square", "size": 4}, rate=0.05)``.

    ``trigger`` may be a trigger config mapping (see :func:`backdoorlab.triggers.from_config`).
    """
    if name.endswith("+") and name[:-1] in _ATTACKS:
        from backdoorlab.attacks.enhanced import Enhanced

        enhance = {k: params.pop(k) for k in _ENHANCED_PARAMS if k in params}
        return Enhanced(make_attack(name[:-1], **params), **enhance)
    if name not in _ATTACKS and name not in _TRAINING_ATTACKS:
        raise _unknown(name)
    cls = _ATTACKS.get(name) or _TRAINING_ATTACKS[name]
    valid = attack_parameters(name)
    for key in params:
        if key not in valid:
            raise BackdoorLabError(f"attack {name!r} has no parameter {key!r}; valid: {', '.join(valid)}")
    if isinstance(params.get("sources"), list):
        params["sources"] = tuple(params["sources"])
    return cls(**params)
