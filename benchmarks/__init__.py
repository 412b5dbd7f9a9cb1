"""Benchmarks and fidelity scripts (``python -m benchmarks.<name>``), apart from the product
packages: each prints the figures the README quotes, measured side by side in one run."""
