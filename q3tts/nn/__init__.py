"""The networks: weights and pure forward passes, one short file per network."""
