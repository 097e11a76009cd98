"""DynamoDB domain logic: item rules, batching, backoff and the BatchWriteItem loop.

Nothing in this package imports Django: it takes plain values, a client and a sleep
function, and returns plain outcome objects, so it is tested without any server.
"""
