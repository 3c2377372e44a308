"""Poisoning attacks: the Attack protocol, BadNets, Blended and the attack registry."""

from backdoorlab.attacks.badnets import BadNets
from backdoorlab.attacks.base import Attack, PoisonedSet
from backdoorlab.attacks.blended import Blended
from backdoorlab.attacks.clean_label import CleanLabel
from backdoorlab.attacks.registry import list_attacks, make_attack

__all__ = ["Attack", "BadNets", "Blended", "CleanLabel", "PoisonedSet", "list_attacks", "make_attack"]
