"""Data-prep stage 'ingest': runs every stage up to and including 'ingest' (finished stages are resumed).

    python data_prep/ingest.py --config configs/data/demo.yaml [--strict] [key=value ...]
    accelerate launch data_prep/ingest.py --config ...   # embedding work split across processes
"""

import sys

from routerforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "--stage", "ingest", *sys.argv[1:]]))
