"""The RL Baselines3 Zoo's table for ``--algo ppo``: the ``images-ppo`` preset (see :mod:`tm_algos.zoo`)."""

from tm_algos.zoo import zoo_hyperparams

hyperparams = zoo_hyperparams("images-ppo")
