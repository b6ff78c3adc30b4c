"""The OpenClaw hook (integrations/openclaw/) run under Node against a real `outbox-relay run`.

Node is not a Python dependency: without it these tests are skipped on a laptop, and fail in CI.
"""

import json
import os
import subprocess
import threading

from cliutil import clean_env
from factories import FEISHU_TOKEN, SAMPLES, flat_message
from serverproc import REPO, free_port, wait_until
from serviceutil import outbox_ids, post, received, scrape, service_process, write_lock

ROOT = REPO
RUN_HOOK = os.path.join(ROOT, "integrations", "openclaw", "run-hook.mjs")
SAMPLE = str(SAMPLES / "openclaw_message_received.json")
TOKEN = "hook-token-9f8e7d"


def run_hook(node, url, event_file, token=None, timeout=30, **env_extra):
    """The hook on one event file, posting to url (the `node` fixture is conftest's)."""
    env = clean_env(OUTBOX_RELAY_URL=url, OUTBOX_RELAY_TIMEOUT_MS="5000")
    if token is not None:
        env["OUTBOX_RELAY_AUTH_TOKEN"] = token
    env.update(env_extra)
    proc = subprocess.run([node, RUN_HOOK, event_file], env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else None
    return proc.returncode, result, proc.stderr


def test_hook_delivers_to_a_relay_that_also_takes_feishu(node, tmp_path):
    # The realistic set-up: Feishu's push verified by its token, OpenClaw by the bearer token.
    with service_process(tmp_path, auth_token=TOKEN, feishu_verification_token=FEISHU_TOKEN) as p:
        code, result, stderr = run_hook(node, p.url, SAMPLE, token=TOKEN)
        assert (code, result) == (0, {"ok": True, "status": 200, "attempts": 1}), stderr
        rows = outbox_ids(p.outbox)
        assert list(rows) == ["om_openclaw_0001"]
        # The hook re-sends after a timeout; the relay answers 200 (a duplicate) and stores one row.
        code, result, _ = run_hook(node, p.url, SAMPLE, token=TOKEN)
        assert (code, result["status"]) == (0, 200)
        assert list(outbox_ids(p.outbox)) == ["om_openclaw_0001"]
        samples = scrape(p.url)
        assert received(samples, "openclaw", "stored") == 1
        assert received(samples, "openclaw", "duplicate") == 1
        wait_until(lambda: outbox_ids(p.outbox)["om_openclaw_0001"] == "delivered", timeout=10,
                   what="relayed to the target")
        assert p.stop() == 0


def test_hook_with_a_wrong_token_is_refused_once_and_says_so(node, tmp_path):
    with service_process(tmp_path, auth_token=TOKEN) as p:
        code, result, stderr = run_hook(node, p.url, SAMPLE, token="not-the-token",
                                        OUTBOX_RELAY_MAX_TRIES="3")
        assert code == 1
        # A 401 is not retried: repeating a request with bad credentials cannot help.
        assert result["ok"] is False and result["status"] == 401 and result["attempts"] == 1
        assert "wrong bearer token" in result["error"]
        assert "om_openclaw_0001" in stderr and "not-the-token" not in stderr and TOKEN not in stderr
        code, result, _ = run_hook(node, p.url, SAMPLE)  # no token at all
        assert code == 1 and result["status"] == 401
        assert outbox_ids(p.outbox) == {}
        assert "not-the-token" not in p.log() and TOKEN not in p.log()


def test_hook_retries_a_503_after_retry_after_and_lands(node, tmp_path):
    with service_process(tmp_path, busy_timeout=0.2) as p:
        done = {}
        with write_lock(p.outbox):
            t = threading.Thread(target=lambda: done.update(zip(
                ("code", "result", "stderr"), run_hook(node, p.url, SAMPLE, OUTBOX_RELAY_MAX_TRIES="3"))))
            t.start()
            # The first try meets the locked outbox: 503 + Retry-After: 1, nothing stored.
            wait_until(lambda: received(scrape(p.url), "openclaw", "unavailable") >= 1,
                       timeout=15, what="the hook's first try refused with 503")
        t.join(30)
        assert done["code"] == 0, done
        assert done["result"]["ok"] is True and done["result"]["attempts"] >= 2
        assert "om_openclaw_0001" in outbox_ids(p.outbox)


def test_hook_skips_other_events_and_survives_a_relay_that_is_down(node, tmp_path):
    other = tmp_path / "sent.json"
    other.write_text(json.dumps({"type": "message", "action": "sent", "context": {"messageId": "om_x"}}))
    port = free_port()  # nothing listens here
    code, result, _ = run_hook(node, f"http://127.0.0.1:{port}", str(other))
    assert code == 1 and result == {"ok": False, "skipped": True, "status": None, "attempts": 0}
    code, result, stderr = run_hook(node, f"http://127.0.0.1:{port}", SAMPLE, OUTBOX_RELAY_MAX_TRIES="2")
    assert code == 1 and result["attempts"] == 2 and result["status"] is None
    assert "ECONNREFUSED" in result["error"] and "could not deliver message om_openclaw_0001" in stderr


def test_a_flat_post_next_to_the_hook(node, tmp_path):
    """Other senders share the endpoint and the bearer token (a script posting the flat shape)."""
    with service_process(tmp_path, auth_token=TOKEN) as p:
        assert post(p.url, flat_message("om_script"), {"Authorization": f"Bearer {TOKEN}"}).status == 200
        code, result, _ = run_hook(node, p.url, SAMPLE, token=TOKEN)
        assert code == 0
        assert sorted(outbox_ids(p.outbox)) == ["om_openclaw_0001", "om_script"]
