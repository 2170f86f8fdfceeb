"""The RL Baselines3 Zoo's table for ``--algo tqc``: the ``lidar-tqc`` preset (see :mod:`tm_algos.zoo`)."""

from tm_algos.zoo import zoo_hyperparams

hyperparams = zoo_hyperparams("lidar-tqc")
