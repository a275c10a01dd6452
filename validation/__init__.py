"""Intake and the release gate: request parsers, Great Expectations suites, gate metrics, reports.

(Issue 4.)
"""
