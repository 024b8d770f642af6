"""Data-prep stage 'split': runs every stage up to and including 'split' (finished stages are resumed).

    python data_prep/split.py --config configs/data/demo.yaml [--strict] [key=value ...]
    accelerate launch data_prep/split.py --config ...   # embedding work split across processes
"""

import sys

from routerforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "--stage", "split", *sys.argv[1:]]))
