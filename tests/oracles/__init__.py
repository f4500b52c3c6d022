"""Reference implementations ("oracles") of aggregation methods and DP accounting, each run from its own
venv in its own process: Flower, OpenFL and Google's dp-accounting. See oracles.py."""
