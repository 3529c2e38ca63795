"""Defense plugins (imported as ``robustkit.defenses``).

A defense turns a model (or several) into a defended classifier -- an ``nn.Module`` from [0, 1] images to
logits -- and declares what an honest evaluation of it needs (EOT, BPDA, certification). Importing this
package registers the built-in defenses; third-party defenses register through the ``robustkit.defenses``
entry-point group, e.g. in their ``pyproject.toml``::

    [project.entry-points."robustkit.defenses"]
    my-defense = "my_package.defenses:MyDefense"

See docs/defenses.md and docs/write-your-own-defense.md.
"""
from .adaptive_smoothing import AdaptiveSmoothing, MixingNetwork
from .base import (DEFENSES, Defense, build_defense, check_defense_spec, check_params, get_defense_class,
                   list_defenses, register_defense, sample_hashes)
from .certification import (ABSTAIN, DEFAULT_RADII, CertifyResult, certified_accuracy, certified_counts,
                            certified_rows, clopper_pearson_lower)
from .distillation import DefensiveDistillation
from .ensemble import AGGREGATIONS, Ensemble, crossmax
from .mixednuts import MixedNUTS, nuts_transform
from .smoothing import RandomizedSmoothing, sample_counts
from .transforms import (JPEG, BitDepth, BitDepthDefense, GaussianNoise, GaussianNoiseDefense, InputTransform,
                         JPEGDefense, MedianFilter, MedianFilterDefense, TransformDefense)

__all__ = [
    "ABSTAIN", "AdaptiveSmoothing", "MixingNetwork", "AGGREGATIONS", "DEFAULT_RADII", "DEFENSES", "JPEG", "BitDepth", "BitDepthDefense", "CertifyResult",
    "Defense", "DefensiveDistillation", "Ensemble", "GaussianNoise", "GaussianNoiseDefense", "InputTransform",
    "JPEGDefense", "MedianFilter", "MedianFilterDefense", "MixedNUTS", "RandomizedSmoothing", "TransformDefense",
    "build_defense", "certified_accuracy", "certified_counts", "certified_rows", "check_defense_spec",
    "check_params", "clopper_pearson_lower", "crossmax", "nuts_transform", "get_defense_class", "list_defenses",
    "register_defense", "sample_counts", "sample_hashes",
]
