"The user's own face boxes: given boxes of a labels CSV, the override file, and the EDA notebook on real labels CSVs."
import os
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import maskclf.crop as crop
from maskclf.core import real_data
from maskclf.data import DataError, read_labels_csv

REPO = Path(__file__).resolve().parents[1]
RED, GREY = (220, 20, 20), (128, 128, 128)
SIZE = (64, 48)  # crop (height, width): the default 3:4 aspect


def _photos(root, spots):
    "Grey 120x160 photos, each with a red 30x40 'face' at its (x, y) spot; a labels CSV with boxes for the first half."
    root.mkdir(parents=True, exist_ok=True); rows = []
    for k, (x, y) in enumerate(spots):
        im = Image.new('RGB', (120, 160), GREY); im.paste(RED, (x, y, x + 30, y + 40)); im.save(root / f'p{k}.png')
        box = (x, y, x + 30, y + 40) if k < len(spots) // 2 else ('', '', '', '')
        rows.append(f'p{k}.png,person{k},wear,,,' + ','.join(map(str, box)))
    (root / 'labels.csv').write_text('path,person,mask,gender,age,x1,y1,x2,y2\n' + '\n'.join(rows) + '\n')
    return read_labels_csv(root / 'labels.csv')


@pytest.fixture
def counted(monkeypatch):
    "Count the photos sent to the detector."
    calls = []
    real = crop.detect_faces
    def detect(paths, *a, **k):
        calls.extend(paths); return real(paths, *a, **k)
    monkeypatch.setattr(crop, 'detect_faces', detect)
    return calls


def _is_red(px): return (np.abs(px.astype(int) - RED) < 40).all(-1)


def test_given_boxes_centre_the_crops(tmp_path, counted):
    "Rows with a box are cropped around it (source `given`) and never detected; rows without go to the detector."
    spots = [(10, 10), (80, 110), (45, 60), (20, 100), (70, 15), (50, 50)]
    df = _photos(tmp_path / 'data', spots)
    c = np.asarray(crop.crop_cache(df, size=SIZE, cache_dir=tmp_path / 'cache', progress=False))
    b = crop.cache_boxes(df, SIZE, cache_dir=tmp_path / 'cache')
    assert b.source.tolist()[:3] == ['given'] * 3 and not b.source[3:].eq('given').any()
    assert sorted(counted) == sorted(df.path[3:])  # only the rows without a box were detected
    for k, (x, y) in enumerate(spots[:3]):
        win = b.loc[k, ['cx1', 'cy1', 'cx2', 'cy2']].to_numpy(float)
        assert np.allclose([(win[0] + win[2]) / 2, (win[1] + win[3]) / 2], [x + 15, y + 20], atol=0.5)  # centred on the box
        assert _is_red(c[k][24:40, 18:30]).all()  # the face fills the crop's centre
        assert _is_red(c[k]).mean() > 0.3
    assert (c[0][:4, :4] == GREY).all()  # the margin around it is background


def test_edited_box_recrops_without_detecting(tmp_path, counted):
    "Changing one given box gives new crops for that row only, and the detector does not run again."
    df = _photos(tmp_path / 'data', [(10, 10), (80, 110), (45, 60), (20, 100), (70, 15), (50, 50)])
    before = np.asarray(crop.crop_cache(df, size=SIZE, cache_dir=tmp_path / 'cache', progress=False))
    n_detected = len(counted); assert n_detected == 3
    edited = df.copy(); edited.loc[2, ['x1', 'y1', 'x2', 'y2']] = [0, 0, 60, 80]
    after = np.asarray(crop.crop_cache(edited, size=SIZE, cache_dir=tmp_path / 'cache', progress=False))
    assert len(counted) == n_detected  # no detector call
    changed = [k for k in range(len(df)) if not (after[k] == before[k]).all()]
    assert changed == [2]
    assert crop.cache_boxes(edited, SIZE, cache_dir=tmp_path / 'cache').loc[2, 'x2'] == 60


def test_override_moves_only_its_crops(tmp_path, counted):
    "An override file wins over given and detected boxes and changes exactly the crops it names."
    df = _photos(tmp_path / 'data', [(10, 10), (80, 110), (45, 60), (20, 100), (70, 15), (50, 50)])
    before = np.asarray(crop.crop_cache(df, size=SIZE, cache_dir=tmp_path / 'cache', progress=False))
    n_detected = len(counted)
    fix = tmp_path / 'fixes' / 'fixes.csv'; fix.parent.mkdir()
    fix.write_text('path,x1,y1,x2,y2\n../data/p1.png,0,0,30,40\n../data/p4.png,70,15,100,55\n')  # relative to the file
    (fixed,) = crop.with_box_overrides(fix, df)
    after = np.asarray(crop.crop_cache(fixed, size=SIZE, cache_dir=tmp_path / 'cache', progress=False))
    b = crop.cache_boxes(fixed, SIZE, cache_dir=tmp_path / 'cache')
    assert b.source[[1, 4]].eq('override').all() and not b.source.drop([1, 4]).eq('override').any()
    assert [k for k in range(len(df)) if not (after[k] == before[k]).all()] == [1, 4]
    assert _is_red(after[4][24:40, 18:30]).all()  # the override found p4's face, which the detector missed
    assert len(counted) == n_detected


def test_bad_override_file_lists_every_row(tmp_path):
    "Unknown path, box outside the photo, x2 <= x1, non-numbers and a duplicate: one DataError naming each line."
    df = _photos(tmp_path / 'data', [(10, 10), (80, 110), (45, 60), (20, 100)])
    fix = tmp_path / 'data' / 'fixes.csv'
    fix.write_text('path,x1,y1,x2,y2\np0.png,1,1,30,40\nnope.png,1,1,5,5\np1.png,50,1,40,40\n'
                   'p2.png,0,0,500,40\np3.png,a,1,2,3\np0.png,2,2,30,40\n')
    with pytest.raises(DataError) as e: crop.with_box_overrides(fix, df)
    msg = str(e.value)
    assert msg.startswith(f'5 problem(s) in {fix}')
    for line, why in [(3, 'nope.png is not a photo'), (4, 'x2 <= x1'), (5, 'outside the 120x160 photo'),
                      (6, 'not four numbers'), (7, 'already given on line 2')]:
        assert f'line {line}: {why}' in msg or (f'line {line}: ' in msg and why in msg), (line, msg)


def test_boxes_csv_in_training_config(tmp_path):
    "`boxes_csv` is a config key and a train.ipynb/CLI parameter; load_tables applies it to competition photos too."
    from maskclf.learn import resolve_config, load_tables
    from maskclf.cli import parse_params
    from maskclf.demo import demo_data_dir
    assert parse_params([['boxes_csv', 'fixes.csv']]) == {'boxes_csv': os.path.abspath('fixes.csv')}  # the caller's folder
    data = demo_data_dir(n_people=10)
    first = sorted((data / 'train' / 'images').iterdir())[0]
    photo = sorted(p for p in first.iterdir() if not p.name.startswith('.'))[0]
    fix = tmp_path / 'fixes.csv'; fix.write_text(f'path,x1,y1,x2,y2\n{photo},100,120,260,330\n')
    df, ev = load_tables(resolve_config(data_dir=str(data), boxes_csv=str(fix)))
    rows = df[crop.OVERRIDE].notna().all(axis=1)
    assert rows.sum() == 1 and df.path[rows].item() == str(photo)
    assert ev is None or not ev[crop.OVERRIDE].notna().any().any()
    fix.write_text(f'path,x1,y1,x2,y2\n{photo},100,120,260,900\n')
    with pytest.raises(DataError, match='outside the 384x512 photo'): load_tables(resolve_config(data_dir=str(data), boxes_csv=str(fix)))


@pytest.mark.parametrize('name', ['faces', 'masks'])
def test_eda_on_real_labels_csv(tmp_path, name):
    "eda.ipynb reads a labels CSV (partial labels) and writes its figures."
    csv = real_data(name)
    if csv is None: pytest.skip(f'real_data({name!r}) is absent (../shared not mounted)')
    import papermill as pm
    out = tmp_path / 'eda'
    pm.execute_notebook(str(REPO / 'nbs' / 'eda.ipynb'), str(tmp_path / 'eda.ipynb'), cwd=str(REPO),
                        parameters=dict(data_dir=str(csv), out_dir=str(out), n_samples=2, max_census=30),
                        kernel_name='python3', progress_bar=False)
    figures = {p.name for p in out.glob('*.png')}
    assert {'counts_per_head.png', 'samples_per_mask.png', 'file_census.png', 'class_shares_per_fold.png'} <= figures, figures
    assert ('age_histogram.png' in figures) == (name == 'faces')  # the masks set has no ages: no histogram
    heads = pd.read_csv(out / 'heads.csv', index_col='head')
    assert heads.loc['mask', 'known'] > 0
    assert (heads.loc['age', 'known'] > 0) == (name == 'faces')  # the masks set has no ages
