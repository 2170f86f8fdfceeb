"""``python -m tm_gym`` is the ``tm-gym`` command."""

import sys

from tm_gym.cli.main import main

sys.exit(main())
