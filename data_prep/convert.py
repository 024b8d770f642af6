"""Data-prep stage 'convert': runs every stage up to and including 'convert' (finished stages are resumed).

    python data_prep/convert.py --config configs/data/demo.yaml [--strict] [key=value ...]
    accelerate launch data_prep/convert.py --config ...   # embedding work split across processes
"""

import sys

from routerforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "--stage", "convert", *sys.argv[1:]]))
