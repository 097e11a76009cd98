"""Run the fault proxy as its own process, for writers that live in another process (an RQ worker).

::

    python -m faultproxy --upstream http://127.0.0.1:8124 --port 8125 [--seed 1] \\
        [--unprocessed-share 0.3] [--throttle-share 0.1] [--throttle-code ThrottlingException] \\
        [--capacity-wcu 50] [--outage-seconds 5] [--all-operations] ...

Every :class:`faultproxy.FaultConfig` setting has an option (``unprocessed_share`` ->
``--unprocessed-share``; booleans are flags), plus ``--outage-seconds``. ``--port 0`` takes a free
port. Once listening, the process prints one line to stdout, ``faultproxy listening on URL``, so a
parent can read the address, then serves until SIGTERM or SIGINT.

Change the faults at runtime through the control path on the same port (JSON)::

    curl -X POST http://127.0.0.1:8125/__faultproxy__/config -d '{"throttle_share": 0.5}'
    curl http://127.0.0.1:8125/__faultproxy__/stats
    curl -X POST http://127.0.0.1:8125/__faultproxy__/reset
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from typing import Any

from faultproxy.proxy import FaultConfig, FaultProxy

_OPTION_TYPES = {
    "float": float,
    "float | None": float,
    "int": int,
    "str": str,
    "str | None": str,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m faultproxy", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--upstream",
        required=True,
        help="DynamoDB Local URL, e.g. http://127.0.0.1:8124",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default 0: a free one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault random generator")
    parser.add_argument(
        "--outage-seconds",
        type=float,
        help="reject every call for this long from start",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    for field in dataclasses.fields(FaultConfig):
        option = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(option, action="store_true", default=None)
        else:
            parser.add_argument(option, type=_OPTION_TYPES[str(field.type)], default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    settings: dict[str, Any] = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(FaultConfig)
        if getattr(args, field.name) is not None
    }
    proxy = FaultProxy(args.upstream, host=args.host, port=args.port, seed=args.seed)
    try:
        proxy.configure(outage_seconds=args.outage_seconds, **settings)
    except (TypeError, ValueError) as exc:
        print(f"faultproxy: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    with proxy:
        print(f"faultproxy listening on {proxy.url}", flush=True)
        while not stop.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
