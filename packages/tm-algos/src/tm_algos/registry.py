"""The one table of tm-algos' algorithms, activations and feature extractor names.

Everything that names an algorithm reads it here: presets (which names exist, which
hyperparameters and policy arguments each takes, and their rules), the model factory (the class,
the policy it is given, its replay buffer) and policy files (the name written in ``policy.json``,
the policy classes allowed for it, how its deterministic action is computed). Classes are
written as ``"module:attribute"`` strings and imported only when asked for, so importing this
module loads neither PyTorch nor Stable-Baselines3.

>>> from tm_algos.registry import ALGORITHMS, algorithm
>>> list(ALGORITHMS)
['sac', 'tqc', 'redq', 'fast_sac', 'crossq', 'ppo', 'recurrent_ppo']
>>> spec = algorithm("tqc")
>>> spec.class_name, spec.off_policy, spec.squashed
('TQC', True, True)
>>> sorted(algorithm("crossq").hyperparameters)[:3]
['batch_size', 'buffer_size', 'ent_coef']
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from tm_algos.errors import InvalidValueError
from tm_gym.core.config import ConfigError, Rule

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.buffers import ReplayBuffer
    from stable_baselines3.common.policies import BasePolicy
    from torch import nn

__all__ = [
    "ACTIVATIONS",
    "ALGORITHMS",
    "EXTRACTORS",
    "POLICY_KWARGS",
    "AlgorithmSpec",
    "Check",
    "activation_class",
    "algorithm",
    "algorithm_by_class_name",
    "import_object",
]


def import_object(path: str) -> Any:
    """The object at ``"package.module:attribute"``: a path written in this module's tables,
    never one read from a file."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


# -- value rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A preset value's :class:`~tm_gym.core.config.Rule`, and the words its errors use for
    what is expected (``"a float in (0, 1]"``)."""

    rule: Rule
    expected: str

    def accepts(self, value: Any) -> tuple[bool, Any]:
        """``(True, normalised value)`` when the rule accepts ``value``, else ``(False, value)``."""
        try:
            return True, self.rule.check(value, "value")
        except ConfigError:
            return False, value


def _positive_int(words: str = "a positive integer") -> Check:
    return Check(Rule("int", low=1), words)


def _fraction(*, closed: bool = False) -> Check:
    """A float in (0, 1], or in [0, 1] when ``closed``."""
    rule = Rule("float", low=0, high=1, low_open=not closed)
    return Check(rule, "a float in [0, 1]" if closed else "a float in (0, 1]")


_BOOL = Check(Rule("bool"), "true or false")
_POSITIVE_FLOAT = Check(Rule("float", low=0, low_open=True), "a positive float")
_NON_NEGATIVE_FLOAT = Check(Rule("float", low=0), "a float >= 0")
_NON_NEGATIVE_INT = Check(Rule("int", low=0), "an integer >= 0")
_ANY_FLOAT = Check(Rule("float"), "a float")

_COMMON: dict[str, Check] = {
    "learning_rate": _fraction(),
    "batch_size": Check(Rule("int", low=2), "an integer >= 2"),
    "gamma": _fraction(),
    "max_grad_norm": _POSITIVE_FLOAT,
}
_OFF_POLICY: dict[str, Check] = {
    **_COMMON,
    "buffer_size": _positive_int(),
    "tau": _fraction(),
    "train_freq": _positive_int("a positive integer (environment steps)"),
    "gradient_steps": Check(
        Rule("int", low=1) | Rule("int", low=-1, high=-1), "a positive integer, or -1"
    ),
    "learning_starts": _NON_NEGATIVE_INT,
    "ent_coef": Check(
        Rule("float", low=0, low_open=True) | Rule("str", pattern=r"auto(_\d+(\.\d*)?(e-?\d+)?)?"),
        "a positive float, 'auto' or 'auto_<initial value>'",
    ),
    "target_entropy": Check(Rule("str", choices=("auto",)) | Rule("float"), "'auto' or a float"),
    "target_update_interval": _positive_int(),
}
_CROSSQ: dict[str, Check] = {  # no target networks, hence no tau
    **{k: v for k, v in _OFF_POLICY.items() if k not in ("tau", "target_update_interval")},
    "policy_delay": _positive_int("a positive integer (critic updates per actor update)"),
}
_PPO: dict[str, Check] = {
    **_COMMON,
    "n_steps": _positive_int("a positive integer (steps per environment per update)"),
    "n_epochs": _positive_int(),
    "gae_lambda": _fraction(closed=True),
    "clip_range": _fraction(),
    "ent_coef": _NON_NEGATIVE_FLOAT,
    "vf_coef": _NON_NEGATIVE_FLOAT,
    "target_kl": _POSITIVE_FLOAT,
    "normalize_advantage": _BOOL,
}

POLICY_KWARGS: Mapping[str, Check] = MappingProxyType(
    {
        "n_critics": _positive_int(),
        "n_quantiles": _positive_int(),
        "share_features_extractor": _BOOL,
        "log_std_init": _ANY_FLOAT,
        "use_sde": _BOOL,
        "augment_shift": Check(Rule("int", low=0), "an integer >= 0 (pixels of random shift)"),
        "channels_last": _BOOL,
        "ortho_init": _BOOL,
        "lstm_hidden_size": _positive_int(),
        "n_lstm_layers": _positive_int(),
        "shared_lstm": _BOOL,
        "enable_critic_lstm": _BOOL,
    }
)
"""Every ``[policy.kwargs]`` key a preset may use, with its rule; each algorithm allows some."""


# -- algorithms -------------------------------------------------------------------------------

_SAC_POLICIES = tuple(
    f"stable_baselines3.sac.policies:{n}" for n in ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")
)
_TQC_POLICIES = tuple(
    f"sb3_contrib.tqc.policies:{n}" for n in ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")
)
_PPO_POLICIES = tuple(
    f"stable_baselines3.common.policies:{n}"
    for n in ("ActorCriticPolicy", "ActorCriticCnnPolicy", "MultiInputActorCriticPolicy")
)
_RECURRENT_POLICIES = tuple(
    f"sb3_contrib.common.recurrent.policies:{n}"
    for n in (
        "RecurrentActorCriticPolicy",
        "RecurrentActorCriticCnnPolicy",
        "RecurrentMultiInputActorCriticPolicy",
    )
)
_FRAME_BUFFER = "tm_algos.buffers:FrameStackReplayBuffer"


@dataclass(frozen=True)
class AlgorithmSpec:
    """One algorithm: how presets name it, what builds it and what its policy files hold."""

    name: str
    """The name presets use (``algo.name``): ``"sac"``, ``"recurrent_ppo"``, ..."""
    class_name: str
    """The class's name, written in policy files and checkpoints: ``"SAC"``, ``"DictCrossQ"``."""
    class_path: str
    """Where the class lives, ``"module:Class"``; see :meth:`load`."""
    off_policy: bool
    """Learns from a replay buffer (SAC family) rather than from fresh rollouts (PPO family)."""
    squashed: bool
    """Its deterministic action is the tanh of a Gaussian mean, rescaled to the action space;
    otherwise it is the distribution's mode, clipped to the action space."""
    recurrent: bool
    """Its policy keeps an LSTM state between steps."""
    policy: str
    """The policy the factory gives the class for tm-gym's Dict observations: an alias the
    class knows (``"MultiInputPolicy"``), or ``"module:Class"`` when it has none."""
    policy_classes: tuple[str, ...]
    """The policy classes policy files may name for this algorithm (``"module:Class"``)."""
    hyperparameters: Mapping[str, Check] = field(repr=False)
    """The ``[algo.hyperparameters]`` keys a preset may set, with their rules."""
    policy_kwargs: tuple[str, ...] = ()
    """The :data:`POLICY_KWARGS` keys a preset may set in ``[policy.kwargs]``."""
    replay_buffer: str | None = None
    """The replay buffer class the factory gives an off-policy model (``"module:Class"``); it
    is built with the observation's stacked key as ``frame_key``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hyperparameters", MappingProxyType(dict(self.hyperparameters)))

    def load(self) -> type[BaseAlgorithm]:
        """The algorithm's class (imported now)."""
        cls: type[BaseAlgorithm] = import_object(self.class_path)
        return cls

    def load_policy(self) -> str | type[BasePolicy]:
        """:attr:`policy` as the class's constructor takes it (an alias, or the class)."""
        if ":" not in self.policy:
            return self.policy
        cls: type[BasePolicy] = import_object(self.policy)
        return cls

    def load_policy_classes(self) -> dict[str, type[BasePolicy]]:
        """The allowed policy classes by class name (imported now)."""
        return {path.rpartition(":")[2]: import_object(path) for path in self.policy_classes}

    def load_replay_buffer(self) -> type[ReplayBuffer] | None:
        """:attr:`replay_buffer`'s class, or None (the class's own default)."""
        if self.replay_buffer is None:
            return None
        cls: type[ReplayBuffer] = import_object(self.replay_buffer)
        return cls

    def policy_kwarg_rules(self) -> dict[str, Check]:
        """The rules of the ``[policy.kwargs]`` keys this algorithm allows."""
        return {key: POLICY_KWARGS[key] for key in self.policy_kwargs}


_SPECS = (
    AlgorithmSpec(
        name="sac",
        class_name="SAC",
        class_path="stable_baselines3:SAC",
        off_policy=True,
        squashed=True,
        recurrent=False,
        policy="MultiInputPolicy",
        policy_classes=_SAC_POLICIES,
        hyperparameters=_OFF_POLICY,
        policy_kwargs=("n_critics", "share_features_extractor", "log_std_init", "use_sde"),
        replay_buffer=_FRAME_BUFFER,
    ),
    AlgorithmSpec(
        name="tqc",
        class_name="TQC",
        class_path="sb3_contrib:TQC",
        off_policy=True,
        squashed=True,
        recurrent=False,
        policy="MultiInputPolicy",
        policy_classes=_TQC_POLICIES,
        hyperparameters={
            **_OFF_POLICY,
            "top_quantiles_to_drop_per_net": _NON_NEGATIVE_INT,
        },
        policy_kwargs=(
            "n_critics",
            "n_quantiles",
            "share_features_extractor",
            "log_std_init",
            "use_sde",
        ),
        replay_buffer=_FRAME_BUFFER,
    ),
    AlgorithmSpec(
        name="redq",
        class_name="REDQ",
        class_path="tm_algos.redq:REDQ",
        off_policy=True,
        squashed=True,
        recurrent=False,
        policy="MultiInputPolicy",
        policy_classes=_SAC_POLICIES,  # REDQ trains N critics but acts with SAC's actor
        hyperparameters={
            **_OFF_POLICY,
            "subset_size": _positive_int("a positive integer (critics sampled for the target)"),
            "actor_update_interval": _positive_int(
                "a positive integer (critic updates per actor update)"
            ),
        },
        policy_kwargs=("n_critics", "share_features_extractor", "log_std_init"),
        replay_buffer=_FRAME_BUFFER,
    ),
    AlgorithmSpec(
        name="fast_sac",
        class_name="FastImageSAC",
        class_path="tm_algos.fast_sac:FastImageSAC",
        off_policy=True,
        squashed=True,
        recurrent=False,
        policy="MultiInputPolicy",
        policy_classes=("tm_algos.fast_sac:FastSACPolicy",),
        hyperparameters=_OFF_POLICY,
        policy_kwargs=(
            "n_critics",
            "share_features_extractor",
            "log_std_init",
            "augment_shift",
            "channels_last",
        ),
        replay_buffer=_FRAME_BUFFER,
    ),
    AlgorithmSpec(
        name="crossq",
        class_name="DictCrossQ",
        class_path="tm_algos.crossq:DictCrossQ",
        off_policy=True,
        squashed=True,
        recurrent=False,
        # CrossQ has no "MultiInputPolicy" name: its policy class takes Dict spaces
        policy="sb3_contrib.crossq.policies:CrossQPolicy",
        policy_classes=("sb3_contrib.crossq.policies:CrossQPolicy",),
        hyperparameters=_CROSSQ,
        policy_kwargs=("n_critics", "log_std_init"),
        replay_buffer="tm_algos.crossq:CrossQFrameStackReplayBuffer",
    ),
    AlgorithmSpec(
        name="ppo",
        class_name="PPO",
        class_path="stable_baselines3:PPO",
        off_policy=False,
        squashed=False,
        recurrent=False,
        policy="MultiInputPolicy",
        policy_classes=_PPO_POLICIES,
        hyperparameters=_PPO,
        policy_kwargs=("share_features_extractor", "log_std_init", "use_sde", "ortho_init"),
    ),
    AlgorithmSpec(
        name="recurrent_ppo",
        class_name="RecurrentPPO",
        class_path="sb3_contrib:RecurrentPPO",
        off_policy=False,
        squashed=False,
        recurrent=True,
        policy="MultiInputLstmPolicy",
        policy_classes=_RECURRENT_POLICIES,
        hyperparameters=_PPO,
        policy_kwargs=(
            "share_features_extractor",
            "log_std_init",
            "ortho_init",
            "lstm_hidden_size",
            "n_lstm_layers",
            "shared_lstm",
            "enable_critic_lstm",
        ),
    ),
)

ALGORITHMS: Mapping[str, AlgorithmSpec] = MappingProxyType({s.name: s for s in _SPECS})
"""Every algorithm, by the name presets use, in the order the documentation lists them."""

_BY_CLASS_NAME = {s.class_name: s for s in _SPECS}


def algorithm(name: str) -> AlgorithmSpec:
    """The algorithm presets call ``name``.

    Raises:
        InvalidValueError: ``name`` is not in :data:`ALGORITHMS`.
    """
    spec = ALGORITHMS.get(name)
    if spec is None:
        raise InvalidValueError(
            f"algorithm {name!r} is unknown; expected one of {list(ALGORITHMS)}"
        )
    return spec


def algorithm_by_class_name(class_name: str) -> AlgorithmSpec | None:
    """The algorithm whose class is called ``class_name`` (as policy files name it), or None."""
    return _BY_CLASS_NAME.get(class_name)


# -- activations and feature extractors -------------------------------------------------------

ACTIVATIONS: Mapping[str, str] = MappingProxyType(
    {
        "relu": "ReLU",
        "tanh": "Tanh",
        "elu": "ELU",
        "leaky_relu": "LeakyReLU",
        "gelu": "GELU",
        "silu": "SiLU",
        "sigmoid": "Sigmoid",
        "mish": "Mish",
    }
)
"""Activation functions of the networks' hidden layers: the name presets use
(``policy.activation``) → the ``torch.nn`` class, whose name policy files write."""


def activation_class(name: str) -> type[nn.Module]:
    """The ``torch.nn`` class of the activation presets call ``name`` (imported now).

    Raises:
        InvalidValueError: ``name`` is not in :data:`ACTIVATIONS`.
    """
    if name not in ACTIVATIONS:
        raise InvalidValueError(f"activation {name!r}: expected one of {sorted(ACTIVATIONS)}")
    cls: type[nn.Module] = import_object(f"torch.nn:{ACTIVATIONS[name]}")
    return cls


EXTRACTORS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        # preset name → (observation family, tm_algos.extractors.policy_kwargs_for arch)
        "lidar-mlp": ("lidar", "mlp"),
        "cnn-small": ("images", "small"),
        "cnn-tmrl": ("images", "tmrl"),
        "vit": ("images", "vit"),
        "perception": ("images", "perception"),  # kwargs: path (required), freeze, features
    }
)
"""Feature extractor names a preset may use (``policy.extractor``)."""
