"""The embedded Ray cluster behind `nestvec serve` is behind Ray's token auth: a local
process without the token cannot join it (and so cannot read, write or run code in
the shards without an API key); with the data directory's 0600 token it can."""
from __future__ import annotations

import glob
import os
import re
import signal
import stat
import subprocess
import sys

from nestvec.cluster._server.serve import RAY_TOKEN_FILE
from proc_util import descendants, free_port
from test_crash import _wait_serving

JOIN = ("import ray; ray.init(address='{address}', namespace='nestvec', log_to_driver=False); "
        "print('JOINED', len(ray.util.list_named_actors(all_namespaces=True)))")


def _gcs_address(server_pid: int) -> str:
    """The embedded cluster's GCS address: its session folder (from the gcs_server's
    command line) records the port it bound."""
    for pid in descendants(server_pid):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "gcs_server" not in cmd:
            continue
        m = re.search(r"--session_dir=(\S+)", cmd) or re.search(r"--log_dir=(\S+)/logs", cmd)
        assert m, cmd
        ports = glob.glob(os.path.join(m.group(1), "gcs_server_port_*"))
        assert ports, os.listdir(m.group(1))
        return f"127.0.0.1:{open(ports[0]).read().strip()}"
    raise AssertionError("no gcs_server under the serve process")


def _join(address: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", JOIN.format(address=address)], capture_output=True,
                          text=True, timeout=60, env=env)


def test_a_process_without_the_token_cannot_join_the_embedded_cluster(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    clean["RAY_USAGE_STATS_ENABLED"] = "0"
    data_dir, port, log = str(tmp_path / "data"), free_port(), str(tmp_path / "serve.log")
    with open(log, "ab") as out:
        server = subprocess.Popen([sys.executable, "-m", "nestvec.cluster._ops.cli", "serve", "--port",
                                   str(port), "--data-dir", data_dir, "--shards", "1"],
                                  stdout=out, stderr=subprocess.STDOUT, env=clean, start_new_session=True)
    try:
        _wait_serving(f"127.0.0.1:{port}", server, log)
        token = os.path.join(data_dir, RAY_TOKEN_FILE)
        assert stat.S_IMODE(os.stat(token).st_mode) == 0o600
        address = _gcs_address(server.pid)
        for keyless in (dict(clean, RAY_AUTH_MODE="disabled"), clean):
            got = _join(address, keyless)
            assert got.returncode != 0 and "JOINED" not in got.stdout, got.stdout
        with_token = _join(address, dict(clean, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token))
        assert "JOINED" in with_token.stdout, with_token.stderr[-2000:]  # the address was right
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
