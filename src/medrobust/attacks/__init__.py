"""Adversarial attacks, one algorithm a file, registered by name."""

from __future__ import annotations

from medrobust.attacks.asma import ASMA
from medrobust.attacks.base import Attack
from medrobust.attacks.cw import CarliniWagnerL2
from medrobust.attacks.dag import DAG
from medrobust.attacks.deepfool import DeepFool
from medrobust.attacks.fgsm import FGSM
from medrobust.attacks.jsma import JSMA
from medrobust.attacks.pgd import PGD
from medrobust.attacks.segpgd import SegPGD
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

__all__ = ["ASMA", "ATTACKS", "DAG", "Attack", "CarliniWagnerL2", "DeepFool", "FGSM", "JSMA", "PGD", "SegPGD"]
