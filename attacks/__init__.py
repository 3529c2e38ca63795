"""Attack plugins (imported as ``robustkit.attacks``).

Importing this package registers the built-in attacks. Third-party attacks register through the
``robustkit.attacks`` entry-point group, e.g. in their ``pyproject.toml``::

    [project.entry-points."robustkit.attacks"]
    my-attack = "my_package.attacks:MyAttack"
"""
from .base import ATTACKS, Attack, AttackResult, eval_mode, register_attack
from .build import build_attack, get_attack_class
from . import fgsm, pgd  # noqa: F401  (registers the built-in attacks)
from . import cw, fmn  # noqa: F401
from . import autoattack, autoattack_fast  # noqa: F401
from . import patch, topk, uap  # noqa: F401  (beyond Lp balls: docs/attacks.md)
from . import torchattacks_wrapper, transfer  # noqa: F401  (torchattacks:<Class> names; registers transfer)

__all__ = ["ATTACKS", "Attack", "AttackResult", "build_attack", "eval_mode", "get_attack_class", "register_attack"]
