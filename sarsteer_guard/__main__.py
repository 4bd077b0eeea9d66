"""``python -m sarsteer_guard`` runs the CLI."""

import sys

from sarsteer_guard.cli import main

sys.exit(main())
