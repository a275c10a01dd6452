"""MLflow model versions with lineage, the tamper-evident ledger, audit and exact rollback.

(Issue 5.)
"""
