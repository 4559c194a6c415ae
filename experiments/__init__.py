"""Research scripts reproducing the unit scaling paper; they import unitscale and ipu_sim."""
