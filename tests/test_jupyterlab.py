"JupyterLab is where users explore: it starts headless, serves the notebooks, and has the python3 kernel."
import json, os, secrets, socket, subprocess, sys, time
from pathlib import Path
from urllib.error import URLError
from urllib.request import Request, urlopen

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    "A TCP port nobody listens on right now."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def get_json(url: str, token: str):
    "GET a Jupyter REST endpoint with the token."
    with urlopen(Request(url, headers={'Authorization': f'token {token}'}), timeout=5) as r:
        return json.load(r)


def test_python3_kernel_installed():
    from jupyter_client.kernelspec import KernelSpecManager
    spec = KernelSpecManager().get_kernel_spec('python3')
    assert spec.language == 'python'


def test_widgets_for_progress_bars():
    import ipywidgets, jupyterlab_widgets  # tqdm.auto renders as a widget in JupyterLab only with these  # noqa: F401


def test_jupyterlab_lists_notebooks(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root', '--ip=127.0.0.1', f'--port={port}',
           '--ServerApp.port_retries=0', f'--ServerApp.token={token}', f'--ServerApp.root_dir={REPO}']
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / 'runtime'))
    log = open(tmp_path / 'lab.log', 'w')
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base, deadline = f'http://127.0.0.1:{port}', time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f'jupyter lab exited with {proc.returncode}:\n{(tmp_path / "lab.log").read_text()[-3000:]}')
            try:
                listing = get_json(f'{base}/api/contents/nbs', token)
                break
            except (URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f'jupyter lab did not answer in 90 s:\n{(tmp_path / "lab.log").read_text()[-3000:]}')
                time.sleep(0.5)
        names = {c['name'] for c in listing['content']}
        assert {'00_core.ipynb', '01_data.ipynb', '02_demo.ipynb', 'eda.ipynb'} <= names, names
        assert 'python3' in get_json(f'{base}/api/kernelspecs', token)['kernelspecs']
    finally:
        proc.terminate()
        try: proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill(); proc.wait(timeout=10)
        log.close()
