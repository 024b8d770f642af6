"""All data-prep stages: ingest -> validate -> clean -> convert and merge -> decontaminate -> split -> embed.

    python data_prep/prep.py --config configs/data/demo.yaml [--strict] [--force] [key=value ...]
    accelerate launch --config_file launch/accelerate/cpu_2proc.yaml data_prep/prep.py --config ...
"""

import sys

from routerforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", *sys.argv[1:]]))
