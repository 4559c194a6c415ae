"""ipu_sim: a performance model of the Graphcore IPU driven by jitted JAX functions."""
