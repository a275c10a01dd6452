"""Prefect flows, deployments and the ``factsmith`` CLI; the only package that knows Prefect.

Nothing heavy is imported here: ``factsmith --help`` must stay fast.
"""
