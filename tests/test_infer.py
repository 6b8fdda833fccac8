"""Inference, submissions, the all-folds command and the two-process DDP smoke run (CPU, tiny settings)."""
import json, os, shutil, subprocess, sys, uuid

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
from maskclf.core import outputs_dir, repo_root, N_CLASSES
from maskclf.infer import ensemble, probs_frame, write_submission, PROB_COLS

# Tiny training settings shared by the command-line tests: 32x24 crops, one epoch, random weights.
TINY = dict(epochs=1, img_size=32, batch_size=32, pretrained=False, amp=False, num_workers=0, augment='none', tta='none')


def tiny_args(extra=None) -> list:
    return [a for k, v in {**TINY, **(extra or {})}.items() for a in ('-p', k, json.dumps(v) if not isinstance(v, str) else v)]


@pytest.fixture(scope='module')
def demo_dir():
    from maskclf.demo import demo_data_dir
    return demo_data_dir()


@pytest.fixture
def run_name():
    name = f'_test_infer_{uuid.uuid4().hex[:8]}'
    yield name
    shutil.rmtree(outputs_dir() / name, ignore_errors=True)


def test_ensemble_of_one_is_the_model():
    p = probs_frame(['a', 'b', 'c'], np.random.default_rng(0).dirichlet(np.ones(N_CLASSES), 3))
    pd.testing.assert_frame_equal(ensemble([p]), p)


def test_demo_submission_rows_order_labels(demo_dir, tmp_path):
    from maskclf.data import read_eval
    ev = read_eval(demo_dir)
    probs = probs_frame(ev.path, np.random.default_rng(1).dirichlet(np.ones(N_CLASSES), len(ev)))
    sub = write_submission(probs.sample(frac=1, random_state=0), demo_dir, tmp_path / 'sub.csv')  # any row order in
    back = pd.read_csv(tmp_path / 'sub.csv', dtype={'ImageID': str})
    info = pd.read_csv(demo_dir / 'eval' / 'info.csv', dtype={'ImageID': str})
    assert list(back.columns) == ['ImageID', 'ans']
    assert back.ImageID.tolist() == info.ImageID.tolist()  # one row per info.csv row, same order
    assert back.ans.between(0, 17).all() and back.ans.dtype.kind == 'i'
    assert (back.ans.to_numpy() == probs[PROB_COLS].to_numpy().argmax(1)).all()
    pd.testing.assert_frame_equal(sub, back)


def _run(cmd, timeout, **kw):
    env = {**os.environ, 'NO_ALBUMENTATIONS_UPDATE': '1', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(cmd, cwd=repo_root(), env=env, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f'{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return r


def test_all_folds_command_makes_an_ensemble_submission(run_name, demo_dir):
    # a value such as 1e-05 must reach the notebooks as a number (papermill reads its parameters as YAML)
    _run([sys.executable, '-m', 'maskclf.cli', 'folds', '--run', run_name, '--n-folds', '2',
          *tiny_args(dict(weight_decay=1e-05))], timeout=200)
    rd = outputs_dir() / run_name
    assert json.loads((rd / 'fold0' / 'config.json').read_text())['weight_decay'] == 1e-05
    for k in (0, 1):
        assert (rd / f'fold{k}' / 'train.ipynb').exists() and (rd / f'fold{k}' / 'oof.csv').exists()
    sub = pd.read_csv(rd / 'ensemble' / 'submission.csv', dtype={'ImageID': str})
    info = pd.read_csv(demo_dir / 'eval' / 'info.csv', dtype={'ImageID': str})
    assert sub.ImageID.tolist() == info.ImageID.tolist() and sub.ans.between(0, 17).all()
    m = json.loads((rd / 'ensemble' / 'metrics.json').read_text())
    assert m['complete'] and m['n_folds_ok'] == 2 and 0 <= m['oof']['f1_macro'] <= 1
    assert (rd / 'ensemble' / 'report.html').exists() and (rd / 'ensemble' / 'ensemble.ipynb').exists()
    # `maskclf ensemble` re-makes it; the first one is moved aside, not lost
    _run([sys.executable, '-m', 'maskclf.cli', 'ensemble', '--run', run_name, '-p', 'method', 'vote'], timeout=200)
    assert json.loads((rd / 'ensemble' / 'metrics.json').read_text())['method'] == 'vote'
    aside = list(rd.glob('ensemble.old-*'))
    assert len(aside) == 1 and json.loads((aside[0] / 'metrics.json').read_text())['method'] == 'mean'
    # another dest: its own folder and its own log, beside the first ensemble's (which stays as it was)
    _run([sys.executable, '-m', 'maskclf.cli', 'ensemble', '--run', run_name, '-p', 'dest', 'ens_vote', '-p', 'method', 'vote'],
         timeout=200)
    assert (rd / 'ens_vote' / 'ensemble.ipynb').exists() and (rd / 'logs' / 'ensemble-ens_vote.log').exists()
    assert (rd / 'logs' / 'ensemble.log').exists() and len(list(rd.glob('ensemble.old-*'))) == 1


def test_ddp_two_processes_gloo(run_name):
    _run(['torchrun', '--standalone', '--nproc_per_node', '2', '-m', 'maskclf.cli', 'train', '--run-name', run_name,
          '--fold', '0', '--n-folds', '2', *tiny_args()], timeout=200)
    m = json.loads((outputs_dir() / run_name / 'fold0' / 'metrics.json').read_text())
    assert m['world_size'] == 2
    for k in ('f1_macro', 'f1_mask', 'f1_gender', 'f1_age', 'accuracy'): assert 0 <= m[k] <= 1
    oof = pd.read_csv(outputs_dir() / run_name / 'fold0' / 'oof.csv')
    assert oof.path.is_unique and not oof[PROB_COLS].isna().any().any()
    # every validation photo came back from its rank's shard: a lost shard would leave rows of zeros
    assert len(oof) == m['n_val'] and np.allclose(oof[PROB_COLS].sum(axis=1), 1, atol=1e-4)
