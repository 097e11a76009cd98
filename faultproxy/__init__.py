"""faultproxy: a fault-injecting HTTP proxy for DynamoDB Local (a test tool; no Django).

DynamoDB Local never throttles and never returns ``UnprocessedItems``. :class:`FaultProxy` sits in
front of it and, for ``BatchWriteItem``, injects the failures real DynamoDB produces: unprocessed
items, throttling, 5xx, dropped connections after a write, latency, outages, a write-capacity
limit and poisoned batches. Run it in-process (``FaultProxy(...).start()``) or as a separate
process (``python -m faultproxy --upstream URL --port N``) driven over HTTP. The whole interface is
described in :mod:`faultproxy.proxy`; the command line in :mod:`faultproxy.__main__`.
"""

from faultproxy.proxy import ERRORS, FaultConfig, FaultProxy, item_size, request_wcu

__all__ = ["ERRORS", "FaultConfig", "FaultProxy", "item_size", "request_wcu"]
