"""What serve_grpc hands grpcio: listening addresses and server options."""

from __future__ import annotations

import dataclasses

from trioserve.config import default_config
from trioserve.grpc.server import RECEIVE_SLACK, address, server_options


def test_addresses_put_ipv6_literals_in_brackets() -> None:
    assert address("127.0.0.1", 7070) == "127.0.0.1:7070"
    assert address("0.0.0.0", 0) == "0.0.0.0:0"
    assert address("::", 7071) == "[::]:7071"
    assert address("[::1]", 7071) == "[::1]:7071"
    assert address("localhost", 7070) == "localhost:7070"


def test_options_leave_the_size_checks_to_the_bridge_and_never_share_a_port() -> None:
    config = dataclasses.replace(default_config(), max_request_size=1000)
    options = dict(server_options(config))
    assert options["grpc.so_reuseport"] == 0
    assert options["grpc.max_receive_message_length"] == 1000 + RECEIVE_SLACK
    assert options["grpc.max_send_message_length"] == -1
    huge = dataclasses.replace(default_config(), max_request_size=2**31)
    assert dict(server_options(huge))["grpc.max_receive_message_length"] == 2**31 - 1
