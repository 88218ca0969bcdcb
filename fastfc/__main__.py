import sys

from fastfc.cli import main

sys.exit(main())
