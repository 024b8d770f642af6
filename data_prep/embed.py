"""Data-prep stage 'embed': runs every stage up to and including 'embed' (finished stages are resumed).

    python data_prep/embed.py --config configs/data/demo.yaml [--strict] [key=value ...]
    accelerate launch data_prep/embed.py --config ...   # embedding work split across processes
"""

import sys

from routerforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "--stage", "embed", *sys.argv[1:]]))
