"""Device helpers shared by the arch kernels (one module per concept)."""
