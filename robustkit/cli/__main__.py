import sys

from robustkit.cli import main

sys.exit(main())
