"""Benchmarks: fedagg and OpenFL 1.7.1's own aggregator under the same workload, side by side."""
