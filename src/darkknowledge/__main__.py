import sys

from darkknowledge.cli import main

sys.exit(main())
