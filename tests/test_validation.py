"""Bad input is found before any work, all at once: broken and tiny photos, 16-bit grey PNGs, header-only CSVs,
contradictory labels for one person, duplicates; and `run_fold` stops on them before it crops anything. Fast: tiny
files only, no model is trained."""
import time
from pathlib import Path

import numpy as np, pandas as pd, pytest
from PIL import Image

import maskclf.checks as C
import maskclf.data as D
from maskclf.core import real_data
from maskclf.checks import MIN_SIDE, image_problem, check_data
from maskclf.data import DataError, read_labels_csv

HEADER = 'path,person,mask,gender,age\n'


@pytest.fixture(autouse=True)
def outputs(tmp_path, monkeypatch):
    "Each test writes its remembered checks (and anything else) under its own temporary outputs folder."
    monkeypatch.setenv('MASKCLF_OUTPUTS', str(tmp_path / 'outputs'))
    return tmp_path / 'outputs'


def photo(path: Path, size=(48, 64), colour=(120, 80, 60)) -> Path:
    "A small plain photo (w, h) at `path`; the format follows the extension."
    path.parent.mkdir(parents=True, exist_ok=True); Image.new('RGB', size, colour).save(path)
    return path


def labels_csv(folder: Path, rows: list) -> Path:
    "A labels CSV in `folder` with rows (file name, person, mask, gender, age); photos are made where absent."
    for name, *_ in rows:
        if not (folder / name).exists(): photo(folder / name)
    (folder / 'labels.csv').write_text(HEADER + ''.join(','.join(map(str, r)) + '\n' for r in rows))
    return folder / 'labels.csv'


def people(n: int = 6) -> list:
    "One photo each of `n` people, labelled in full."
    return [(f'p{i}.jpg', f'p{i}', 'wear', ('male', 'female')[i % 2], 20 + 7 * i) for i in range(n)]


def problems_of(*tables) -> str:
    "The message of the `DataError` that `check_data` must raise."
    with pytest.raises(DataError) as e: check_data(*tables, progress=False)
    return str(e.value)


def test_three_broken_jpegs_in_one_error(tmp_path):
    csv = labels_csv(tmp_path, people())
    whole = (tmp_path / 'p0.jpg').read_bytes()
    (tmp_path / 'p1.jpg').write_bytes(b'')  # empty
    (tmp_path / 'p2.jpg').write_bytes(b'<html>not found</html>')  # a web error page saved as a photo
    (tmp_path / 'p3.jpg').write_bytes(whole[:-30])  # truncated copy
    msg = problems_of(read_labels_csv(csv))
    assert msg.startswith('3 problem(s) in 6 photos'), msg
    for name in ('p1.jpg', 'p2.jpg', 'p3.jpg'): assert f'{tmp_path / name}: cannot decode image' in msg, msg


def test_tiny_photo_refused_with_name_and_minimum(tmp_path):
    csv = labels_csv(tmp_path, people())
    photo(tmp_path / 'p4.jpg', (10, 10))
    assert f'{tmp_path / "p4.jpg"}: 10x10 pixels: smaller than the minimum of {MIN_SIDE} px' in problems_of(read_labels_csv(csv))
    photo(tmp_path / 'p4.jpg', (MIN_SIDE, 500))  # the shorter side counts, at exactly the minimum it passes
    check_data(read_labels_csv(csv), progress=False)


def test_16_bit_grey_png_loads_as_grey(tmp_path):
    from maskclf.crop import load_image
    ramp = np.linspace(0, 65535, 64 * 48).reshape(64, 48).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / 'p0.png')
    assert Image.open(tmp_path / 'p0.png').mode.startswith('I')
    csv = labels_csv(tmp_path, [('p0.png', 'p0', 'wear', 'male', 30)] + people()[1:])
    check_data(read_labels_csv(csv), progress=False)  # accepted...
    px = np.asarray(load_image(tmp_path / 'p0.png'))  # ...and converted, not clipped to white
    assert px.shape == (64, 48, 3) and (px[..., 0] == ramp >> 8).all() and abs(px.mean() - 127.5) < 1


def test_unsupported_mode_refused(tmp_path):
    Image.fromarray(np.zeros((40, 40), np.float32)).save(tmp_path / 'f.tif')
    assert image_problem(tmp_path / 'f.tif').startswith('pixel mode F is not supported')


def test_header_only_csv_refused(tmp_path):
    (tmp_path / 'labels.csv').write_text(HEADER)
    with pytest.raises(DataError, match='lists no photos'): read_labels_csv(tmp_path / 'labels.csv')
    assert 'has no photos' in problems_of(pd.DataFrame({'path': []}))  # an empty table made in code


def test_person_with_two_genders_or_two_age_bands(tmp_path):
    rows = people() + [('q1.jpg', 'p0', 'not_wear', 'female', 20), ('q2.jpg', 'p1', 'wear', 'female', 61)]
    msg = problems_of(read_labels_csv(labels_csv(tmp_path, rows)))
    assert msg.startswith('2 problem(s)'), msg
    assert "person 'p0': photos disagree on gender: male (1 photo: p0.jpg), female (1 photo: q1.jpg)" in msg, msg
    assert "person 'p1': photos disagree on age band: <30 (1 photo, age 27: p1.jpg), >=60 (1 photo, age 61: q2.jpg)" in msg, msg


def test_unknown_labels_and_close_ages_agree(tmp_path):
    rows = people() + [('q1.jpg', 'p0', 'wear', '', ''), ('q2.jpg', 'p1', 'wear', 'female', 29)]  # p1 is 27: same band
    check_data(read_labels_csv(labels_csv(tmp_path, rows)), progress=False)


def test_duplicates_and_many_problems(tmp_path):
    t = read_labels_csv(labels_csv(tmp_path, people()))
    both = D.read_dataset([tmp_path / 'labels.csv', tmp_path / 'labels.csv'])
    assert f'{tmp_path / "p0.jpg"}: listed 2 times' in problems_of(both)
    check_data(t, t, progress=False)  # the same photo in two tables (an eval photo pseudo-labelled) is fine
    many = pd.DataFrame({'path': [str(tmp_path / f'missing{i}.jpg') for i in range(45)]})
    msg = problems_of(many)
    assert msg.startswith('45 problem(s)') and msg.count('file missing') == 30 and '... and 15 more' in msg, msg


def test_passes_are_remembered(tmp_path, outputs, monkeypatch):
    t = read_labels_csv(labels_csv(tmp_path, people()))
    check_data(t, progress=False)
    assert C.memo_path().is_file() and C.memo_path().is_relative_to(outputs)
    opened = []
    check = C.image_problem
    monkeypatch.setattr(C, 'image_problem', lambda p: opened.append(p) or check(p))
    check_data(t, progress=False); assert opened == []  # nothing changed: no photo is opened
    (tmp_path / 'p2.jpg').write_bytes(b'broken since')
    assert 'p2.jpg: cannot decode' in problems_of(t) and opened == [str(tmp_path / 'p2.jpg')]


def test_run_fold_stops_before_cropping(tmp_path, outputs):
    "A bad data set stops `run_fold` with every problem, before the crop cache or a model is made."
    from maskclf.learn import run_fold
    photo(tmp_path / 'p3.jpg', (12, 12))
    csv = labels_csv(tmp_path, people(8) + [('p9.jpg', 'p9', 'wear', 'male', 30)])
    (tmp_path / 'p9.jpg').write_bytes(b'')
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        run_fold(dict(data_dir=str(csv), run='bad', n_folds=2, img_size=32, epochs=1, pretrained=False, num_workers=0))
    msg = str(e.value)
    assert msg.startswith('2 problem(s)') and 'p3.jpg: 12x12 pixels' in msg and 'p9.jpg: cannot decode' in msg, msg
    assert not list(outputs.glob('cache/crops-*')) and not list(outputs.glob('cache/boxes*'))
    assert time.perf_counter() - t0 < 60  # no face detection, no training


@pytest.mark.skipif(real_data('masks') is None, reason='shared/data/real is absent')
def test_real_photos_pass():
    tables = [read_labels_csv(real_data(n)) for n in ('masks', 'faces', 'selfies')]
    check_data(*tables, progress=False, remember=False)


def test_predict_stops_before_cropping(tmp_path, outputs):
    "`predict` names every unusable photo at once, before the crop cache is made."
    from maskclf.learn import build_model, resolve_config, save_checkpoint
    from maskclf.infer import predict
    cfg = resolve_config(img_size=32, pretrained=False, amp=False)
    ck = save_checkpoint(tmp_path / 'best.pt', build_model(cfg), config=cfg)
    files = [photo(tmp_path / 'ok.jpg'), photo(tmp_path / 'tiny.png', (20, 300)), tmp_path / 'gone.jpg']
    (tmp_path / 'cut.jpg').write_bytes(files[0].read_bytes()[:-50]); files.append(tmp_path / 'cut.jpg')
    with pytest.raises(DataError) as e: predict(ck, files, device='cpu')
    msg = str(e.value)
    assert msg.startswith('3 problem(s) in the 4 photos to predict'), msg
    for s in ['tiny.png: 20x300 pixels', 'gone.jpg: file missing', 'cut.jpg: cannot decode image']: assert s in msg, msg
    assert not list(outputs.glob('cache/crops-*'))
