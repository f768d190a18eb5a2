"""Memory accounting: measured saved activations, Table 1's formulas, simulation, CUDA peaks."""
