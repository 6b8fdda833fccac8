"""nbs/bench_real.ipynb: the plain fine-tune and the default recipe are scored on the same folds and the same crops
(smoke configuration; skipped without ../shared/data/real)."""
import os
import pandas as pd, pytest

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
os.environ['OMP_NUM_THREADS'] = '1'  # one thread in the papermill kernel: the machine is shared
from maskclf.core import real_data, repo_root

NB = repo_root() / 'nbs' / 'bench_real.ipynb'


@pytest.mark.skipif(any(real_data(s) is None for s in ('masks', 'faces', 'selfies')), reason='needs ../shared/data/real')
def test_recipes_share_folds_and_crops(tmp_path, monkeypatch):
    "Both recipes run every task, fold and seed; their digests (checked in the notebook against the split read again) agree per fold and differ across folds."
    import papermill as pm
    monkeypatch.setenv('IN_TEST', '1'); monkeypatch.setenv('MASKCLF_OUTPUTS', str(tmp_path))
    pm.execute_notebook(str(NB), str(tmp_path / 'bench_real.ipynb'), parameters=dict(folds=[0, 1], out_name='smoke'),
                        cwd=str(repo_root()), progress_bar=False, kernel_name='python3')
    res = pd.read_csv(tmp_path / 'bench' / 'smoke.csv', dtype={'fold': str})
    runs = res[res.fold != 'pooled'].drop_duplicates(['task', 'fold', 'recipe'])
    assert set(runs.recipe) == {'default', 'plain'} and set(runs.task) == {'mask', 'face', 'across'}  # the smoke run adds across
    assert (runs.groupby(['task', 'fold']).recipe.nunique() == 2).all()
    assert (runs.groupby(['task', 'fold']).digest.nunique() == 1).all(), runs[['task', 'fold', 'recipe', 'digest']]
    assert runs.groupby('task').digest.nunique().to_dict() == {'mask': 2, 'face': 2, 'across': 1}  # the digest sees the split:
    # two folds, two digests; across has one split (masks train, selfies score)
    seeds = res[res.fold != 'pooled'].groupby(['task', 'fold', 'recipe']).seed.nunique()
    assert (seeds == 2).all(), seeds  # the smoke run repeats every fold under two seeds
    assert set(res[res.fold == 'pooled'].metric) == {'f1_mask', 'acc_mask', 'f1_gender', 'acc_gender', 'f1_age', 'acc_age'}


def test_refuses_recipe_keys_it_does_not_use(tmp_path, monkeypatch):
    "A recipe key the benchmark cannot honour (its own photos, rows and folds) stops it, instead of being recorded as if used."
    import papermill as pm
    monkeypatch.setenv('IN_TEST', '1'); monkeypatch.setenv('MASKCLF_OUTPUTS', str(tmp_path))
    with pytest.raises(pm.PapermillExecutionError, match=r"recipe keys \['drop_boundary_ages'\] are not used here"):
        pm.execute_notebook(str(NB), str(tmp_path / 'bench_real.ipynb'), parameters=dict(recipe={'drop_boundary_ages': [29]}),
                            cwd=str(repo_root()), progress_bar=False, kernel_name='python3')
    assert not (tmp_path / 'bench').exists()
