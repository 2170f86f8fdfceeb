"""Backends: the registry of what ``backend="NAME"`` builds, and the factory behind ``gymnasium.make``.

* :mod:`~tm_gym.backends.registry` — :func:`register_backend`, :func:`backend_names`,
  :func:`backend_spec`;
* :mod:`~tm_gym.backends.factory` — :func:`make_env`, the environments' entry point;
* :mod:`~tm_gym.backends.sim`, :mod:`~tm_gym.backends.game`, :mod:`~tm_gym.backends.replay` —
  the built-in backends, each imported only when an environment of its kind is made.
"""

from tm_gym.backends.factory import make_env
from tm_gym.backends.registry import BackendSpec, backend_names, backend_spec, register_backend

__all__ = ["BackendSpec", "backend_names", "backend_spec", "make_env", "register_backend"]
