"""`python -m routerforge.train RECIPE ...`, so that `accelerate launch -m routerforge.train mf --config mf/tiny`
starts a recipe of an installed routerforge on every process (routerforge/recipes.py)."""

import sys

from routerforge.recipes import train_main

sys.exit(train_main())
