import sys

from masterkey.cli import main

sys.exit(main())
