"""A demo app with customers and orders, to try "Copy to DynamoDB" on real records."""
