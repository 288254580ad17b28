"""`python -m rapidun_dist.cli ...` is `rapidun ...`."""

import sys

from rapidun_dist.cli import main

if __name__ == "__main__":
    sys.exit(main())
