"""Benchmarks shipped with the package (`visattn bench ...`)."""
