"""jupyter-server-proxy entry point for hubsshd: SSH at /user/<name>/sshd/.

jupyter-server-proxy calls `setup_hubsshd()` when the Jupyter server starts and serves what it
returns at `<base_url>/sshd/`: hubsshd is started on first use, listening on a unix socket in a
private 0700 directory that jupyter-server-proxy creates, and each WebSocket from an
authenticated hub user is passed to it as raw SSH bytes. No TCP port is opened, so other users
of the node cannot reach it.

Settings, for admins (a `c.HubSSH.<name>` trait in jupyter_server_config.py wins over the
environment variable):

=============  ===================  ============================================================
trait          environment          meaning
=============  ===================  ============================================================
backend        HUBSSH_BACKEND       ``embedded`` (default: hubsshd's own SSH server) or ``openssh``
ssh_auth       HUBSSH_SSH_AUTH      embedded backend: ``tunnel`` (default: the hub token that
                                    opened the tunnel is the credential) or ``keys``
                                    (``~/.ssh/authorized_keys``)
extra_args     HUBSSH_ARGS          more hubsshd arguments (a shell-quoted string in the variable)
timeout        HUBSSH_TIMEOUT       seconds jupyter-server-proxy waits for hubsshd (default 30)
hubsshd        HUBSSH_HUBSSHD       the hubsshd binary (default: the one this package installed)
=============  ===================  ============================================================

`python -m jupyter_hubssh` prints the command it would run and checks for another package
serving the same ``sshd`` route (jupyter-sshd-proxy).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import sysconfig
from importlib.metadata import entry_points

from traitlets import Int, List, Unicode, default
from traitlets.config import Configurable

__all__ = ["HubSSH", "setup_hubsshd", "conflicts"]

ROUTE = "sshd"
ENTRY_POINT_GROUP = "jupyter_serverproxy_servers"
DISTRIBUTION = "jupyter-hubssh"

log = logging.getLogger("jupyter_hubssh")


class HubSSH(Configurable):
    """How jupyter-server-proxy runs hubsshd."""

    backend = Unicode(help="SSH server behind the tunnel: embedded or openssh").tag(config=True)
    ssh_auth = Unicode(help="embedded backend's SSH auth: tunnel or keys").tag(config=True)
    extra_args = List(Unicode(), help="More hubsshd arguments").tag(config=True)
    timeout = Int(help="Seconds to wait for hubsshd to be ready").tag(config=True)
    hubsshd = Unicode(help="Path of the hubsshd binary").tag(config=True)

    @default("backend")
    def _backend(self):
        return os.environ.get("HUBSSH_BACKEND", "embedded")

    @default("ssh_auth")
    def _ssh_auth(self):
        return os.environ.get("HUBSSH_SSH_AUTH", "tunnel")

    @default("extra_args")
    def _extra_args(self):
        return shlex.split(os.environ.get("HUBSSH_ARGS", ""))

    @default("timeout")
    def _timeout(self):
        return int(os.environ.get("HUBSSH_TIMEOUT", "30"))

    @default("hubsshd")
    def _hubsshd(self):
        return os.environ.get("HUBSSH_HUBSSHD") or find_hubsshd()

    def command(self) -> list[str]:
        if self.backend not in ("embedded", "openssh"):
            raise ValueError(f"HubSSH.backend must be embedded or openssh, not {self.backend!r}")
        cmd = [self.hubsshd, "--unix-socket", "{unix_socket}", "--backend", self.backend]
        if self.backend == "embedded":
            if self.ssh_auth not in ("tunnel", "keys"):
                raise ValueError(f"HubSSH.ssh_auth must be tunnel or keys, not {self.ssh_auth!r}")
            cmd += ["--ssh-auth", self.ssh_auth]
        return cmd + list(self.extra_args)


def find_hubsshd() -> str:
    """The hubsshd installed beside this Python (the wheel's scripts), else the one on PATH."""
    beside = os.path.join(sysconfig.get_path("scripts"), "hubsshd")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("hubsshd") or "hubsshd"


def conflicts() -> list[str]:
    """Other installed packages that register the same route with jupyter-server-proxy."""
    others = []
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=ROUTE):
        dist = getattr(ep, "dist", None)
        name = dist.metadata["Name"] if dist is not None else ep.value
        if _normal(name) != _normal(DISTRIBUTION):
            others.append(f"{name} ({ep.value})")
    return others


def conflict_message(others: list[str]) -> str:
    return (
        f"jupyter-hubssh: another package also serves /{ROUTE}/ through jupyter-server-proxy: "
        + ", ".join(others)
        + ". Which one answers depends on install order; uninstall the other one "
        "(for jupyter-sshd-proxy: pip uninstall jupyter-sshd-proxy)."
    )


def setup_hubsshd() -> dict:
    """The jupyter_serverproxy_servers entry point."""
    settings = HubSSH(config=_server_config())
    others = conflicts()
    if others:
        _server_log().warning(conflict_message(others))
    return {
        "command": settings.command(),
        "unix_socket": True,
        "raw_socket_proxy": True,
        "timeout": settings.timeout,
        "launcher_entry": {"enabled": False},
        "new_browser_tab": False,
    }


def _server_config():
    """The running Jupyter server's config, so `c.HubSSH.*` in jupyter_server_config.py applies."""
    try:
        from jupyter_server.serverapp import ServerApp

        if ServerApp.initialized():
            return ServerApp.instance().config
    except Exception:  # noqa: BLE001 - no server running (python -m jupyter_hubssh): env only
        pass
    return None


def _server_log():
    try:
        from jupyter_server.serverapp import ServerApp

        if ServerApp.initialized():
            return ServerApp.instance().log
    except Exception:  # noqa: BLE001
        pass
    return log


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def main() -> int:
    """`python -m jupyter_hubssh`: show the command and check for a conflicting route."""
    config = setup_hubsshd()
    print("hubsshd command:", shlex.join(config["command"]))
    others = conflicts()
    if others:
        print(conflict_message(others), file=sys.stderr)
        return 1
    if shutil.which(config["command"][0]) is None:
        print(f"jupyter-hubssh: {config['command'][0]} not found", file=sys.stderr)
        return 1
    print(f"ok: /{ROUTE}/ is served by jupyter-hubssh only")
    return 0
