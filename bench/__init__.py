"""The benchmarks beside PyTorch (see bench/README.md); a package so that the tests can import them.

Run the scripts from the repository root, e.g. ``python bench/train_step.py --suite small-vits``.
"""
