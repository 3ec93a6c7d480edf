import sys

from tttgraph.cli import main

sys.exit(main())
