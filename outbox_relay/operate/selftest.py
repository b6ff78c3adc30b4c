"""`outbox-relay test`: one message put and followed until it is in the target, end to end."""

import time
import uuid

from ..errors import OutboxRelayError, RelayLocked, TargetError
from ..sync import Relay, RelayLock


def end_to_end_test(cfg, outbox, target, timeout):
    """Put one test message and wait for it in the target. (ok, line).

    With a relay running we only watch the target; without one we relay it
    ourselves (holding the relay lock), so the command works on its own too.
    """
    message_id = f"outbox-relay-test-{uuid.uuid4().hex}"
    started = time.monotonic()
    outbox.put({"message_id": message_id, "chat_id": "outbox-relay-test", "sender_id": "outbox-relay",
                "msg_type": "text", "text": "outbox-relay end-to-end test message"})
    deadline = started + timeout
    lock = None
    try:
        try:
            lock = RelayLock(cfg.outbox).acquire()
        except RelayLocked:
            lock = None
        if lock is not None:
            relay = Relay(outbox, target, batch_size=cfg.batch_size, backoff_max=max(1.0, timeout / 4))
            last_error = None
            while time.monotonic() < deadline:
                try:
                    relay.step()
                    if _in_target(target, message_id):
                        return True, _reached(target, message_id, started)
                except (TargetError, OutboxRelayError) as e:
                    last_error = str(e)
                    time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            why = f": {last_error}" if last_error else ""
            return False, (f"FAILED: test message not in the target after {timeout:g} s{why} "
                           "(it stays in the outbox and is delivered when the target is back)")
        while time.monotonic() < deadline:
            try:
                if _in_target(target, message_id):
                    return True, _reached(target, message_id, started, " (via the running relay)")
            except TargetError:
                pass
            time.sleep(0.05)
        return False, (f"FAILED: test message not in the target after {timeout:g} s "
                       "(the running relay has not delivered it; see `outbox-relay status`)")
    finally:
        if lock is not None:
            lock.release()


def _reached(target, message_id, started, how=""):
    """The OK line (the test row removed from the target, where we may)."""
    return (f"OK: test message {message_id} reached {target.describe()} in"
            f" {(time.monotonic() - started) * 1000:.0f} ms{how}{_remove(target, message_id)}")


def _remove(target, message_id):
    """Delete the test row so it does not count in stats; many RDS roles may not delete: say so."""
    try:
        target.delete(message_id)
        return "; test row removed"
    except TargetError:
        return "; test row kept (no DELETE privilege), chat_id outbox-relay-test"


def _in_target(target, message_id):
    return bool(target.existing_ids([message_id]))
