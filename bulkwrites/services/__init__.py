"""Use-cases that write: create jobs from a source, run them, control them, record outcomes.

Admin views, management commands and RQ tasks call these; none of them talks to boto3 or
builds ledger rows itself.
"""
