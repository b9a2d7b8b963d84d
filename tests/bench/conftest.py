"""The benchmark is run by hand (``python tests/bench/run_bench.py``): pytest never collects it."""

collect_ignore_glob = ["*"]
