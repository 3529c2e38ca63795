"""``python -m robustkit``: the command line (what ``torchrun -m robustkit eval ...`` starts in each process)."""
import sys

from robustkit.cli import main

sys.exit(main())
