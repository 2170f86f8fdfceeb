"""The built-in TrackMania simulator: tracks, car physics, camera, LIDAR and the expert driver.

Modules: :mod:`~tm_gym.sim.track` (file format and geometry), :mod:`~tm_gym.sim.generator`
(procedural tracks), :mod:`~tm_gym.sim.physics` (car model), :mod:`~tm_gym.sim.raster`,
:mod:`~tm_gym.sim.camera` and :mod:`~tm_gym.sim.lidar` (what the car sees),
:mod:`~tm_gym.sim.simulator` (N cars stepped together) and :mod:`~tm_gym.sim.expert`.
"""
