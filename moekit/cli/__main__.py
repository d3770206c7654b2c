"""``python -m moekit.cli``: the same as the ``moekit`` command."""

import sys

from moekit.cli.main import main

sys.exit(main())
