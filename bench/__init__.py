"""Benchmarks: each module prints Markdown tables for the README (bench/run starts a stack)."""
