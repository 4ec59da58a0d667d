"""Looking at trained runs and at the code's speed: prediction, inspection and figures, the benchmark, the GPU check."""
