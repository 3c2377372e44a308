"""Named attacks: ``make_attack(name, **params)`` and ``list_attacks()``."""

from __future__ import annotations

import inspect
from typing import Any

from backdoorlab.attacks.badnets import BadNets
from backdoorlab.attacks.blended import Blended
from backdoorlab.errors import BackdoorLabError, unknown_name

_ATTACKS: dict[str, type] = {"badnets": BadNets, "blended": Blended}


def list_attacks() -> list[str]:
    """The attack names :func:`make_attack` knows."""
    return sorted(_ATTACKS)


def make_attack(name: str, **params: Any) -> Any:
    """An attack by name, e.g. ``make_attack("badnets", trigger={"kind": "square", "size": 4}, rate=0.05)``.

    ``trigger`` may be a trigger config mapping (see :func:`backdoorlab.triggers.from_config`).
    """
    if name not in _ATTACKS:
        raise unknown_name("attack", name, _ATTACKS)
    cls = _ATTACKS[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in params:
        if key not in valid:
            raise BackdoorLabError(f"attack {name!r} has no parameter {key!r}; valid: {', '.join(valid)}")
    if isinstance(params.get("sources"), list):
        params["sources"] = tuple(params["sources"])
    return cls(**params)
