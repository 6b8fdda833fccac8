"The demo data and the EDA notebook, end to end."
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_data_dir_is_cached():
    from maskclf.demo import demo_data_dir
    d = demo_data_dir()
    stamp = (d / 'train' / 'train.csv').stat().st_mtime_ns
    assert demo_data_dir() == d and d.name == 'demo_data'
    assert (d / 'train' / 'train.csv').stat().st_mtime_ns == stamp  # made once, then reused
    assert json.loads((d / 'demo.json').read_text())['n_people'] == 60


def test_eda_runs_under_papermill(tmp_path):
    import papermill as pm
    out = tmp_path / 'eda'
    pm.execute_notebook(str(REPO / 'nbs' / 'eda.ipynb'), str(tmp_path / 'eda.ipynb'), cwd=str(REPO),
                        parameters=dict(out_dir=str(out), n_folds=3, n_samples=2, max_census=30),
                        kernel_name='python3', progress_bar=False)
    figures = {p.name for p in out.glob('*.png')}
    assert {'counts_per_head.png', 'counts_per_class.png', 'age_histogram.png', 'gender_x_age.png',
            'samples_per_mask.png', 'file_census.png', 'class_shares_per_fold.png'} <= figures
    assert not list((REPO / 'nbs').glob('*.png'))  # nothing written beside the notebooks
