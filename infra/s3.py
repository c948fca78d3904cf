"""`python -m infra.s3 bootstrap ...`: kept for the Makefile and older docs; the code is
slimline/s3.py (also `slimline s3 bootstrap ...`)."""
import sys

from slimline.s3 import main

if __name__ == "__main__":
    sys.exit(main())
