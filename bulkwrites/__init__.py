"""bulkwrites: bulk writes into Amazon DynamoDB from the Django admin, with a per-item ledger."""
