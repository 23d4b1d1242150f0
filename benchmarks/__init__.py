"""Benchmarks of tvm_sparse, kept in the repository and not installed.

Each script runs as ``python benchmarks/<name>.py``; ``architectures`` (the reference models)
and ``harness`` (turns, fresh processes, result tables) are what they share, and the tests
import the architectures as ``benchmarks.architectures``.
"""
