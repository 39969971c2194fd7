"""Adversarial attacks, one algorithm a file, registered by name."""

from __future__ import annotations

from medrobust.attacks.apgd import APGD
from medrobust.attacks.asma import ASMA
from medrobust.attacks.autoattack import AutoAttack
from medrobust.attacks.base import Attack
from medrobust.attacks.cw import CarliniWagnerL2
from medrobust.attacks.dag import DAG
from medrobust.attacks.deepfool import DeepFool
from medrobust.attacks.fab import FAB
from medrobust.attacks.fgsm import FGSM
from medrobust.attacks.fmn import FMN
from medrobust.attacks.jsma import JSMA
from medrobust.attacks.pgd import PGD
from medrobust.attacks.segpgd import SegPGD
from medrobust.attacks.square import Square
from medrobust.attacks.transfer import Transfer
from medrobust.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")
ATTACKS.register("fgsm")(FGSM)
ATTACKS.register("pgd")(PGD)
ATTACKS.register("deepfool")(DeepFool)
ATTACKS.register("jsma")(JSMA)
ATTACKS.register("cw")(CarliniWagnerL2)
ATTACKS.register("dag")(DAG)
ATTACKS.register("segpgd")(SegPGD)
ATTACKS.register("asma")(ASMA)
ATTACKS.register("apgd")(APGD)
ATTACKS.register("square")(Square)
ATTACKS.register("fab")(FAB)
ATTACKS.register("autoattack")(AutoAttack)
ATTACKS.register("transfer")(Transfer)
ATTACKS.register("fmn")(FMN)


def capabilities(name: str) -> type[Attack] | None:
    """The class of the attack registered as ``name``, whose class attributes say what it is (``gradient_free``,
    ``strong``, ``minimal``, ``needs_sources``); None for a name not registered (a stored run of an older
    medrobust)."""
    return ATTACKS.get(name) if name in ATTACKS.names() else None


def strong_attacks() -> list[str]:
    """The registered attacks that can back a worst case (``strong``), by name."""
    return sorted(n for n in ATTACKS.names() if ATTACKS.get(n).strong)


__all__ = [
    "APGD",
    "ASMA",
    "AutoAttack",
    "ATTACKS",
    "DAG",
    "Attack",
    "CarliniWagnerL2",
    "DeepFool",
    "FAB",
    "FGSM",
    "FMN",
    "JSMA",
    "PGD",
    "SegPGD",
    "Square",
    "Transfer",
    "capabilities",
    "strong_attacks",
]
