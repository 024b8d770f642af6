"""Router networks (plain nn.Modules): `mf.MFModel` (RouteLLM matrix factorization); later difficulty
heads, probes, the cluster router and policy/value heads."""
