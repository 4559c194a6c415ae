"""unitscale: unit scaling and exact low-precision number formats for JAX."""
