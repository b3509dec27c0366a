"""Repository-level pytest configuration: the suites and tests are collected, nothing else."""

collect_ignore = ["bench", "reports", ".ci"]
