"""``python -m attnlens.cli``: the ``attnlens`` command."""

import sys

from . import main

sys.exit(main())
