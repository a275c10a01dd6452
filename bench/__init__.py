"""Benchmarks: scripts that print tables and write JSON under bench/results/ (see README.md)."""
