"""Partial-label data sets end to end (issue 9): a mask-only and an age/gender-only labels CSV run the papermill fold
(`nbs/train.ipynb`), `maskclf folds` and `nbs/ensemble.ipynb` to complete folders, and every score averages only over
the heads and classes present in the truth. The CSVs are cut from the demo data (always) and from the real photos of
`shared/data/real` (when present). CPU, tiny settings: 32x24 crops, one epoch, random weights, a few dozen photos."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np, pandas as pd, pytest

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
from maskclf.core import HEAD_NAMES, N_CLASSES, real_data, repo_root, encode

NB = repo_root() / 'nbs' / 'train.ipynb'
TINY = dict(epochs=1, img_size=32, batch_size=16, pretrained=False, amp=False, num_workers=0, augment='none', tta='none',
            n_folds=2)
FIGURES = ['learning_curves.png', 'confusion_18.png', 'confusion_heads.png', 'class_f1.png', 'mistakes.png']
FOLD_FILES = ['config.json', 'history.csv', 'metrics.json', 'oof.csv', 'best.pt', 'last.pt', 'report.html', *FIGURES]
KEEP = {'mask': ('mask',), 'age_gender': ('gender', 'age')}  # the heads each partial CSV keeps


def photos(source: str) -> pd.DataFrame:
    "A photo table: 8 demo people (56 photos), or 32 real photos of `masks` (mask only) / `faces` (age, gender)."
    from maskclf.data import read_dataset
    if source == 'demo':
        from maskclf.demo import demo_data_dir
        df = read_dataset(demo_data_dir(n_people=10))
        return df[df.person.isin(sorted(df.person.unique())[:8])].reset_index(drop=True)
    csv = real_data(source)
    if csv is None: pytest.skip('needs shared/data/real')
    return read_dataset(csv).head(32).reset_index(drop=True)


def partial_csv(df: pd.DataFrame, keep, dest) -> Path:
    "Write the photos of `df` as a labels CSV that knows only the heads `keep` (absolute paths; boxes kept if any)."
    name = lambda h, codes: [HEAD_NAMES[h][c] if h in keep and c >= 0 else '' for c in codes]
    out = pd.DataFrame(dict(path=df.path, person=df.person, mask=name('mask', df['mask']), gender=name('gender', df.gender),
                            age=[a if 'age' in keep and a == a else '' for a in df.age]))
    for c in ('x1', 'y1', 'x2', 'y2'):
        if c in df: out[c] = df[c]
    Path(dest).parent.mkdir(parents=True, exist_ok=True); out.to_csv(dest, index=False)
    return Path(dest)


def run(cmd, timeout):
    env = {**os.environ, 'NO_ALBUMENTATIONS_UPDATE': '1', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(cmd, cwd=repo_root(), env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f'{cmd} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}'
    return r


def check_fold(fold_dir: Path, keep):
    "A complete fold folder whose metrics score the heads `keep` and say 'not scored' (null) for the rest."
    missing = [f for f in FOLD_FILES if not (fold_dir / f).exists()]
    assert not missing, missing
    m = json.loads((fold_dir / 'metrics.json').read_text())
    assert m['f1_macro'] is None and m['accuracy'] is None and m['n_scored'] == 0  # no photo has all three labels
    for h in ('mask', 'gender', 'age'):
        if h in keep: assert 0 <= m[f'f1_{h}'] <= 1 and m['scored'][h] and m[f'n_{h}'] == m['n_val'], (h, m)
        else: assert m[f'f1_{h}'] is None and m['scored'][h] == [] and m[f'n_{h}'] == 0, (h, m)
    assert m['best_by'] == ' + '.join(f'f1_{h}' for h in ('mask', 'gender', 'age') if h in keep)
    html = (fold_dir / 'report.html').read_text()
    assert html.count('data:image/png;base64') == len(FIGURES) and 'not scored (no labels)' in html
    assert '18-class: not scored' in html
    return m


@pytest.mark.parametrize('source,kind', [('demo', 'age_gender'), ('faces', 'age_gender'), ('masks', 'mask')])
def test_partial_fold_papermill(outputs_root, source, kind):
    "One papermill fold of nbs/train.ipynb on an age/gender-only or a mask-only (real, with boxes) labels CSV."
    import papermill as pm
    csv = partial_csv(photos(source), KEEP[kind], outputs_root / f'csv_{source}_{kind}' / 'labels.csv')
    run_name = f'partial_{source}_{kind}'
    pm.execute_notebook(str(NB), str(outputs_root / f'{run_name}.ipynb'), parameters=dict(TINY, data_dir=str(csv), run=run_name),
                        cwd=str(repo_root()), progress_bar=False, kernel_name='python3')
    check_fold(outputs_root / run_name / 'fold0', KEEP[kind])


def test_mask_only_folds_and_ensemble(outputs_root):
    "`maskclf folds` on a mask-only CSV: both folds through nbs/train.ipynb, then nbs/ensemble.ipynb, all complete."
    csv = partial_csv(photos('demo'), KEEP['mask'], outputs_root / 'csv_demo_mask' / 'labels.csv')
    args = [a for k, v in TINY.items() if k != 'n_folds' for a in ('-p', k, json.dumps(v) if not isinstance(v, str) else v)]
    run([sys.executable, '-m', 'maskclf.cli', 'folds', '--run', 'mask_only', '--n-folds', '2', '-p', 'data_dir', str(csv),
         *args], timeout=600)
    rd = outputs_root / 'mask_only'
    for k in (0, 1): check_fold(rd / f'fold{k}', KEEP['mask'])
    m = json.loads((rd / 'ensemble' / 'metrics.json').read_text())
    assert m['complete'] and m['n_folds_ok'] == 2 and m['n_oof'] == 56
    assert 0 <= m['oof']['f1_mask'] <= 1 and m['oof']['f1_macro'] is None and m['oof']['f1_age'] is None
    assert m['scored']['mask'] == ['wear', 'incorrect', 'not_wear'] and m['scored']['gender'] == []
    assert m['submission'].startswith('none')  # a labels CSV has no eval set
    html = (rd / 'ensemble' / 'report.html').read_text()
    assert 'mask: all 3 classes' in html and 'gender: not scored' in html
    assert (rd / 'ensemble' / 'ensemble.ipynb').exists()
    rep = pd.read_csv(rd / 'ensemble' / 'class_report.csv')
    assert rep[rep['head'] != 'mask'].f1.isna().all() and rep[rep['head'] == 'mask'].f1.notna().all()


def test_perfect_predictor_all_not_wear(tmp_path):
    "Every photo `not_wear` (a face data set): a perfect predictor scores 1.0, not 0.333, per head, per class and ensembled."
    from maskclf.learn import score, scored_classes
    from maskclf.infer import class_report, ensemble_run, fake_run, PROB_COLS
    rng = np.random.default_rng(0)
    gender, age = rng.integers(0, 2, 60), rng.integers(0, 3, 60)
    y = encode(2, gender, age)
    s = score(y, np.eye(N_CLASSES)[y])
    assert (s['f1_mask'], s['acc_mask'], s['f1_macro'], s['f1_gender'], s['f1_age']) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert scored_classes(y)['mask'] == ['not_wear'] and len(scored_classes(y)['label']) == 6
    rep = class_report(y, np.eye(N_CLASSES)[y])
    assert rep[rep['head'] == 'mask'].f1.tolist()[2] == 1.0 and rep[rep['head'] == 'mask'].f1.isna().sum() == 2
    # the same through a run folder and the ensemble: the stand-in run's truth made all not_wear, its predictions perfect
    r = fake_run(tmp_path / 'faces', n_folds=2)
    for k in (0, 1):
        f = r / f'fold{k}' / 'oof.csv'; oof = pd.read_csv(f)
        oof['mask'] = 2; oof['label'] = encode(2, oof.gender, oof.age_band)
        oof[PROB_COLS] = np.eye(N_CLASSES)[oof.label]; oof.to_csv(f, index=False)
    m = ensemble_run(r, data_dir=tmp_path / 'none')['metrics']
    assert m['oof']['f1_mask'] == 1.0 and m['oof']['f1_macro'] == 1.0
