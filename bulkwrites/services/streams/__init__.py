"""Stream rules: create and control them (``rules``), consume their streams (``consume``).

A rule reads a source table's DynamoDB Stream and writes what each record maps to into a
target table, through the same writer, rate limiter and ledger conventions as bulk jobs.
"""
