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


def _old_write_eval(root, n, rng, noise):
    "`demo._write_eval` as first written (every eval image held in memory, then shuffled): the oracle for its bytes."
    import hashlib
    import numpy as np, pandas as pd
    from maskclf import demo
    from maskclf.core import MASK_FILE_STEMS, age2band, encode

    def write_people(people):
        for i, p in people.iterrows():
            r = np.random.default_rng(rng.integers(2**63))
            look = demo.person_look(p.gender, p.age, r)
            for stem in MASK_FILE_STEMS: yield p, stem, demo.render_photo(look, stem, r, noise)

    people = demo.sample_people(n, rng)
    people['path'] = [f'eval{i:04d}_{r.gender}_{demo.RACE}_{r.age}' for i, r in enumerate(people.itertuples())]
    rows = [(p.path, stem, im) for p, stem, im in write_people(people)]
    order = rng.permutation(len(rows))
    folder = root / 'eval' / 'images'; folder.mkdir(parents=True)
    truth = []
    for k, j in enumerate(order):
        person, stem, im = rows[j]
        iid = hashlib.sha1(f'maskclf-demo-{k}-{rng.integers(2**62)}'.encode()).hexdigest() + '.jpg'
        demo._save(im, folder / iid)
        p = people.set_index('path').loc[person]
        m, g, a = int(MASK_FILE_STEMS[stem]), int(p.gender == 'female'), int(age2band(p.age))
        truth.append(dict(ImageID=iid, ans=encode(m, g, a), person=person, mask=m, gender=g, age=p.age))
    truth = pd.DataFrame(truth, columns=['ImageID', 'ans', 'person', 'mask', 'gender', 'age'])
    truth[['ImageID']].assign(ans=0).to_csv(root / 'eval' / 'info.csv', index=False)
    truth.to_csv(root / 'eval_truth.csv', index=False)


def _file_hashes(root: Path) -> dict:
    import hashlib
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*')) if p.is_file()}


def test_streamed_demo_has_the_same_bytes(tmp_path, monkeypatch):
    "make_demo writes each eval photo as drawn, yet gives the bytes of the version that shuffled images in memory."
    from maskclf import demo
    new = _file_hashes(demo.make_demo(tmp_path / 'new', n_people=5, n_eval_people=3, seed=4))
    monkeypatch.setattr(demo, '_write_eval', _old_write_eval)
    old = _file_hashes(demo.make_demo(tmp_path / 'old', n_people=5, n_eval_people=3, seed=4))
    assert len(new) == 5 * 7 + 1 + 3 * 7 + 5 and new == old  # photos, `._` file, eval photos, 3 CSVs, README, demo.json
    # the tables hold no JPEG bytes, so their hashes (made by the in-memory version) pin the order of random draws
    assert {k: new[k] for k in ('train/train.csv', 'eval/info.csv', 'eval_truth.csv')} == {
        'train/train.csv': 'ea2fefda5d38e0c2e187e81b5869de0007a15036',
        'eval/info.csv': 'f969cb718c308e561fa4d70fdc000bb242243741',
        'eval_truth.csv': 'f32176fbada12c672012deabe3be28c385b852ff'}


def _peak_rss_mb(n_eval_people: int) -> float:
    "Peak resident memory of a fresh process that makes a demo with `n_eval_people` eval people (Linux: KB)."
    import subprocess, sys
    code = ('import resource, shutil, tempfile; from maskclf.demo import make_demo; d = tempfile.mkdtemp(); '
            f'make_demo(d + "/demo", 3, {n_eval_people}, seed=0); shutil.rmtree(d); '
            'print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=REPO)
    return int(out.stdout.split()[-1]) / 1024


def test_make_demo_memory_does_not_grow_with_eval_people():
    "15 times the eval photos, the same peak memory: images are written as drawn, never held."
    import sys, pytest
    if sys.platform != 'linux': pytest.skip('ru_maxrss is in KB on Linux only')
    # PIL's pixel buffers are invisible to tracemalloc, so this measures the process's peak RSS; the in-memory
    # version grew from 101 to 250 MB between these sizes (30 eval people: 210 photos of 0.6 MB), this one by 0.3
    small, large = _peak_rss_mb(2), _peak_rss_mb(30)
    assert large - small < 30, (small, large)
