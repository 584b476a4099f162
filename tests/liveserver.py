"""The real server (uvicorn, as `lipstep serve` runs it) on a free loopback port, in a thread of the test process,
for clients that need a socket: a browser, the load test."""

import contextlib
import socket
import threading
import time

import uvicorn

from lipstep.server import ServeConfig, create_app


@contextlib.contextmanager
def live_server(pipe, **settings):
    """Yield the base URL (http://127.0.0.1:PORT) of `create_app(ServeConfig(**settings), pipe)`; stop it after."""
    cfg = ServeConfig(**settings)
    app = create_app(cfg, pipe)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, ws_max_size=cfg.max_bytes + 4096)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
