"""The RoI heads and their branches: `standard.py` holds the layer that runs them and the
`RoIBranch` interface; each other module is one head with its targets and losses."""
