"""`outbox-relay openclaw install-hook`: the hook into a gateway's hooks directory, and what its
`.env` must say. Where OpenClaw keeps its state is read here, from the environment (library code
never reads it): `backfill openclaw` uses the same answer."""

import os

import click

from ..intake.openclaw_install import HOOK_NAME, env_lines, install_hook
from .group import cli
from .options import friendly_errors, settings_options


def openclaw_state_dir(environ=None):
    """OpenClaw's state directory as the gateway resolves it (resolveStateDir): OPENCLAW_STATE_DIR,
    else `.openclaw` in OPENCLAW_HOME, else in the user's home."""
    env = os.environ if environ is None else environ
    state = (env.get("OPENCLAW_STATE_DIR") or "").strip()
    if state:
        return os.path.abspath(os.path.expanduser(state))
    home = (env.get("OPENCLAW_HOME") or "").strip()
    return os.path.join(os.path.abspath(os.path.expanduser(home)) if home else os.path.expanduser("~"), ".openclaw")


@cli.group()
def openclaw():
    """The OpenClaw gateway's side: install the hook that hands every message over."""


@openclaw.command("install-hook")
@click.option("--dir", "hooks_dir", metavar="DIR", default=None,
              help="The gateway's hooks directory [default: $OPENCLAW_STATE_DIR/hooks, else"
                   " $OPENCLAW_HOME/.openclaw/hooks, else ~/.openclaw/hooks].")
@click.option("--url", default=None, metavar="URL",
              help="Also print OUTBOX_RELAY_URL=URL: where the hook POSTs when the spool cannot take a message.")
@settings_options
@friendly_errors
def install_hook_cmd(hooks_dir, url, cfg):
    """Copy the outbox-relay hook into the gateway's hooks directory (made when missing) and print
    the lines to add to the gateway's .env and the commands to run next.

    Run it as the gateway's user. The spool in the .env lines is this service's `spool` setting,
    as an absolute path.
    """
    state = openclaw_state_dir()
    hooks_dir = os.path.abspath(os.path.expanduser(hooks_dir)) if hooks_dir else os.path.join(state, "hooks")
    installed, warnings = install_hook(hooks_dir)
    if not os.path.isdir(cfg.spool):
        warnings.append(f"the spool {os.path.abspath(cfg.spool)} does not exist yet: the hook never makes it (a"
                        " mistyped path must fail loudly); `outbox-relay run` makes it, or see the README's"
                        " install steps for one shared with the gateway's user")
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    env_file = os.path.join(os.path.dirname(hooks_dir), ".env")
    click.echo(f"installed the hook into {installed}")
    click.echo(f"\nadd to {env_file} (the gateway reads it; a shell export does not reach a gateway started"
               " by systemd):\n")
    for line in env_lines(cfg.spool, url, auth_token_set=bool(cfg.auth_token)):
        click.echo(f"  {line}")
    click.echo(f"\nthen:\n\n  openclaw hooks enable {HOOK_NAME}\n  openclaw hooks info {HOOK_NAME}"
               "      # says: ✓ Ready\n  restart the gateway")
