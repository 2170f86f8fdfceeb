"""The classes a policy file may name, by the names files use; nothing else is ever built.

A loader never imports a class named in a file: it looks the name up here. The algorithms and
their policy classes come from :mod:`tm_algos.registry`; the feature extractors are SB3's and
tm-algos' own; the activations are the registry's. Register your own trusted classes with
:func:`register_extractor` and :func:`register_policy`.

>>> from tm_algos.policy.allow_lists import POLICY_CLASSES
>>> sorted(POLICY_CLASSES["SAC"])
['CnnPolicy', 'MlpPolicy', 'MultiInputPolicy']
"""

from __future__ import annotations

from collections.abc import Mapping

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
)
from torch import nn

import tm_algos.registry as registry
from tm_algos.errors import InvalidTypeError
from tm_algos.extractors import (
    PerceptionExtractor,
    TMCNNExtractor,
    TMLidarExtractor,
    TMViTExtractor,
)
from tm_algos.policy.format import PolicyFileError

__all__ = [
    "ACTIVATIONS",
    "ALGORITHM_CLASSES",
    "FEATURE_EXTRACTORS",
    "POLICY_CLASSES",
    "lookup",
    "name_of",
    "register_extractor",
    "register_policy",
]

ALGORITHM_CLASSES: dict[str, type[BaseAlgorithm]] = {
    spec.class_name: spec.load() for spec in registry.ALGORITHMS.values()
}
"""Algorithms whose policies can be exported, by class name."""

POLICY_CLASSES: dict[str, dict[str, type[BasePolicy]]] = {
    spec.class_name: spec.load_policy_classes() for spec in registry.ALGORITHMS.values()
}
"""Allow list of policy classes: algorithm class name → policy class name → class."""

FEATURE_EXTRACTORS: dict[str, type[BaseFeaturesExtractor]] = {
    "CombinedExtractor": CombinedExtractor,
    "FlattenExtractor": FlattenExtractor,
    "NatureCNN": NatureCNN,
    "TMCNNExtractor": TMCNNExtractor,
    "TMViTExtractor": TMViTExtractor,
    "TMLidarExtractor": TMLidarExtractor,
    "PerceptionExtractor": PerceptionExtractor,
}
"""Allow list of feature extractors, by the name written in ``policy.json``."""

ACTIVATIONS: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in map(registry.activation_class, registry.ACTIVATIONS)
}
"""Allow list of activation functions, by class name."""


def register_extractor(
    name: str, cls: type[BaseFeaturesExtractor], *, replace: bool = False
) -> None:
    """Allow ``cls`` as a feature extractor in policy files, under ``name``.

    Only register classes you trust: loading a file builds the class with the keyword arguments
    the file gives.
    """
    given: object = cls  # checked at run time: callers may pass anything
    if not (isinstance(given, type) and issubclass(given, BaseFeaturesExtractor)):
        raise InvalidTypeError(f"cls={cls!r}: expected a subclass of SB3's BaseFeaturesExtractor")
    known = FEATURE_EXTRACTORS.get(name)
    if known is not None and known is not cls and not replace:
        raise PolicyFileError(
            f"feature extractor name {name!r} is already taken by {known.__qualname__}; "
            "choose another name or pass replace=True"
        )
    FEATURE_EXTRACTORS[name] = cls


def register_policy(algorithm: str, cls: type[BasePolicy], *, replace: bool = False) -> None:
    """Allow the policy class ``cls`` for ``algorithm`` (a key of :data:`POLICY_CLASSES`)."""
    if algorithm not in POLICY_CLASSES:
        raise PolicyFileError(f"algorithm={algorithm!r}: expected one of {sorted(POLICY_CLASSES)}")
    given: object = cls  # checked at run time: callers may pass anything
    if not (isinstance(given, type) and issubclass(given, BasePolicy)):
        raise InvalidTypeError(f"cls={cls!r}: expected a subclass of SB3's BasePolicy")
    known = POLICY_CLASSES[algorithm].get(cls.__name__)
    if known is not None and known is not cls and not replace:
        raise PolicyFileError(
            f"policy class name {cls.__name__!r} is already taken for {algorithm} by "
            f"{known.__module__}.{known.__qualname__}; rename the class or pass replace=True"
        )
    POLICY_CLASSES[algorithm][cls.__name__] = cls


def name_of(cls: type, allowed: Mapping[str, type], what: str, how: str) -> str:
    """The name under which ``cls`` is allowed, for writing a file; ``how`` says what to do
    when it is not allowed."""
    for name, known in allowed.items():
        if known is cls:
            return name
    raise PolicyFileError(
        f"{what} {cls.__module__}.{cls.__qualname__} is not in tm-algos' allow list "
        f"{sorted(allowed)}; {how}"
    )


def lookup(name: object, allowed: Mapping[str, type], what: str) -> type:
    """The class allowed under ``name`` (read from a file), or :class:`PolicyFileError`."""
    if not isinstance(name, str) or name not in allowed:
        raise PolicyFileError(
            f"{what} {name!r} is not allowed: expected one of {sorted(allowed)}. tm-algos never "
            "imports a class named in a file; if you trust this file, register the class first "
            "(tm_algos.policy.register_extractor / register_policy)"
        )
    return allowed[name]
