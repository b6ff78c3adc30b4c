"""Installing the OpenClaw hook (integrations/openclaw/outbox-relay/, shipped in the package as
intake/openclaw-hook) into a gateway's hooks directory, and the lines its `.env` needs.

OpenClaw finds a managed hook as `<state>/hooks/<name>/` holding HOOK.md and the handler. `cp -r
outbox-relay ~/.openclaw/hooks/` onto a hooks directory that does not exist yet makes `hooks/` the
hook's own folder, and the gateway then says `Hook "outbox-relay" not found`: so the directory is
made first (mkdir -p), and a hooks directory that already holds a hook's files directly is said.
"""

import os
import shutil

from ..errors import HookInstallError

HOOK_NAME = "outbox-relay"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openclaw-hook")
FILES = ("HOOK.md", "handler.js", "package.json")


def install_hook(hooks_dir):
    """Copy the hook into hooks_dir/outbox-relay/ (made, with hooks_dir, when missing; files there
    replaced). -> (installed directory, [warnings]). Raises HookInstallError."""
    target = os.path.join(hooks_dir, HOOK_NAME)
    warnings = []
    if os.path.isfile(os.path.join(hooks_dir, "HOOK.md")):
        warnings.append(f"{hooks_dir} itself holds a hook's HOOK.md (an earlier `cp -r` onto a missing hooks"
                        " directory?): OpenClaw does not load it; remove HOOK.md, handler.js and package.json there")
    try:
        os.makedirs(target, exist_ok=True)
        for name in FILES:
            shutil.copyfile(os.path.join(SOURCE, name), os.path.join(target, name))
    except OSError as e:
        where = e.filename or target
        raise HookInstallError(f"cannot install the hook into {target}: {where}: {e.strerror}") from None
    return target, warnings


def env_lines(spool, url=None, auth_token_set=False):
    """What the gateway's `.env` must say for the hook (the gateway reads `<state>/.env`; a shell
    `export` does not reach a gateway started by systemd). Never a secret: a token is a placeholder."""
    lines = [f"OUTBOX_RELAY_SPOOL={os.path.abspath(spool)}"]
    if url:
        lines.append(f"OUTBOX_RELAY_URL={url}")
    if auth_token_set:
        lines.append("OUTBOX_RELAY_AUTH_TOKEN=<the service's auth_token>")
    return lines
