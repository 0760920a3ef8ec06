"""SIGTERM bounds shutdown even with a handler that never checks cancellation (issue 18)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.e2e.conftest import start_server

# Loaded at the server's start-up (PYTHONPATH): a text starting with HANG makes the tokenizer
# block for a minute, like a library call that never returns to a cancellation check.
SITECUSTOMIZE = """
import os
import time

from transformers import PreTrainedTokenizerBase

_real = PreTrainedTokenizerBase.__call__


def _hang(self, text=None, *args, **kwargs):
    if isinstance(text, str) and text.startswith("HANG"):
        open(os.environ["HANG_MARKER"], "w").close()  # the handler is stuck from here on
        time.sleep(60)
    return _real(self, text, *args, **kwargs)


PreTrainedTokenizerBase.__call__ = _hang
"""


@pytest.mark.slow
def test_sigterm_ends_the_process_with_a_handler_stuck(tiny_gpt2_dir, tmp_path, monkeypatch):
    """Reported: SIGTERM did not bound shutdown when a handler never checked cancellation (25 s).
    With --grace-seconds 1 and a handler stuck in the tokenizer for a minute, the process exits 0
    soon after the grace period, saying one request was unfinished."""
    import grpc

    from tdb.v1 import common_pb2 as cpb
    from tdb.v1 import inference_pb2 as ipb
    from tdb.v1 import inference_pb2_grpc as ipb_grpc

    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "hanging"
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("HANG_MARKER", str(marker))
    server = start_server("--model", f"tiny={tiny_gpt2_dir}", "--grace-seconds", "1")
    channel = grpc.insecure_channel(server.address)
    stub = ipb_grpc.InferenceServiceStub(channel)
    codes = []

    def stuck_call() -> None:
        try:
            list(stub.Forward(ipb.ForwardRequest(prompts=[cpb.Prompt(text="HANG on")]), timeout=90))
        except grpc.RpcError as e:
            codes.append(e.code())

    caller = threading.Thread(target=stuck_call)
    caller.start()
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the call never reached the tokenizer"
    try:
        code = server.stop(timeout=20)  # a minute if the stuck handler held the process
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    caller.join(30)
    channel.close()
    assert code == 0
    stopped = [e for e in server.events() if e.get("event") == "stopped"]
    assert stopped and stopped[0]["unfinished_requests"] == 1
