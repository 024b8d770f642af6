"""Data-prep stage 'decontaminate': runs every stage up to and including 'decontaminate' (finished stages are resumed).

    python data_prep/decontaminate.py --config configs/data/demo.yaml [--strict] [key=value ...]
    accelerate launch data_prep/decontaminate.py --config ...   # embedding work split across processes
"""

import sys

from routerforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "--stage", "decontaminate", *sys.argv[1:]]))
