"""Every papermill notebook's `parameters` cell is plain literals that papermill itself can read: each name assigned
there shows in `papermill --help-notebook` with its comment. (A comment such as `'' = none` made papermill's parser
drop the whole line, so the parameter vanished from the help without an error.)"""
import ast, json
from pathlib import Path

import pytest

NBS = Path(__file__).resolve().parents[1] / 'nbs'


def parameters_cell(path: Path) -> str | None:
    "The source of the notebook's cell tagged `parameters`, or None."
    for c in json.loads(path.read_text())['cells']:
        if 'parameters' in c.get('metadata', {}).get('tags', []): return ''.join(c['source'])
    return None


PAPERMILL_NBS = sorted(p.name for p in NBS.glob('*.ipynb') if parameters_cell(p) is not None)


def test_the_papermill_notebooks_are_found():
    assert {'train.ipynb', 'ensemble.ipynb', 'bench_real.ipynb', 'crops.ipynb'} <= set(PAPERMILL_NBS)


@pytest.mark.parametrize('name', PAPERMILL_NBS)
def test_papermill_reads_every_parameter(name):
    import papermill as pm
    src = parameters_cell(NBS / name)
    assigned = [n.target.id for n in ast.parse(src).body if isinstance(n, ast.AnnAssign)]
    assert assigned and len(assigned) == len(ast.parse(src).body), f'{name}: the parameters cell must be `name: type = literal` lines'
    for n in ast.parse(src).body: ast.literal_eval(n.value)  # plain literals only: papermill overrides them by name
    inferred = pm.inspect_notebook(str(NBS / name))
    assert list(inferred) == assigned, f'{name}: papermill cannot read {sorted(set(assigned) - set(inferred))}'
    assert all(p['help'] for p in inferred.values()), f'{name}: every parameter has a comment'
