import sys

from masterkey.cli import main

# Guarded: worker processes started with "spawn" (train --jobs) re-import this module as __mp_main__.
if __name__ == "__main__":
    sys.exit(main())
