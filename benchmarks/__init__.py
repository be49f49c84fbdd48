"""Speed and size benchmarks: ``python -m benchmarks [name ...]`` runs benchmarks/bench_*.py."""
