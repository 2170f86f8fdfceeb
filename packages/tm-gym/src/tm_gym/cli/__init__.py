"""The ``tm-gym`` command line: ``drive``, ``tracks`` and ``play``.

The entry point is :func:`tm_gym.cli.main.main`. Importing this package loads nothing heavy: each
subcommand imports the simulator, matplotlib or pygame only when it runs.
"""
