"""The API's listening socket: connections accepted through asyncio (as uvicorn serves them)
get TCP_NODELAY, so an answer written in two parts is never held back by Nagle's algorithm
waiting for the client's delayed ACK (40 ms per call on a kept-alive connection)."""

import asyncio
import socket

from api.__main__ import listen


async def nodelay_of_accepted(listener: socket.socket) -> int:
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
    async with server:
        _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        try:
            return await asyncio.wait_for(accepted, timeout=5)
        finally:
            writer.close()


def test_connections_accepted_on_the_listener_have_nodelay() -> None:
    assert asyncio.run(nodelay_of_accepted(listen("127.0.0.1", 0))) != 0


def test_the_check_can_fail_a_socket_whose_protocol_is_left_unset() -> None:
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, as before the fix
    plain.bind(("127.0.0.1", 0))
    plain.listen(8)
    assert asyncio.run(nodelay_of_accepted(plain)) == 0
