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
]
