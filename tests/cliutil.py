"""Running the CLI from tests: in-process through CliRunner, or as the installed script."""

import os
import shutil
import subprocess
import sys

from click.testing import CliRunner

from outbox_relay.cli import cli

from skiputil import unavailable

EXE = os.path.join(os.path.dirname(sys.executable), "outbox-relay")


def run_cli(*args):
    """CliRunner result; an unexpected exception (not a clean exit) is raised, not swallowed."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def clean_env(**extra):
    """The current environment without any OUTBOX_RELAY_* variable (the developer's shell must not
    leak into a child process), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_RELAY_")}
    env.update(extra)
    return env


def run_exe(*args, timeout=60, under=(), env=None):
    """The installed `outbox-relay` script in a subprocess, with no OUTBOX_RELAY_* environment (plus
    `env`); `under` is a command line to run it under (["faketime", "-f", "+1d"])."""
    return subprocess.run([*under, EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=clean_env(**(env or {})))


def without_dac_override(*args, cwd=None, timeout=60):
    """The installed script as root without CAP_DAC_OVERRIDE (and DAC_READ_SEARCH): file modes then
    apply to it, as to any user, so a permission denied is real although the tests run as root."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        unavailable("setpriv (util-linux) is missing: cannot drop CAP_DAC_OVERRIDE")
    return subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search", EXE, *map(str, args)],
                          capture_output=True, text=True, env=clean_env(), timeout=timeout, cwd=cwd)
