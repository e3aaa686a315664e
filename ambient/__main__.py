import sys

from ambient.cli import main

sys.exit(main())
