"""``python -m icecore_lib`` runs the console command."""

import sys

from .cli import main

sys.exit(main())
