"""Router families' modules: the nn.Module (or fitted table) of each family and, next to it, its
`load_family_scorer` (checkpoint directory -> `family_scorer.FamilyScorer`, what `Router` calls): `mf`
(RouteLLM matrix factorization), `difficulty` (BEST-Route heads), `probe`, `cluster` (UniRoute), `knn`,
`linear`. Registered in routerforge/registry/families.py."""
