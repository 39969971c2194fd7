"""Adversarial attacks, one algorithm a file, registered by name."""

from __future__ import annotations

from medrobust.attacks.base import Attack
from medrobust.attacks.fgsm import FGSM
from medrobust.attacks.pgd import PGD
from medrobust.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")
ATTACKS.register("fgsm")(FGSM)
ATTACKS.register("pgd")(PGD)

__all__ = ["Attack", "ATTACKS", "FGSM", "PGD"]
